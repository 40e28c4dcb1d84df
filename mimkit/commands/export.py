"""``mimkit export``: a mimkit checkpoint -> transformers directory, timm directory, mimkit safetensors or the
method's official checkpoint layout."""
from __future__ import annotations

from mimkit.commands import add_trust_flag

FORMATS = ("hf", "hf-backbone", "timm", "safetensors", "official")


def register(sub) -> None:
    p = sub.add_parser(
        "export", help="write a checkpoint for transformers, timm, the official code or as mimkit safetensors",
        description="Export a mimkit checkpoint. hf: a save_pretrained() directory (loads with "
                    "<Class>.from_pretrained(DIR)); hf-backbone: a transformers backbone directory for the dense heads "
                    "(UperNet, DPT; transformers.AutoBackbone / the class config.json names), its feature maps "
                    "the outputs of --out-indices blocks; timm: DIR/model.safetensors + DIR/config.json with the "
                    "architecture and kwargs for timm.create_model(arch, num_classes=0, **kwargs) "
                    "(strict load, or pretrained_cfg_overlay=dict(file=DIR/model.safetensors)); "
                    "safetensors: mimkit's own format (mimkit.load(DIR)); official: the file the method's "
                    "official code saves and loads (MAE, BEiT, SimMIM ViT/Swin, I-JEPA, data2vec 2.0), --out "
                    "FILE.pth (or a directory: DIR/checkpoint.pth), with any tensors an official import kept "
                    "beside the model put back.")
    p.add_argument("--checkpoint", required=True,
                   help="mimkit run directory, model directory, .safetensors file or Lightning .ckpt")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, help="output directory (official: a .pth file or a directory)")
    p.add_argument("--img-size", type=int, nargs="+", metavar="PX",
                   help="export for another input resolution: H or H W (position embeddings are "
                        "recomputed / interpolated)")
    p.add_argument("--out-indices", type=int, nargs="+", metavar="I",
                   help="hf-backbone: the blocks (Swin: stages) whose outputs are the feature maps, counted from 1 "
                        "(default: 4 evenly spaced blocks, every Swin stage)")
    p.add_argument("--add-fpn", action="store_true",
                   help="hf-backbone, BEiT only: BeitBackbone's own 4-level pyramid (freshly initialised)")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    add_trust_flag(p)
    p.set_defaults(func=run)


def img_size_arg(values):
    if not values:
        return None
    if len(values) > 2:
        raise ValueError(f"--img-size takes H or H W, got {len(values)} numbers")
    return values[0] if len(values) == 1 else tuple(values)


def run(args) -> int:
    from pathlib import Path

    import mimkit

    model = mimkit.load(args.checkpoint, img_size=img_size_arg(args.img_size))
    out = Path(args.out)
    if args.format == "safetensors":
        mimkit.save(model, out)
        print(f"wrote {out}/model.safetensors + config.json (mimkit.load({str(out)!r}))")
    elif args.format == "hf":
        from mimkit.interop.hf import to_hf

        hf = to_hf(model)
        out.mkdir(parents=True, exist_ok=True)
        hf.save_pretrained(out)
        print(f"wrote {out} ({type(hf).__name__}.from_pretrained({str(out)!r}))")
    elif args.format == "hf-backbone":
        from mimkit.interop.hf_backbone import save_hf_backbone

        hf = save_hf_backbone(model, out, args.out_indices, args.add_fpn)
        print(f"wrote {out}: {type(hf).__name__}, feature maps of {hf.config.out_features} "
              f"(transformers.AutoBackbone.from_pretrained or {type(hf).__name__}.from_pretrained({str(out)!r}); "
              f"fine-tune a segmenter: mimkit finetune --task segmentation --backbone {out} --data DIR)")
    elif args.format == "official":
        from mimkit.interop.official import load_extras, save_official

        path = out if out.suffix in (".pth", ".pt", ".tar") else out / "checkpoint.pth"
        save_official(model, path, extras=load_extras(args.checkpoint) if img_size_arg(args.img_size) is None else None)
        print(f"wrote {path} (the official {model.method} layout; read it with the official code's torch.load)")
    else:
        import json

        from mimkit.interop.timm import save_timm

        save_timm(model, out)
        arch = json.loads((out / "config.json").read_text())["architecture"]
        print(f"wrote {out}/model.safetensors + config.json: timm.create_model({arch!r}, num_classes=0, "
              f"**config['kwargs']) then load_state_dict(strict=True)")
    return 0
