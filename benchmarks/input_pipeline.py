"""Is the input pipeline the bottleneck? `mimkit pretrain` end to end on a JPEG ImageFolder, beside
the same model fed synthetic device-resident batches.

    python benchmarks/input_pipeline.py                 # GPU: MAE ViT-B/16 @ 224; CPU: tiny MAE @ 32
    python benchmarks/input_pipeline.py --images 4096 --workers 8 --steps 60

It writes a JPEG ImageFolder (Fashion-MNIST test images upscaled to --src-size and made RGB when the
dataset is installed, random images otherwise) into a temporary directory, the same images as
WebDataset shards (`mimkit shard`) and as a Hugging Face dataset (`save_to_disk`), then measures
training images/s of the same recipe these ways, all through `run_pretrain` / `MIMModule`:

1. synthetic: pre-made batches already on the device (the model's ceiling);
2. image_folder: PIL decode + RandomResizedCrop/flip in `--workers` DataLoader workers (the default);
3. decode_on_device: image_folder + `data.decode_on_device`: workers only read bytes; nvJPEG decode
   and the crop/resize run batched on the device (on CPU this is the same code on the CPU);
4. webdataset: the tar shards (`data.name=webdataset`), CPU decode in the workers;
5. webdataset_on_device: the shards with `data.decode_on_device`;
6. hf_dataset: the Hugging Face dataset (`data.name=hf_dataset`), CPU decode in the workers.

    python benchmarks/input_pipeline.py --images 512 --steps 8 --warmup 2 --out /tmp/pipe.json   # quick check
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_folder(root: Path, n: int, size: int) -> Path:
    import numpy as np
    from PIL import Image

    try:
        from mimkit.data import load_fashion_mnist

        imgs, labels = load_fashion_mnist("test", download=False)
        source = "fashion-mnist"
    except Exception:
        imgs, labels, source = None, None, "random"
    rng = np.random.default_rng(0)
    for i in range(n):
        cls = int(labels[i % len(labels)]) if labels is not None else i % 10
        d = root / f"class{cls}"
        d.mkdir(parents=True, exist_ok=True)
        if imgs is not None:
            im = Image.fromarray(imgs[i % len(imgs)].numpy()).resize((size, size), Image.BICUBIC).convert("RGB")
        else:
            im = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
        im.save(d / f"{i:06d}.jpg", quality=90)
    return root, source


def write_shards_and_hf(folder: Path, root: Path, per_shard: int) -> tuple[Path, Path | None]:
    """The JPEG folder as WebDataset shards and (when `datasets` is installed) a saved HF dataset."""
    from mimkit.data import SafeImageFolder
    from mimkit.data.shards import write_shards

    shards = root / "shards"
    write_shards(folder, shards, per_shard=per_shard, progress=False)
    try:
        import datasets
    except ImportError:
        return shards, None
    datasets.disable_progress_bars()
    ref = SafeImageFolder(folder, None)
    rows = {"image": [{"bytes": Path(p).read_bytes(), "path": None} for p, _ in ref.samples],
            "label": [int(c) for _, c in ref.samples]}
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    datasets.Dataset.from_dict(rows, features=feats).save_to_disk(str(root / "hf"))
    return shards, root / "hf"


SOURCES = {  # mode -> (data.name, data.decode_on_device)
    "image_folder": ("image_folder", False), "decode_on_device": ("image_folder", True),
    "webdataset": ("webdataset", False), "webdataset_on_device": ("webdataset", True),
    "hf_dataset": ("hf_dataset", False),
}


def run_mode(mode: str, args, folder: Path, device: str, shards: Path | None = None, hf: Path | None = None) -> dict:
    import torch

    from mimkit.train.callbacks import Throughput
    from mimkit.train.config import load_config
    from mimkit.train.run import run_pretrain

    over = [f"model.name={args.recipe}", "model.in_chans=3", f"model.img_size={args.img_size}",
            f"data.img_size={args.img_size}", "data.in_chans=3",
            f"data.batch_size={args.batch}", f"data.num_workers={args.workers}", "trainer.max_epochs=1000",
            f"trainer.max_steps={args.warmup + args.steps}", "trainer.enable_progress_bar=false",
            "run.recon_images=0", f"run.dir={tempfile.mkdtemp(prefix=f'pipe-{mode}-')}",
            "run.checkpoint_every_n_epochs=1000", f"trainer.log_every_n_steps={max(1, args.steps)}"]
    name, on_device = SOURCES[mode]
    over += [f"data.name={name}", {"image_folder": f"data.root={folder}", "webdataset": f"data.urls={shards}",
                                   "hf_dataset": f"data.path={hf}"}[name]]
    if on_device:
        over.append("data.decode_on_device=true")
    timer = Throughput(every=10**9, warmup=args.warmup)
    t0 = time.time()
    run_pretrain(load_config(None, over), callbacks=[timer])
    return {"mode": mode, "images_per_s": timer.images_per_s, "wall_s": time.time() - t0, "device": device,
            "workers": args.workers if mode != "synthetic" else 0, "cuda": torch.cuda.is_available()}


def run_synthetic(args, device: str) -> dict:
    import lightning as L
    import torch

    import mimkit
    from mimkit.train.callbacks import Throughput
    from mimkit.train.module import MIMModule

    model = mimkit.create(args.recipe, in_chans=3, img_size=args.img_size)
    batches = [{"images": torch.randn(args.batch, 3, args.img_size, args.img_size, device=device)} for _ in range(4)]
    total = args.warmup + args.steps

    class Loader:
        def __iter__(self):
            return (batches[i % 4] for i in range(total))

        def __len__(self):
            return total

    optim = {"lr": None, "blr": 1.5e-4, "lr_batch_base": 256, "min_lr": 0.0, "weight_decay": 0.05,
             "betas": [0.9, 0.95], "warmup_epochs": 0.0, "fused": None}
    module = MIMModule(None, optim, args.batch, model=model)
    timer = Throughput(every=10**9, warmup=args.warmup)
    trainer = L.Trainer(accelerator="gpu" if device == "cuda" else "cpu", devices=1, max_epochs=1,
                        precision="bf16-mixed" if device == "cuda" else "32-true", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[timer])
    t0 = time.time()
    trainer.fit(module, Loader())
    return {"mode": "synthetic", "images_per_s": timer.images_per_s, "wall_s": time.time() - t0, "device": device,
            "workers": 0}


def main() -> int:
    import torch

    gpu = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="mae_vit_base_patch16" if gpu else "mae_vit_tiny_patch4_28")
    ap.add_argument("--img-size", type=int, default=224 if gpu else 32)
    ap.add_argument("--src-size", type=int, default=320 if gpu else 48, help="side of the JPEG files written")
    ap.add_argument("--images", type=int, default=20000 if gpu else 2048)
    ap.add_argument("--batch", type=int, default=256 if gpu else 64)
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1) if gpu else 0)
    ap.add_argument("--steps", type=int, default=50 if gpu else 20)
    ap.add_argument("--warmup", type=int, default=10 if gpu else 3)
    ap.add_argument("--modes", default="synthetic,image_folder,decode_on_device,webdataset,webdataset_on_device,hf_dataset")
    ap.add_argument("--per-shard", type=int, default=1000, help="images per tar shard (default 1000)")
    ap.add_argument("--out", default="input_pipeline.json")
    args = ap.parse_args()
    device = "cuda" if gpu else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        folder, source = write_folder(Path(tmp) / "jpegs", args.images, args.src_size)
        print(f"wrote {args.images} JPEGs ({source}, {args.src_size}px) in {time.time() - t0:.0f} s", flush=True)
        modes = args.modes.split(",")
        unknown = [m for m in modes if m != "synthetic" and m not in SOURCES]
        if unknown:
            ap.error(f"unknown mode(s) {', '.join(unknown)}; choose from synthetic, {', '.join(SOURCES)}")
        shards = hf = None
        if any(m.startswith(("webdataset", "hf_")) for m in modes):
            t0 = time.time()
            shards, hf = write_shards_and_hf(folder, Path(tmp), args.per_shard)
            print(f"wrote the shards{' and the HF dataset' if hf else ''} in {time.time() - t0:.0f} s", flush=True)
            if hf is None and "hf_dataset" in modes:
                print("`datasets` is not installed: no hf_dataset row (pip install 'mimkit[hf]')")
                modes.remove("hf_dataset")
        results = []
        for mode in modes:
            r = run_synthetic(args, device) if mode == "synthetic" else run_mode(mode, args, folder, device, shards, hf)
            results.append(r)
            print(f"{mode:18s} {r['images_per_s']:9.1f} img/s", flush=True)
    name = torch.cuda.get_device_name() if gpu else "cpu"
    print(f"\n`mimkit pretrain` input pipeline on {name}: {args.recipe} at {args.img_size}px, batch {args.batch}, "
          f"{args.workers} worker(s)")
    print("| input | workers | images/s | share of synthetic |\n|---|---|---|---|")
    base = next((r["images_per_s"] for r in results if r["mode"] == "synthetic"), None)
    for r in results:
        share = f"{r['images_per_s'] / base * 100:.0f}%" if base else "-"
        print(f"| {r['mode']} | {r['workers']} | {r['images_per_s']:.1f} | {share} |")
    Path(args.out).write_text(json.dumps({"device": name, "args": vars(args), "results": results}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
