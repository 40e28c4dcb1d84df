"""``mimkit visualize --checkpoint CKPT``: look at what a model does.

* ``reconstructions.png``: one row per image, original | masked input | prediction | prediction with
  the visible patches pasted back, for any masking strategy and ratio and a fixed seed
  (``norm_pix_loss`` predictions are un-normalised with each patch's own statistics, and the picture
  says so). Pixel-predicting methods only (MAE, SimMIM); BEiT predicts token ids and MaskFeat HOG
  features, so for those only the attention picture is written.
* ``attention.png``: cls-token attention to every patch in the last block (``--block`` picks
  another), averaged over heads and per head, overlaid on the image. Swin has no cls token and only
  windowed attention, so it has no such picture (said clearly).

Images are chosen files (``--images a.png b.png``) or dataset samples (``--samples 8``).
"""
from __future__ import annotations

from pathlib import Path

from mimkit.commands import add_trust_flag

WHAT = ("both", "reconstruction", "attention")


def register(sub) -> None:
    from mimkit.eval.data import CHECKPOINT_HELP, DATA_HELP

    p = sub.add_parser("visualize", help="reconstruction grid and attention maps (PNG)",
                       description="Write reconstructions.png and attention.png for chosen images or dataset samples.")
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    p.add_argument("--images", nargs="+", help="image files to show (any format PIL reads)")
    p.add_argument("--samples", type=int, default=8, help="number of dataset samples when --images is not given "
                                                          "(default 8)")
    p.add_argument("--data", default="fashion_mnist", help=DATA_HELP + " (for --samples)")
    p.add_argument("--split", default="test", choices=("train", "test"), help="dataset split for --samples")
    p.add_argument("--data-root", help="folder holding the Fashion-MNIST idx files (default: auto-detected)")
    p.add_argument("--masking", default="random", choices=("random", "simmim", "block", "center"),
                   help="masking strategy for the reconstruction (default random, MAE's)")
    p.add_argument("--mask-ratio", type=float, help="share of patches hidden (default: the model's mask_ratio, else 0.6)")
    p.add_argument("--mask-patch-size", type=int,
                   help="SimMIM masking cell in pixels (a multiple of the patch size; default 2 patches when the "
                        "grid allows, else 1)")
    p.add_argument("--min-block", type=int, help="block masking: smallest block in patches (default L // 12, max 16)")
    p.add_argument("--seed", type=int, default=0, help="seed for the sample choice and the mask (default 0)")
    p.add_argument("--what", choices=WHAT, default="both", help="which pictures (default both)")
    p.add_argument("--block", type=int, default=-1, help="block whose attention is shown (default -1 = last)")
    p.add_argument("--mean", type=float, nargs="+", help="input normalisation mean (default: the dataset's)")
    p.add_argument("--std", type=float, nargs="+", help="input normalisation std")
    p.add_argument("--out", default="runs/visualize", help="output directory (default runs/visualize)")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    add_trust_flag(p)
    p.set_defaults(func=run)


def load_image_files(paths, model, mean, std):
    """Image files -> normalised (N, C, H, W) batch at the model's resolution (resize + centre crop)."""
    import types

    import torch

    from mimkit.data import SafeImageFolder, eval_transform
    from mimkit.eval.data import model_input

    size, chans = model_input(model)
    tf = eval_transform(size, mean, std)
    out = []
    for p in paths:
        if not Path(p).is_file():
            raise FileNotFoundError(f"image file {p} does not exist")
        try:  # SafeImageFolder's conversion: grayscale/RGBA/palette/16-bit -> the model's channels
            img = SafeImageFolder.load(types.SimpleNamespace(in_chans=chans), str(p))
        except Exception as e:
            raise ValueError(f"cannot read image {p}: {e}") from None
        out.append(tf(img))
    return torch.stack(out)


def build_mask(args, model, n: int, grid, generator):
    """The masks (N, h*w) bool for the reconstruction, from ``mimkit.masking.build_masking``."""
    from mimkit.masking import build_masking

    ratio = args.mask_ratio if args.mask_ratio is not None else float(getattr(model, "mask_ratio", 0.6))
    kw = {}
    L = grid[0] * grid[1]
    if args.masking == "simmim":
        p = model.patch_size
        default = 2 * p if grid[0] % 2 == 0 and grid[1] % 2 == 0 else p
        kw["mask_patch_size"] = args.mask_patch_size or default
    if args.masking == "block":
        kw["min_num_patches"] = args.min_block or max(1, min(16, L // 12))
    gen = build_masking(args.masking, ratio=ratio, patch_size=model.patch_size, **kw)
    gen.check_grid(grid)
    return gen(n, grid, generator=generator).bool(), gen


def run(args) -> int:
    import torch

    from mimkit.data import default_stats
    from mimkit.eval.data import eval_dataset, load_model_spec, model_input
    from mimkit.viz import save_attention_grid, save_reconstruction_grid

    model = load_model_spec(args.checkpoint).eval()
    size, chans = model_input(model)
    g = torch.Generator().manual_seed(args.seed)
    if args.images:
        # files for a grayscale Fashion-MNIST model get its statistics; otherwise ImageNet's (RGB) or 0.5
        stats_of = "fashion_mnist" if args.data == "fashion_mnist" and chans == 1 else "image_folder"
        d_mean, d_std = default_stats(stats_of, chans)
        mean, std = list(args.mean or d_mean), list(args.std or d_std)
        images = load_image_files(args.images, model, mean, std)
    else:
        if args.samples < 1:
            raise ValueError(f"--samples must be >= 1, got {args.samples}")
        ds, _ = eval_dataset(args.data, args.split, model, mean=args.mean, std=args.std, root=args.data_root)
        idx = torch.randperm(len(ds), generator=g)[: args.samples].tolist()
        images = torch.stack([ds[i][0] for i in idx])
        stats_of = "fashion_mnist" if args.data == "fashion_mnist" else "image_folder"
        d_mean, d_std = default_stats(stats_of, chans)
        mean, std = list(args.mean or d_mean), list(args.std or d_std)
    if len(mean) == 1 and chans > 1:
        mean, std = mean * chans, std * chans
    out_dir = Path(args.out)
    written = []
    method = getattr(model, "method", type(model).__name__)
    if args.what in ("both", "reconstruction"):
        if hasattr(model, "reconstruct"):
            grid = model.grid(images)
            mask, gen = build_mask(args, model, images.shape[0], grid, g)
            torch.manual_seed(args.seed)
            with torch.no_grad():
                out = model(images, mask=mask)
            # the mask the model used (MAE keeps the same number of patches in every row, so a block mask
            # whose rows differ hides a few more); the picture is drawn with exactly this mask
            used = out.mask.bool()
            title = (f"{method}, {args.masking} masking: {used.float().mean().item():.0%} of patches hidden "
                     f"(seed {args.seed}), loss {float(out.loss):.4f}")
            written.append(save_reconstruction_grid(model, images, out_dir / "reconstructions.png", mean, std,
                                                    mask=used, title=title))
        else:
            msg = (f"{method} predicts {'visual-token ids' if method == 'beit' else 'features, not pixels'}, so it has "
                   "no pixel reconstruction")
            if args.what == "reconstruction":
                raise ValueError(msg + "; use --what attention")
            print(f"mimkit visualize: {msg}; writing the attention picture only")
    if args.what in ("both", "attention"):
        try:
            written.append(save_attention_grid(model, images, out_dir / "attention.png", mean, std, block=args.block))
        except ValueError as e:
            if args.what == "attention" or not written:
                raise
            print(f"mimkit visualize: no attention picture: {e}")
    for p in written:
        print(f"wrote {p}")
    return 0
