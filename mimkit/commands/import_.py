"""``mimkit import``: transformers / official MAE / timm checkpoints -> mimkit's format."""
from __future__ import annotations

import json

from mimkit.commands import add_trust_flag

SOURCES = ("hf", "official", "timm")


def register(sub) -> None:
    p = sub.add_parser(
        "import", help="convert a transformers, official MAE or timm checkpoint to mimkit's format",
        description="Convert a checkpoint to mimkit's format (model.safetensors + config.json). "
                    "--from hf DIR: a transformers save_pretrained() directory; --from official FILE: the "
                    "official MAE .pth layout ({'model': state_dict} with timm key names); --from timm DIR: "
                    "a directory written by `mimkit export --format timm`.")
    p.add_argument("--from", dest="source", nargs=2, required=True, metavar=("FORMAT", "PATH"),
                   help=f"FORMAT is one of {', '.join(SOURCES)}")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--method", help="timm only: mimkit method to wrap the encoder in (default: from the "
                                    "export's config, else mae for ViT, beit for BEiT, simmim for Swin)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="official/timm: builder argument (e.g. num_heads=16, norm_pix_loss=true); repeatable")
    p.add_argument("--img-size", type=int, nargs="+", metavar="PX",
                   help="write the model for another input resolution: H or H W")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    add_trust_flag(p)
    p.set_defaults(func=run)


def parse_overrides(items) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def run(args) -> int:
    from pathlib import Path

    import mimkit
    from mimkit.checkpoint import build_and_load, model_config
    from mimkit.commands.export import img_size_arg

    fmt, src = args.source
    if fmt not in SOURCES:
        raise ValueError(f"--from format must be one of {', '.join(SOURCES)}, got {fmt!r}")
    if not Path(src).exists():
        raise FileNotFoundError(f"no {fmt} checkpoint at {src}")
    overrides = parse_overrides(args.overrides)
    if fmt == "hf":
        if overrides:
            raise ValueError("--set is not used with --from hf (the transformers config defines the model)")
        from mimkit.interop.hf import from_hf

        model = from_hf(src)
    elif fmt == "official":
        from mimkit.interop.official import load_official_mae

        model = load_official_mae(src, **overrides)
    else:
        from mimkit.interop.timm import import_timm_dir

        model = import_timm_dir(src, method=args.method, **overrides)
    size = img_size_arg(args.img_size)
    if size is not None:
        model = build_and_load(model_config(model), model.state_dict(), src, size)
    out = mimkit.save(model, Path(args.out))
    cfg = model_config(model)
    print(f"wrote {out}/model.safetensors + config.json ({cfg.get('recipe') or cfg.get('builder')}, "
          f"{sum(p.numel() for p in model.parameters()):,} parameters)")
    return 0
