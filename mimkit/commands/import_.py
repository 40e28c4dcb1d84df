"""``mimkit import``: transformers / official (MAE, BEiT, SimMIM, I-JEPA, data2vec 2.0) / timm checkpoints
-> mimkit's format."""
from __future__ import annotations

import json

from mimkit.commands import add_trust_flag

SOURCES = ("hf", "official", "timm")


def register(sub) -> None:
    p = sub.add_parser(
        "import", help="convert a transformers, official (MAE, BEiT, SimMIM, I-JEPA, data2vec 2.0) or timm "
                       "checkpoint to mimkit's format",
        description="Convert a checkpoint to mimkit's format (model.safetensors + config.json). "
                    "--from hf DIR: a transformers save_pretrained() directory; --from official FILE: a file of "
                    "the methods' official code (facebookresearch/mae, microsoft/unilm beit, microsoft/SimMIM, "
                    "facebookresearch/ijepa, fairseq data2vec 2.0), the method guessed from its keys or given "
                    "with --method; --from timm DIR: a directory written by `mimkit export --format timm`.")
    p.add_argument("--from", dest="source", nargs=2, required=True, metavar=("FORMAT", "PATH"),
                   help=f"FORMAT is one of {', '.join(SOURCES)}")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--method", help="official: the format (mae, beit, simmim, ijepa, data2vec2; default: guessed "
                                    "from the keys); timm: mimkit method to wrap the encoder in (default: from the "
                                    "export's config, else mae for ViT, beit for BEiT, simmim for Swin)")
    p.add_argument("--part", help="official only: which state dict to take (model_ema for MAE/BEiT EMA weights, "
                                  "target_encoder for I-JEPA's EMA encoder, ema for data2vec 2.0's teacher)")
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
    if args.part and fmt != "official":
        raise ValueError("--part is only used with --from official")
    if fmt == "hf":
        if overrides:
            raise ValueError("--set is not used with --from hf (the transformers config defines the model)")
        from mimkit.interop.hf import from_hf

        model = from_hf(src)
    size = img_size_arg(args.img_size)
    extras = {}
    if fmt == "official":
        from mimkit.interop.official import load_official

        model, extras = load_official(src, method=args.method, part=args.part, img_size=size, return_extras=True,
                                      **overrides)
    elif fmt == "timm":
        from mimkit.interop.timm import import_timm_dir

        model = import_timm_dir(src, method=args.method, **overrides)
    if size is not None and fmt != "official":  # official imports resize as the reference does
        model = build_and_load(model_config(model), model.state_dict(), src, size)
    out = mimkit.save(model, Path(args.out))
    from mimkit.interop.official import EXTRAS, save_extras

    if (out / EXTRAS).exists():
        (out / EXTRAS).unlink()  # a previous import's
    if extras:
        save_extras(extras, out / EXTRAS)
        print(f"kept {len(extras)} tensors the model has no place for ({', '.join(sorted(extras)[:3])}"
              f"{', ...' if len(extras) > 3 else ''}) in {out / EXTRAS}; `mimkit export --format official` puts them back")
    cfg = model_config(model)
    print(f"wrote {out}/model.safetensors + config.json ({cfg.get('recipe') or cfg.get('builder')}, "
          f"{sum(p.numel() for p in model.parameters()):,} parameters)")
    return 0
