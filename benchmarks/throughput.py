"""Training throughput of mimkit beside Hugging Face `transformers`, same shapes, same settings.

    python benchmarks/throughput.py                       # GPU: ViT-B/16 @ 224, batch 256; CPU: tiny
    python benchmarks/throughput.py --methods mae --modes eager --steps 10 --out throughput.json

For every method (MAE, SimMIM, BEiT) and mode (eager, torch.compile) it trains
* mimkit's model, and
* the `transformers` peer (ViTMAEForPreTraining, ViTForMaskedImageModeling, BeitForMaskedImageModeling),
through the *same* path `mimkit pretrain` uses: `MIMModule` (AdamW param groups, fused on CUDA,
warm-up/cosine schedule) in a Lightning `Trainer` with bf16 autocast on GPU. mimkit's model is built
from the peer with `mimkit.interop.hf.from_hf`, so both have identical shapes and initial weights.
Inputs are synthetic device-resident batches (masks and BEiT labels pre-drawn per batch, as data
workers would), so the figure is the model's training step, not the input pipeline.

Each run is a separate subprocess (clean memory peak); on CPU each is repeated (``--repeats``) and the
median reported, with the range. Reported: images/s,
model FLOP/s utilisation (FLOPs of one step counted by torch's FlopCounterMode over the measured step
time, against the GPU's dense bf16 peak; on CPU, achieved GFLOP/s), and peak memory (CUDA allocator peak,
or on CPU the growth of the process's resident memory during training, peak minus the RSS
before the first step, freed heap returned to the OS first). Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

SPEC_PEERS_H100 = {  # ../shared/SPEC.md, one H100, bf16, fused AdamW, batch 256, ViT-B/16 @ 224
    "mae": {"eager": 3143, "compiled": 4096},
    "simmim": {"eager": 2439, "compiled": 2177},
    "beit": {"eager": 1655, "compiled": 2315},
}
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
PEERS = ("mae", "simmim", "beit")  # methods with a transformers pretraining class
OWN_RECIPES = {  # the others, timed as mimkit only (no transformers class to compare with)
    "maskfeat": {"base": "maskfeat_vit_base_patch16", "tiny": "maskfeat_vit_tiny_patch4_28"},
    "data2vec2": {"base": "data2vec2_vit_base_patch16", "tiny": "data2vec2_vit_tiny_patch4_28"},
    "ijepa": {"base": "ijepa_vit_base_patch16", "tiny": "ijepa_vit_tiny_patch4_28"},
    "simmim_swin": {"base": "simmim_swin_base_window6_192", "tiny": "simmim_swin_tiny_window4_32"},
    "ibot": {"base": "ibot_vit_base_patch16", "tiny": "ibot_vit_tiny_patch4_28"},
}


def compiles(method: str) -> bool:
    """Whether the method's training step may be compiled: a model class that opts out
    (``compile_training = False``) is trained eagerly by ``mimkit pretrain`` and gets no compiled row; one that
    names parts (iBOT) has them compiled, as ``mimkit pretrain`` does."""
    from mimkit.registry import recipe_info

    return getattr(recipe_info(method)[0], "compile_training", True)


def hf_model(method: str, size: str):
    """The transformers peer for ``method`` at ``size`` ('base' = ViT-B/16 @ 224, 'tiny' = CPU)."""
    import transformers as T

    if size == "base":
        common = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                      image_size=224, patch_size=16, num_channels=3)
        dec = dict(decoder_hidden_size=512, decoder_num_hidden_layers=8, decoder_num_attention_heads=16,
                   decoder_intermediate_size=2048)
        vocab = 8192
    else:
        common = dict(hidden_size=192, num_hidden_layers=6, num_attention_heads=3, intermediate_size=768,
                      image_size=32, patch_size=4, num_channels=3)
        dec = dict(decoder_hidden_size=128, decoder_num_hidden_layers=2, decoder_num_attention_heads=4,
                   decoder_intermediate_size=512)
        vocab = 1024
    common.update(layer_norm_eps=1e-6, attn_implementation="sdpa")
    if method == "mae":
        cfg = T.ViTMAEConfig(**common, **dec, mask_ratio=0.75, norm_pix_loss=True)
        return T.ViTMAEForPreTraining(cfg)
    if method == "simmim":
        cfg = T.ViTConfig(**common, encoder_stride=common["patch_size"], qkv_bias=True)
        return T.ViTForMaskedImageModeling(cfg)
    if method == "beit":
        common.pop("attn_implementation")
        cfg = T.BeitConfig(**common, vocab_size=vocab, use_mask_token=True, use_shared_relative_position_bias=True,
                           use_relative_position_bias=False, use_absolute_position_embeddings=False,
                           layer_scale_init_value=0.1, drop_path_rate=0.0)
        return T.BeitForMaskedImageModeling(cfg)
    raise ValueError(f"unknown method {method!r}")


class PeerAdapter:
    """Wraps a transformers model so it takes the batch dict and returns a MIMOutput."""

    @staticmethod
    def wrap(hf, method):
        import torch

        from mimkit.base import MIMOutput

        class Adapter(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.hf = hf

            def forward(self, images, mask=None, labels=None):
                if method == "mae":
                    out = self.hf(pixel_values=images)
                    return MIMOutput(out.loss, out.logits, out.mask)
                if method == "simmim":
                    out = self.hf(pixel_values=images, bool_masked_pos=mask)
                    return MIMOutput(out.loss, out.reconstruction, mask.float())
                out = self.hf(pixel_values=images, bool_masked_pos=mask, labels=labels[mask])
                return MIMOutput(out.loss, out.logits, mask.float())

        return Adapter()


def make_batches(method, model_cfg, batch, device, n_distinct=4):
    """A few device-resident batches (images, masks, labels) cycled by the loader."""
    import torch

    from mimkit.masking import BlockMasking, SimMIMMasking

    size, patch, chans = model_cfg
    grid = (size // patch, size // patch)
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n_distinct):
        b = {"images": torch.randn(batch, chans, size, size, generator=g).to(device)}
        if method == "simmim":
            mp = 32 if size >= 192 else 2 * patch
            b["mask"] = SimMIMMasking(0.6, mp, patch)(batch, grid, generator=g).to(device)
        elif method == "beit":
            L = grid[0] * grid[1]
            n_mask = int(round(L * 0.4))
            b["mask"] = BlockMasking(num_masking_patches=n_mask, min_num_patches=min(16, max(1, n_mask // 4)))(
                batch, grid, generator=g).to(device)
            b["labels"] = torch.randint(0, 1024 if size < 192 else 8192, (batch, L), generator=g).to(device)
        out.append(b)
    return out


def count_flops(model, batch) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model.train()
    with FlopCounterMode(display=False) as fc:
        with torch.autocast(batch["images"].device.type, dtype=torch.bfloat16,
                            enabled=batch["images"].is_cuda):
            loss = model(**batch).loss
        loss.backward()
    model.zero_grad(set_to_none=True)
    return float(fc.get_total_flops())


def reset_peak_rss() -> float:
    """Return freed heap to the OS and restart the process's peak-RSS count (Linux: VmHWM), so the peak
    covers training, not model building (mimkit's model is converted from a transformers copy, and
    glibc keeps freed memory mapped). Returns the RSS (MiB) at the restart."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    with open("/proc/self/status") as f:
        return next((int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:")), float("nan"))


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker(spec: dict) -> dict:
    """One measurement: impl in {mimkit, transformers} x method x mode; runs in its own process."""
    import lightning as L
    import torch

    from mimkit.interop.hf import from_hf
    from mimkit.train.module import MIMModule

    torch.manual_seed(0)
    device = torch.device(spec["device"])
    if device.type == "cpu":
        torch.set_num_threads(spec["threads"])
    if spec["method"] in PEERS:
        hf = hf_model(spec["method"], spec["size"])
        if spec["impl"] == "mimkit":
            model = from_hf(hf)
            del hf
        else:
            model = PeerAdapter.wrap(hf, spec["method"])
        size, patch = (224, 16) if spec["size"] == "base" else (32, 4)
        batches = make_batches(spec["method"], (size, patch, 3), spec["batch"], device)
    else:  # a method without a transformers class: mimkit's own recipe of that size, masks drawn inside
        from mimkit.registry import create

        model = create(OWN_RECIPES[spec["method"]][spec["size"]])
        g = torch.Generator().manual_seed(0)  # one step's inputs as the data layer shapes them (iBOT: views)
        batches = [{k: ([t.to(device) for t in v] if isinstance(v, list) else v.to(device))
                    for k, v in model.example_inputs(spec["batch"], g).items()} for _ in range(4)]
    if spec["method"] == "mae":
        for b in batches:
            b.pop("mask", None)
    model = model.to(device)
    flops = count_flops(model, batches[0])
    rss_before = reset_peak_rss() if device.type == "cpu" else None

    optim = {"lr": 1e-4, "blr": 1.5e-4, "lr_batch_base": 256, "min_lr": 0.0, "weight_decay": 0.05,
             "betas": [0.9, 0.95], "warmup_epochs": 0.0, "fused": None}
    module = MIMModule(None, optim, spec["batch"], model=model)
    module.tune_cpu_malloc = spec.get("malloc_tuning", True)  # mimkit pretrain's default; same for both
    if spec["mode"] == "compiled":
        module.compile_model(device.type)

    total_steps = spec["warmup"] + spec["steps"]

    class Loader:
        def __iter__(self):
            for i in range(total_steps):
                yield batches[i % len(batches)]

        def __len__(self):
            return total_steps

    times = {}

    class Timer(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == spec["warmup"]:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                times["start"] = time.perf_counter()

        def on_train_end(self, trainer, pl_module):
            if device.type == "cuda":
                torch.cuda.synchronize()
            times["end"] = time.perf_counter()

    trainer = L.Trainer(accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, max_epochs=1,
                        precision="bf16-mixed" if device.type == "cuda" else "32-true", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[Timer()], num_sanity_val_steps=0)
    trainer.fit(module, Loader())
    dt = (times["end"] - times["start"]) / spec["steps"]
    ips = spec["batch"] / dt
    res = {**spec, "images_per_s": ips, "step_ms": dt * 1e3, "flops_per_step": flops,
           "achieved_tflops": flops / dt / 1e12}
    if device.type == "cuda":
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
        res.update(device_name=name, peak_mem_gib=torch.cuda.max_memory_allocated() / 2**30,
                   mfu=(flops / dt / peak) if peak else None)
    else:
        peak = peak_rss_mb()
        res.update(device_name="cpu", peak_rss_mib=peak, train_rss_mib=peak - rss_before, mfu=None)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto | cuda | cpu")
    ap.add_argument("--size", default=None, help="base (ViT-B/16 @ 224) | tiny; default base on GPU, tiny on CPU")
    ap.add_argument("--methods", default="mae,simmim,beit")
    ap.add_argument("--impls", default="mimkit,transformers")
    ap.add_argument("--modes", default="eager,compiled")
    ap.add_argument("--batch", type=int, default=None, help="default 256 on GPU, 64 on CPU")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 30 GPU, 10 CPU)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 10 GPU / 3 CPU; "
                                                              "compiled runs add the compile time here)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="runs of each (impl, method, mode), the impl order alternating between repeats; the "
                         "median is reported with the range (default 1 on GPU, 3 on CPU, where a shared "
                         "machine's speed drifts by tens of percent between processes)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--no-malloc-tuning", action="store_true",
                    help="CPU: leave glibc malloc as it is (mimkit pretrain tunes it; see mimkit.train.allocator)")
    ap.add_argument("--in-process", action="store_true",
                    help="run every measurement in this process instead of one subprocess each: a quick check that "
                         "every method runs (device_suite.sh --cpu-smoke), not a measurement (the runs share memory "
                         "and caches)")
    ap.add_argument("--out", default="throughput.json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0

    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    size = args.size or ("base" if device == "cuda" else "tiny")
    gpu = device == "cuda"
    batch = args.batch or (256 if gpu else 64)
    steps = args.steps or (30 if gpu else 10)
    warmup = args.warmup or (10 if gpu else 3)
    repeats = max(1, args.repeats or (1 if gpu else 3))
    results = []
    impls = args.impls.split(",")
    rows = [(m, mode) for m in args.methods.split(",") for mode in args.modes.split(",")
            if mode != "compiled" or compiles(m)]
    runs = [(m, mode, impl, r) for m, mode in rows for r in range(repeats)
            for impl in (impls if r % 2 == 0 else impls[::-1]) if impl == "mimkit" or m in PEERS]
    def get(impl, method, mode):
        """The median run (by images/s) of the repeats, with ``ips_range`` = (min, max)."""
        ok = sorted((r for r in results if r["impl"] == impl and r["method"] == method and r["mode"] == mode
                     and "error" not in r), key=lambda r: r["images_per_s"])
        if not ok:
            return None
        return {**ok[(len(ok) - 1) // 2], "ips_range": (ok[0]["images_per_s"], ok[-1]["images_per_s"]),
                "n": len(ok)}

    def write_json(done: bool):
        """The table so far (atomically): after every run, so a stage cut off by a timeout (the device suite's
        caps) keeps what it measured; ``complete`` says whether every planned run was made."""
        summary = [{"method": m, "mode": mode, **{f"{impl}_images_per_s": (get(impl, m, mode) or {}).get("images_per_s")
                                                   for impl in impls}}
                   for m, mode in rows]
        tmp = f"{args.out}.tmp"
        with open(tmp, "w") as f:
            json.dump({"device": next((r.get("device_name") for r in results if "device_name" in r), device),
                       "size": size, "batch": batch, "steps": steps, "repeats": repeats,
                       "malloc_tuning": not args.no_malloc_tuning, "complete": done,
                       "median": summary, "results": results, "spec_h100_peers": SPEC_PEERS_H100}, f, indent=2)
        os.replace(tmp, args.out)

    for i, (method, mode, impl, rep) in enumerate(runs, 1):
        spec = dict(method=method, mode=mode, impl=impl, device=device, size=size, batch=batch, steps=steps,
                    warmup=warmup, threads=args.threads, repeat=rep, malloc_tuning=not args.no_malloc_tuning)
        print(f"[{i}/{len(runs)}] {impl:12s} {method:7s} {mode:8s} #{rep + 1} ...", end=" ", flush=True)
        t0 = time.time()
        if args.in_process:
            try:
                r = worker(spec)
            except Exception as e:  # noqa: BLE001  (one failed method is a row of the table, not the end of it)
                print(f"failed: {type(e).__name__}: {e}")
                results.append({**spec, "error": f"{type(e).__name__}: {e}"})
                continue
        else:
            proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True,
                                  text=True)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                err = (proc.stderr.strip().splitlines() or ["?"])[-1]
                print(f"failed: {err}")
                results.append({**spec, "error": err})
                continue
            r = json.loads(line[7:])
        results.append(r)
        print(f"{r['images_per_s']:9.1f} img/s  ({time.time() - t0:.0f} s)")
        write_json(done=False)

    dev_name = next((r.get("device_name") for r in results if "device_name" in r), device)
    print(f"\nTraining throughput on {dev_name}, {size} config, batch {batch}, "
          f"{'bf16 autocast, fused AdamW' if gpu else 'fp32'}; {steps} timed steps"
          + (f"; median of {repeats} runs each (range in brackets), impl order alternating" if repeats > 1 else "")
          + ("" if gpu else f"; glibc malloc {'untuned' if args.no_malloc_tuning else 'tuned (trainer.tune_cpu_malloc)'}"))
    mem_key = "peak_mem_gib" if gpu else "train_rss_mib"
    hdr = f"| method | mode | mimkit img/s | transformers img/s | speed-up | mimkit {'MFU' if gpu else 'TFLOP/s'} | " \
          f"transformers {'MFU' if gpu else 'TFLOP/s'} | mimkit {'peak GiB' if gpu else 'RSS growth MiB'} | " \
          f"transformers {'peak' if gpu else 'RSS growth'} |" + (" SPEC.md H100 peer img/s |" if gpu else "")
    print(hdr)
    print("|" + "---|" * (hdr.count("|") - 1))
    for method, mode in rows:
        a, b = get("mimkit", method, mode), get("transformers", method, mode)
        fmt = (lambda r: f"{r['mfu'] * 100:.1f}%" if r and r.get("mfu") else "-") if gpu else \
            (lambda r: f"{r['achieved_tflops']:.3f}" if r else "-")
        def ips(r):
            return ("failed" if not r else f"{r['images_per_s']:.1f}" + (
                        f" [{r['ips_range'][0]:.1f}-{r['ips_range'][1]:.1f}]" if r["n"] > 1 else ""))
        def mem(r):
            return f"{r[mem_key]:.{2 if gpu else 0}f}" if r and r.get(mem_key) is not None else "-"
        sp = f"{a['images_per_s'] / b['images_per_s']:.2f}x" if a and b else "-"
        b_txt = ips(b) if method in PEERS and "transformers" in impls else "-"  # no peer class, or not asked for
        a_txt = ips(a) if "mimkit" in impls else "-"
        row = f"| {method} | {mode} | {a_txt} | {b_txt} | {sp} | {fmt(a)} | {fmt(b)} | {mem(a)} | {mem(b)} |"
        if gpu:
            row += f" {SPEC_PEERS_H100.get(method, {}).get(mode, '-')} |"
        print(row)
    write_json(done=True)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
