"""``mimkit tokenizer``: train BEiT's visual tokenizer, turn images into token ids, report its quality.

* ``mimkit tokenizer train --config configs/dvae_tiny_28.yaml [section.key=value ...]`` trains a
  discrete VAE with the pretraining engine (same config format as ``mimkit pretrain``), then writes
  ``tokenizer_stats.json`` and ``tokenizer_reconstructions.png`` into the run directory.
* ``mimkit tokenizer encode --tokenizer RUN --images SPEC --out ids.pt`` saves the ids (N, h*w).
* ``mimkit tokenizer stats --tokenizer RUN --images SPEC`` prints PSNR, perplexity and codebook usage
  and writes a reconstructions PNG.
* ``mimkit tokenizer import --format dalle|dalle-pytorch --weights FILE --out DIR`` stores a DALL-E
  encoder state dict, or BEiT's "customized" DALLE-pytorch dVAE (``pytorch_model.bin``), as a mimkit
  model directory (usable as BEiT's ``tokenizer_path``); ``import-dalle`` is ``import --format dalle``.
"""
from __future__ import annotations

import json
from pathlib import Path

from mimkit.commands import add_trust_flag

IMPORT_FORMATS = ("dalle", "dalle-pytorch")
TOKENIZER_HELP = ("tokenizer run directory, model dir, .safetensors, or a DALL-E / DALLE-pytorch state dict "
                  "(.pt, .bin)")
IMAGES_HELP = ("fashion_mnist[:train|test], a directory of images (searched recursively) or a .pt image "
               "tensor (N, C, H, W) already normalised for the tokenizer")


def register(sub) -> None:
    p = sub.add_parser("tokenizer", help="train / use BEiT's visual tokenizer (discrete VAE)",
                       description="Train BEiT's visual tokenizer on your data and use it.")
    tsub = p.add_subparsers(dest="tokenizer_command", metavar="ACTION")

    t = tsub.add_parser("train", help="train a discrete VAE tokenizer",
                        description="Train a tokenizer recipe (e.g. dvae_tiny_28) with the pretraining engine. "
                                    "Overrides are dotted keys, e.g. trainer.max_epochs=5 model.vocab_size=256")
    t.add_argument("--config", help="YAML config (e.g. configs/dvae_tiny_28.yaml)")
    t.add_argument("--resume", help="checkpoint to continue from (runs/<run>/checkpoints/last.ckpt)")
    t.add_argument("--stats-images", type=int, default=2000,
                   help="held-out images used for the final PSNR / codebook report (default 2000)")
    t.add_argument("--debug", action="store_true", help="show full tracebacks")
    add_trust_flag(t)
    t.add_argument("overrides", nargs="*", help="section.key=value")
    t.set_defaults(func=run_train)

    e = tsub.add_parser("encode", help="token ids of images")
    e.add_argument("--tokenizer", required=True, help=TOKENIZER_HELP)
    e.add_argument("--images", required=True, help=IMAGES_HELP)
    e.add_argument("--out", required=True, help="output .pt file: {'ids': (N, h*w) long, 'grid', 'vocab_size', 'files'}")
    e.add_argument("--limit", type=int, help="only the first N images")
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--device", default="cpu")
    e.add_argument("--debug", action="store_true")
    add_trust_flag(e)
    e.set_defaults(func=run_encode)

    s = tsub.add_parser("stats", help="PSNR, perplexity and codebook usage; reconstructions PNG")
    s.add_argument("--tokenizer", required=True, help=TOKENIZER_HELP)
    s.add_argument("--images", default="fashion_mnist:test", help=IMAGES_HELP + " (default fashion_mnist:test)")
    s.add_argument("--out", help="directory for reconstructions.png and stats.json (default: beside the tokenizer)")
    s.add_argument("--limit", type=int, default=10000, help="only the first N images (default 10000)")
    s.add_argument("--batch-size", type=int, default=256)
    s.add_argument("--device", default="cpu")
    s.add_argument("--debug", action="store_true")
    add_trust_flag(s)
    s.set_defaults(func=run_stats)

    d = tsub.add_parser("import-dalle", help="store a DALL-E encoder state dict as a mimkit tokenizer")
    d.add_argument("--weights", required=True, help="state dict file of dall_e's Encoder (.pt/.pth/.safetensors)")
    d.add_argument("--out", required=True, help="output directory (config.json + model.safetensors)")
    d.add_argument("--img-size", type=int, default=112, help="tokenizer view size (112 -> 14x14 tokens)")
    d.add_argument("--mean", type=float, nargs="+", help="normalisation of the images BEiT is fed (to undo)")
    d.add_argument("--std", type=float, nargs="+")
    d.add_argument("--debug", action="store_true")
    add_trust_flag(d)
    d.set_defaults(func=run_import_dalle)

    i = tsub.add_parser("import", help="store a DALL-E encoder or a DALLE-pytorch dVAE as a mimkit tokenizer",
                        description="Convert tokenizer weights to a mimkit model directory (config.json + "
                                    "model.safetensors) that BEiT recipes use through model.tokenizer_path. "
                                    "dalle: a state dict of dall_e's Encoder; dalle-pytorch: BEiT's customized "
                                    "dVAE (pytorch_model.bin holding {'weights': state_dict}); shapes are read "
                                    "from the weights.")
    i.add_argument("--format", required=True, choices=IMPORT_FORMATS, help="layout of the weights")
    i.add_argument("--weights", required=True, help="weights file (.bin/.pt/.pth/.safetensors)")
    i.add_argument("--out", required=True, help="output directory (config.json + model.safetensors)")
    i.add_argument("--image-size", "--img-size", dest="img_size", type=int, default=112,
                   help="tokenizer view size (default 112, BEiT's second view: 14x14 tokens)")
    i.add_argument("--num-layers", type=int, help="dalle-pytorch: strided layers (checked against the weights)")
    i.add_argument("--num-tokens", type=int, help="dalle-pytorch: codebook size (checked against the weights)")
    i.add_argument("--codebook-dim", type=int, help="dalle-pytorch: code width (checked against the weights)")
    i.add_argument("--hidden-dim", type=int, help="dalle-pytorch: conv width (checked against the weights)")
    i.add_argument("--input-mean", type=float, nargs="+", default=[0.5],
                   help="dalle-pytorch: normalisation the dVAE expects its inputs in (default 0.5, as BEiT)")
    i.add_argument("--input-std", type=float, nargs="+", default=[0.5])
    i.add_argument("--mean", type=float, nargs="+", help="normalisation of the images BEiT is fed (to undo)")
    i.add_argument("--std", type=float, nargs="+")
    i.add_argument("--debug", action="store_true")
    add_trust_flag(i)
    i.set_defaults(func=run_import)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _is_tokenizer_recipe(name: str) -> bool:
    from mimkit.registry import recipe_info

    builder = recipe_info(name)[0]
    return hasattr(builder, "encode_ids")


def run_train(args) -> int:
    from mimkit.train import load_config, run_pretrain
    from mimkit.train.config import model_kwargs

    if args.resume:
        from mimkit.train.run import config_from_checkpoint

        cfg = config_from_checkpoint(args.resume, args.overrides)
    else:
        cfg = load_config(args.config, args.overrides)
    name, _ = model_kwargs(cfg)
    if not _is_tokenizer_recipe(name):
        raise ValueError(f"{name!r} is not a tokenizer recipe; use e.g. model.name=dvae_tiny_28 "
                         "(`mimkit models dvae` lists them), or `mimkit pretrain` for MIM methods")
    run_dir = Path(run_pretrain(cfg, resume=args.resume))
    if args.stats_images:
        report_after_training(run_dir, cfg, args.stats_images)
    return 0


def report_after_training(run_dir: Path, cfg: dict, n_images: int) -> dict:
    """Held-out PSNR / perplexity / codebook usage of the trained tokenizer + reconstructions PNG."""
    import torch

    from mimkit.checkpoint import load_model
    from mimkit.data import build_dataset
    from mimkit.tokenizer import codebook_stats, format_stats
    from mimkit.tokenizer.report import save_reconstructions

    tok = load_model(run_dir / "model")
    d = dict(cfg["data"], limit=n_images)
    try:
        ds = build_dataset(d, "test", train_transform=False)
    except (FileNotFoundError, ValueError):
        ds = build_dataset(d, "train", train_transform=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=256)
    stats = codebook_stats(tok, loader)
    print(format_stats(stats))
    images = torch.stack([ds[i][0] for i in range(min(8, len(ds)))])
    png = save_reconstructions(tok, images, run_dir / "tokenizer_reconstructions.png")
    _write_stats(run_dir / "tokenizer_stats.json", stats)
    print(f"mimkit: tokenizer report {run_dir / 'tokenizer_stats.json'}, reconstructions {png}")
    print(f"mimkit: use it for BEiT with model.tokenizer_path={run_dir / 'model'}")
    return stats


def _write_stats(path: Path, stats: dict) -> None:
    from mimkit.files import atomic_write

    data = {k: v for k, v in stats.items() if k != "counts"}
    atomic_write(path, lambda p: Path(p).write_text(json.dumps(data, indent=2)))


def _load(args):
    import torch

    from mimkit.tokenizer import load_tokenizer
    from mimkit.tokenizer.io import load_images, tokenizer_normalization

    tok = load_tokenizer(args.tokenizer).to(torch.device(args.device))
    mean, std = tokenizer_normalization(tok)
    images, names = load_images(args.images, tok.img_size, tok.in_chans, mean, std, args.limit)
    return tok, images, names


def run_encode(args) -> int:
    import torch

    from mimkit.files import atomic_write
    from mimkit.tokenizer.io import batches

    tok, images, names = _load(args)
    ids = torch.cat([tok.encode_ids(b.to(args.device)).cpu() for b in batches(images, args.batch_size)])
    grid = [images.shape[-2] // (tok.img_size[0] // tok.grid_size[0]),
            images.shape[-1] // (tok.img_size[1] // tok.grid_size[1])]
    out = {"ids": ids, "grid": grid, "vocab_size": int(tok.vocab_size), "files": names, "source": args.images}
    atomic_write(args.out, lambda p: torch.save(out, p))
    print(f"mimkit: {ids.shape[0]} images -> ids {tuple(ids.shape)} ({grid[0]}x{grid[1]} tokens, "
          f"{int(ids.unique().numel())} distinct of {tok.vocab_size}) written to {args.out}")
    return 0


def run_stats(args) -> int:
    from mimkit.tokenizer import codebook_stats, format_stats
    from mimkit.tokenizer.io import batches
    from mimkit.tokenizer.report import save_reconstructions

    tok, images, _ = _load(args)
    stats = codebook_stats(tok, batches(images, args.batch_size))
    print(format_stats(stats))
    src = Path(args.tokenizer)
    out_dir = Path(args.out) if args.out else (src if src.is_dir() else src.parent)
    png = save_reconstructions(tok, images[:8], out_dir / "reconstructions.png")
    _write_stats(out_dir / "stats.json", stats)
    print(f"mimkit: reconstructions {png}, stats {out_dir / 'stats.json'}")
    return 0


def run_import_dalle(args) -> int:
    from mimkit.checkpoint import save_model
    from mimkit.tokenizer import load_dalle_encoder

    if (args.mean is None) != (args.std is None):
        raise ValueError("give both --mean and --std or neither")
    enc = load_dalle_encoder(args.weights, img_size=args.img_size, pixel_mean=args.mean, pixel_std=args.std)
    save_model(enc, args.out)
    print(f"mimkit: DALL-E encoder ({enc.vocab_size} codes, {enc.grid_size[0]}x{enc.grid_size[1]} tokens at "
          f"{enc.img_size[0]} px) saved to {args.out}; use it with model.tokenizer_path={args.out}")
    return 0


def run_import(args) -> int:
    from mimkit.checkpoint import save_model
    from mimkit.tokenizer import load_dalle_encoder, load_dalle_pytorch_dvae

    if (args.mean is None) != (args.std is None):
        raise ValueError("give both --mean and --std or neither")
    if args.format == "dalle":
        extra = [k for k in ("num_layers", "num_tokens", "codebook_dim", "hidden_dim") if getattr(args, k) is not None]
        if extra:
            raise ValueError(f"--{extra[0].replace('_', '-')} is for --format dalle-pytorch; a DALL-E encoder's "
                             "shapes all come from its weights")
        tok = load_dalle_encoder(args.weights, img_size=args.img_size, pixel_mean=args.mean, pixel_std=args.std)
    else:
        tok = load_dalle_pytorch_dvae(args.weights, img_size=args.img_size, num_layers=args.num_layers,
                                      num_tokens=args.num_tokens, codebook_dim=args.codebook_dim,
                                      hidden_dim=args.hidden_dim, input_mean=args.input_mean,
                                      input_std=args.input_std, pixel_mean=args.mean, pixel_std=args.std)
    save_model(tok, args.out)
    print(f"mimkit: {args.format} tokenizer ({tok.vocab_size} codes, {tok.grid_size[0]}x{tok.grid_size[1]} tokens "
          f"at {tok.img_size[0]} px) saved to {args.out}; use it with model.tokenizer_path={args.out}")
    return 0
