"""``mimkit export``: a mimkit checkpoint -> transformers directory, timm directory or mimkit safetensors."""
from __future__ import annotations

from mimkit.commands import add_trust_flag

FORMATS = ("hf", "timm", "safetensors")


def register(sub) -> None:
    p = sub.add_parser(
        "export", help="write a checkpoint for transformers, timm or as mimkit safetensors",
        description="Export a mimkit checkpoint. hf: a save_pretrained() directory (loads with "
                    "<Class>.from_pretrained(DIR)); timm: DIR/model.safetensors + DIR/config.json with the "
                    "architecture and kwargs for timm.create_model(arch, num_classes=0, **kwargs) "
                    "(strict load, or pretrained_cfg_overlay=dict(file=DIR/model.safetensors)); "
                    "safetensors: mimkit's own format (mimkit.load(DIR)).")
    p.add_argument("--checkpoint", required=True,
                   help="mimkit run directory, model directory, .safetensors file or Lightning .ckpt")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--img-size", type=int, nargs="+", metavar="PX",
                   help="export for another input resolution: H or H W (position embeddings are "
                        "recomputed / interpolated)")
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
    else:
        import json

        from mimkit.interop.timm import save_timm

        save_timm(model, out)
        arch = json.loads((out / "config.json").read_text())["architecture"]
        print(f"wrote {out}/model.safetensors + config.json: timm.create_model({arch!r}, num_classes=0, "
              f"**config['kwargs']) then load_state_dict(strict=True)")
    return 0
