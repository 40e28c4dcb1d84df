"""What ``mimkit explore`` shows, as plain functions of one model and one image (no gradio here).

:class:`Explorer` holds a model read through the safe loader (:func:`mimkit.eval.data.load_model_spec`:
run directory, model directory, ``.safetensors``, ``.ckpt``, ``hf:DIR``, ...) and the dataset it is shown
with, and answers the page's four questions:

* :meth:`Explorer.mask_and_predict`: hide patches (any masking the model's grid allows, or chosen patches),
  then original | masked | prediction | prediction + visible for pixel methods (``model.reconstruct``
  through :func:`mimkit.viz.reconstruction_panels`), the predicted visual-token map beside the tokenizer's
  for BEiT, the per-patch error of the predicted features for MaskFeat (HOG), data2vec 2.0 and I-JEPA
  (teacher features), and for iBOT the cross-entropy of the student's prototype distribution to the EMA
  teacher's at each hidden patch. The same seed gives the same mask.
* :meth:`Explorer.attention`: cls-to-patch attention of one block and head (:func:`mimkit.viz.attention_maps`),
  or, for an encoder without a cls token (I-JEPA), the mean attention each patch receives.
* :meth:`Explorer.neighbours`: the nearest training images under the encoder (cosine, the k-NN protocol's
  features from :func:`mimkit.eval.features.extract_features`) beside raw pixels; the training features are
  computed once per process and kept.
* :meth:`Explorer.run_summary`: the run's config, its loss and validation curves (``logs/metrics.csv``) and
  its quality report (``report/report.md``, ``report.png``) when it has one.

Every picture is an (H, W, 3) uint8 array, enlarged by an integer factor (nearest neighbour) so that a
28-pixel image is readable: ``array[::s, ::s]`` gives back the model-sized picture (``s`` = :attr:`scale`).
Errors are ``ValueError`` / ``FileNotFoundError`` with one line that says what to do.
"""
from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import numpy as np
import torch

DISPLAY = 224  # pixels a picture is enlarged to (at least), by an integer factor
MASKINGS = ("random", "simmim", "block", "center", "inverse_block")  # the ratio-based maskings of mimkit.masking
PATCHES = "patches"  # the user's own mask: the patches clicked (or typed)
VIEWS = ("auto", "pixels")  # "pixels" asks for a pixel reconstruction whatever the method predicts
WHAT = {"pixels": "pixels", "tokens": "visual-token ids", "features": "features"}
FEATURE_TARGET = {"maskfeat": "HOG features", "data2vec2": "the EMA teacher's averaged block outputs",
                  "ijepa": "the EMA teacher's final tokens", "ibot": "the EMA teacher's prototype distributions"}


def first_line(e: BaseException | str) -> str:
    """The first line of an error's message (a KeyError's key without its quotes)."""
    msg = e.args[0] if isinstance(e, KeyError) and e.args else e
    text = str(msg).strip() or type(e).__name__
    return text.splitlines()[0]


def prediction_kind(model) -> str:
    """``pixels`` (MAE, SimMIM: ``model.reconstruct``), ``tokens`` (BEiT: ``token_logits``) or ``features``."""
    if hasattr(model, "reconstruct"):
        return "pixels"
    if hasattr(model, "token_logits"):
        return "tokens"
    return "features"


def find_run_dir(spec: str) -> Path | None:
    """The run directory a checkpoint spec belongs to (``config.yaml`` beside ``model/`` and
    ``checkpoints/``), or None (a bare model directory, ``hf:DIR``, ``recipe:NAME``)."""
    spec = str(spec)
    if ":" in spec.split("/")[0] and not Path(spec).exists():
        return None
    p = Path(spec)
    if p.is_file():  # run/model/model.safetensors, run/checkpoints/last.ckpt
        p = p.parent
    if (p / "config.yaml").is_file():
        return p
    if p.name in ("model", "checkpoints") and (p.parent / "config.yaml").is_file():
        return p.parent
    return None


def shown_path(spec, cwd=None) -> str:
    """``spec`` (a checkpoint spec or a path) as the page shows it: a path under the current directory
    (``cwd``) relative to it (``runs/demo``, not the absolute path), so that the page and its screenshots do
    not show where the project lives on this machine; any other path or spec as given. The prefix of
    ``hf:DIR`` / ``timm:DIR`` is kept and its directory shown the same way."""
    spec = str(spec)
    head, sep, rest = spec.partition(":")
    if sep and "/" not in head and not Path(spec).exists():  # hf:DIR, timm:DIR, recipe:NAME
        return f"{head}:{shown_path(rest, cwd)}" if rest else spec
    path = Path(spec)
    if not path.is_absolute():
        return spec
    try:
        return str(path.relative_to(Path(cwd) if cwd is not None else Path.cwd())) or "."
    except ValueError:
        return spec


def parse_patches(text: str | None, num_patches: int) -> list[int]:
    """``"3, 4 10"`` -> [3, 4, 10] (patch numbers, row-major from 0); a clear error for anything else."""
    out = []
    for tok in str(text or "").replace(",", " ").split():
        try:
            i = int(tok)
        except ValueError:
            raise ValueError(f"patch numbers are whole numbers from 0 to {num_patches - 1}, got {tok!r}") from None
        if not 0 <= i < num_patches:
            raise ValueError(f"patch {i} is outside the grid: patches are numbered 0 to {num_patches - 1}")
        out.append(i)
    return sorted(set(out))


def enlarge(img: torch.Tensor, scale: int) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H*s, W*s, 3) uint8, grey replicated, nearest-neighbour enlarged."""
    img = img.detach().float().cpu().clamp(0, 1)
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    arr = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return arr.repeat(scale, 0).repeat(scale, 1)


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H, W, C) uint8 as :func:`enlarge` rounds it (for comparisons)."""
    return (img.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def _colormap(values: np.ndarray, name: str = "magma") -> np.ndarray:
    """(h, w) values in [0, 1] (NaN = no value) -> (h, w, 3) float in [0, 1]; NaN shown mid grey."""
    from matplotlib import colormaps

    rgb = colormaps[name](np.nan_to_num(values, nan=0.0))[..., :3]
    rgb[np.isnan(values)] = 0.5
    return rgb


def _grid_picture(rgb: np.ndarray, patch: int, scale: int) -> np.ndarray:
    """(h, w, 3) float per patch -> the enlarged picture, one flat square per patch."""
    arr = (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)
    return arr.repeat(patch * scale, 0).repeat(patch * scale, 1)


def _token_palette(vocab: int) -> np.ndarray:
    """A fixed colour per visual-token id (the same id, the same colour, on every page)."""
    return np.random.default_rng(0).uniform(0.15, 1.0, size=(vocab, 3))


def figure_to_array(fig) -> np.ndarray:
    fig.canvas.draw()
    arr = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    import matplotlib.pyplot as plt

    plt.close(fig)
    return arr


class Explorer:
    """A model and its dataset, for the explorer page.

    Args:
        checkpoint: a checkpoint spec (see :data:`mimkit.eval.data.CHECKPOINT_HELP`), read safely.
        data: ``fashion_mnist`` or an ImageFolder directory with ``train/`` and ``test/`` (images to
            pick come from the test split, neighbours from the training split).
        data_root: where the Fashion-MNIST files are (default: found).
        train_limit / test_limit: only the first N images of a split (quick pages and tests).
    """

    def __init__(self, checkpoint: str, data: str = "fashion_mnist", data_root=None, train_limit: int | None = None,
                 test_limit: int | None = None):
        from ..data import default_stats
        from ..eval.data import model_input

        self.checkpoint, self.data, self.data_root = str(checkpoint), str(data), data_root
        self.train_limit, self.test_limit = train_limit, test_limit
        self.model = self._load(self.checkpoint)
        if callable(getattr(self.model, "on_train_step", None)):  # its own schedules (iBOT's teacher
            self.model.on_train_step(1.0, 1.0)  # temperatures) where a trained model ends its run
        self.size, self.chans = model_input(self.model)
        self.patch = int(self.model.patch_size)
        self.grid = (self.size // self.patch, self.size // self.patch)
        self.num_patches = self.grid[0] * self.grid[1]
        self.scale = max(1, math.ceil(DISPLAY / self.size))
        self.method = getattr(self.model, "method", type(self.model).__name__)
        self.kind = prediction_kind(self.model)
        stats = "fashion_mnist" if self.data in ("fashion_mnist", "fmnist", "fashion-mnist") else "image_folder"
        mean, std = default_stats(stats, self.chans)  # what eval_dataset normalises the dataset with
        self.mean, self.std = list(mean), list(std)
        if len(self.mean) == 1 and self.chans > 1:
            self.mean, self.std = self.mean * self.chans, self.std * self.chans
        self.run_dir = find_run_dir(self.checkpoint)
        self._splits: dict = {}
        self._features = None
        self._lock = threading.Lock()

    # ---- the model ----------------------------------------------------------------------------
    @staticmethod
    def _load(spec: str):
        """The model of ``spec`` through the safe loader; one clear line when it is not a mimkit model."""
        from ..base import MIMModel
        from ..eval.data import load_model_spec

        try:
            model = load_model_spec(spec)
        except FileNotFoundError:
            raise
        except Exception as e:  # a pickle refused, a config of something else, a file of another kind
            raise ValueError(f"{spec} is not a mimkit model: {first_line(e)}") from None
        if not isinstance(model, MIMModel):
            raise ValueError(f"{spec} is not a mimkit model (it loads as {type(model).__name__}); give a run "
                             "directory, a model directory, a .safetensors or .ckpt file, or hf:DIR")
        return model.eval()

    def describe(self) -> str:
        """One paragraph (Markdown) about the model on the page."""
        depth = self.depth
        what = WHAT[self.kind] if self.kind != "features" else FEATURE_TARGET.get(self.method, "features")
        cfg = getattr(self.model, "mimkit_config", None) or {}
        recipe = cfg.get("recipe") or cfg.get("builder") or self.method
        return (f"**{self.method}** (`{recipe}`) from `{shown_path(self.checkpoint)}`: {self.size}x{self.size} px, "
                f"{self.chans} channel(s), patch {self.patch} ({self.grid[0]}x{self.grid[1]} patches)"
                + (f", {depth} blocks" if depth else "") + f"; predicts **{what}** of the hidden patches.")

    @property
    def depth(self) -> int:
        return len(getattr(self.encoder, "blocks", []) or [])

    @property
    def encoder(self):
        """The encoder the page shows (its attention, its neighbours): the one evaluation reads."""
        from ..base import feature_encoder

        return feature_encoder(self.model)

    @property
    def heads(self) -> int:
        enc = self.encoder
        blocks = getattr(enc, "blocks", None)
        if not blocks:
            return 0
        attn = getattr(blocks[0], "attn", None)
        return int(getattr(attn, "num_heads", 0) or getattr(enc, "num_heads", 0) or 0)

    # ---- images -------------------------------------------------------------------------------
    def split(self, name: str):
        """(dataset, class names) of a split, built once (:func:`mimkit.eval.data.eval_dataset`)."""
        from ..eval.data import eval_dataset

        if name not in self._splits:
            limit = self.train_limit if name == "train" else self.test_limit
            self._splits[name] = eval_dataset(self.data, name, self.model, limit=limit, root=self.data_root)
        return self._splits[name]

    def dataset_image(self, index: int) -> tuple[torch.Tensor, str]:
        """Test image ``index`` as the model receives it (1, C, H, W), and a caption."""
        ds, classes = self.split("test")
        if index is None or not 0 <= int(index) < len(ds):
            raise ValueError(f"image index must be between 0 and {len(ds) - 1} (the test split holds {len(ds)} "
                             f"images), got {index}")
        x, y = ds[int(index)]
        return x.unsqueeze(0), f"test image {int(index)} of {len(ds)}: {classes[int(y)]}"

    def file_image(self, path) -> tuple[torch.Tensor, str]:
        """An image file of any size and mode, converted as every mimkit dataset converts images
        (:func:`mimkit.data.load_image`: 16-bit scaled, transparency on white, grey or RGB as the model
        takes) and resized (shorter side, bicubic) + centre-cropped to the model's input."""
        from PIL import Image

        from ..data import eval_transform, load_image

        name = Path(str(path)).name
        if not Path(str(path)).is_file():
            raise FileNotFoundError(f"the upload {name} is not a file")
        try:
            with Image.open(path) as im:
                w, h, mode = im.width, im.height, im.mode
            img = load_image(path, self.chans)
        except Exception as e:
            raise ValueError(f"cannot read the upload {name} as an image: {first_line(e)}") from None
        x = eval_transform(self.size, self.mean, self.std)(img).unsqueeze(0)
        to = "grayscale" if self.chans == 1 else "RGB"
        changed = [] if (w, h) == (self.size, self.size) else [
            f"resized (shorter side, bicubic) and centre-cropped from {w}x{h} to {self.size}x{self.size}"]
        if mode != img.mode:
            changed.append(f"converted from {mode} to {to}")
        return x, f"upload {name}: {w}x{h} {mode}" + (f"; {', '.join(changed)}" if changed else
                                                      " (already the model's input)")

    def image(self, source: str = "dataset", index: int = 0, upload=None) -> tuple[torch.Tensor, str]:
        """The page's current image: a test image or the uploaded file."""
        if source == "upload":
            if not upload:
                raise ValueError("no file uploaded: upload an image, or pick one from the dataset")
            return self.file_image(upload)
        return self.dataset_image(index)

    def show(self, x: torch.Tensor) -> np.ndarray:
        """A normalised (1, C, H, W) image as the page shows it."""
        from ..viz import denormalize

        return enlarge(denormalize(x.float(), self.mean, self.std)[0], self.scale)

    def patch_at(self, col: int, row: int) -> int:
        """The patch number under pixel (col, row) of a shown (enlarged) picture."""
        step = self.patch * self.scale
        r, c = int(row) // step, int(col) // step
        if not (0 <= r < self.grid[0] and 0 <= c < self.grid[1]):
            raise ValueError(f"pixel ({col}, {row}) is outside the picture")
        return r * self.grid[1] + c

    # ---- masks --------------------------------------------------------------------------------
    def default_masking(self) -> str:
        from .. import masking as M

        own = type(getattr(self.model, "masking", None))
        names = {M.RandomMasking: "random", M.SimMIMMasking: "simmim", M.BlockMasking: "block",
                 M.CenterMasking: "center", M.InverseBlockMasking: "inverse_block"}
        name = names.get(own, "random")
        return name if name in self.maskings() else "random"

    def default_ratio(self) -> float:
        r = getattr(self.model, "mask_ratio", None) or getattr(self.model, "mask_fraction", None)
        if r is None:
            r = getattr(getattr(self.model, "masking", None), "ratio", None)
        return round(float(r), 2) if r and 0 < float(r) < 1 else 0.6

    def _generator(self, strategy: str, ratio: float):
        from ..masking import build_masking, check_ratio

        if strategy not in MASKINGS:
            raise ValueError(f"unknown masking {strategy!r}; choose one of {', '.join((*MASKINGS, PATCHES))}")
        check_ratio(float(ratio))
        kw = {}
        if strategy == "simmim":  # cells of 2 patches when the grid allows (visualize's default)
            kw["mask_patch_size"] = 2 * self.patch if self.grid[0] % 2 == 0 and self.grid[1] % 2 == 0 else self.patch
        if strategy == "block":
            kw["min_num_patches"] = max(1, min(16, self.num_patches // 12))
        gen = build_masking(strategy, ratio=float(ratio), patch_size=self.patch, **kw)
        gen.check_grid(self.grid)
        return gen

    def maskings(self) -> list[str]:
        """The maskings this model's patch grid allows, then ``patches`` (the user's own)."""
        ok = []
        for name in MASKINGS:
            try:
                self._generator(name, 0.5)
            except ValueError:
                continue
            ok.append(name)
        return [*ok, PATCHES]

    def mask(self, strategy: str, ratio: float, seed: int = 0, patches: str | None = None) -> torch.Tensor:
        """(1, L) bool, True = hidden: ``strategy`` at ``ratio`` drawn with ``seed`` (the same seed, the
        same mask), or the listed ``patches``."""
        if strategy == PATCHES:
            ids = parse_patches(patches, self.num_patches)
            if not ids:
                raise ValueError("no patch chosen: click patches of the original (or type their numbers) to hide them")
            if len(ids) == self.num_patches:
                raise ValueError("every patch is hidden: leave at least one visible")
            m = torch.zeros(1, self.num_patches, dtype=torch.bool)
            m[0, ids] = True
            return m
        g = torch.Generator().manual_seed(int(seed))
        m = self._generator(strategy, ratio)(1, self.grid, generator=g).bool()
        if not m.any():
            raise ValueError(f"{strategy} masking at ratio {ratio} hides no patch of this {self.grid[0]}x"
                             f"{self.grid[1]} grid; raise the ratio")
        return m

    # ---- mask and predict ---------------------------------------------------------------------
    def panel_titles(self) -> list[str]:
        """What the four pictures of :meth:`mask_and_predict` show, for this model."""
        if self.kind == "pixels":
            pred = ("prediction (un-normalised with each patch's stats)"
                    if getattr(self.model, "norm_pix_loss", False) else "prediction")
            return ["original", "masked input", pred, "prediction + visible"]
        if self.kind == "tokens":
            fourth = ("the tokenizer's ids (targets)" if getattr(self.model, "tokenizer", None) is not None
                      else "no tokenizer saved with this model: no target ids")
            return ["original", "masked input", "predicted token ids (hidden patches; one colour per id)", fourth]
        target = FEATURE_TARGET.get(self.method, "features")
        return ["original", "masked input", f"error of the predicted {target} per hidden patch (bright = large)",
                "the error over the image"]

    @torch.no_grad()
    def mask_and_predict(self, x: torch.Tensor, strategy: str, ratio: float, seed: int = 0, patches=None,
                         view: str = "auto") -> dict:
        """Four pictures (``panels``, with ``titles``), a one-line ``note`` and the numbers (``info``)."""
        from ..viz import denormalize

        if view not in VIEWS:
            raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
        if view == "pixels" and self.kind != "pixels":
            what = WHAT[self.kind] if self.kind != "features" else FEATURE_TARGET.get(self.method, "features")
            raise ValueError(f"{self.method} predicts {what}, not pixels: it has no pixel reconstruction (view 'auto' "
                             "shows what it predicts)")
        mask = self.mask(strategy, ratio, seed, patches)
        torch.manual_seed(int(seed))  # data2vec 2.0 fills hidden slots with noise
        if self.kind == "tokens" and getattr(self.model, "tokenizer", None) is None:
            out, used = None, mask  # BEiT without its tokenizer: no targets, so no loss (the ids still show)
        else:
            out = self.model(x, mask=mask)
            used = out.mask[:1].bool()  # data2vec 2.0: one row per masked copy, all with this mask
        m = used.view(1, 1, *self.grid).float().repeat_interleave(self.patch, 2).repeat_interleave(self.patch, 3)
        orig = denormalize(x.float(), self.mean, self.std)
        masked = orig * (1 - m) + 0.5 * m  # hidden patches grey
        info = {"method": self.method, "kind": self.kind, "masking": strategy, "ratio": float(ratio), "seed": int(seed),
                "grid": list(self.grid), "mask": used[0].int().tolist(), "hidden": int(used.sum()),
                "hidden_share": round(float(used.float().mean()), 4), "loss": None if out is None else float(out.loss)}
        panels = [enlarge(orig[0], self.scale), enlarge(masked[0], self.scale)]
        if self.kind == "pixels":
            from ..viz import reconstruction_panels

            _, _, pred, pasted, _ = reconstruction_panels(self.model, x, mask=used)
            panels += [enlarge(denormalize(t.float(), self.mean, self.std)[0], self.scale) for t in (pred, pasted)]
            note = f"{self.method} reconstructs pixels: {info['hidden']} of {self.num_patches} patches hidden"
        elif self.kind == "tokens":
            panels_t, note = self._token_panels(x, used, info)
            panels += panels_t
        else:
            panels_f, note = self._feature_panels(x, out, used, orig, info)
            panels += panels_f
        loss = "" if info["loss"] is None else f", loss {info['loss']:.4f}"
        note += f"{loss} ({strategy} masking, seed {int(seed)})."
        return {"panels": panels, "titles": self.panel_titles(), "note": note, "info": info}

    def _token_panels(self, x, used, info):
        vocab = int(self.model.vocab_size)
        palette = _token_palette(vocab)
        logits = self.model.token_logits(x, mask=used)  # (1, L, vocab)
        pred = logits.argmax(-1)[0]
        hidden = used[0]
        pred_rgb = palette[pred.numpy()].copy()
        pred_rgb[~hidden.numpy()] = 0.5  # visible patches: no prediction asked for
        h, w = self.grid
        panels = [_grid_picture(pred_rgb.reshape(h, w, 3), self.patch, self.scale)]
        info["pred_ids"] = [int(i) if hid else None for i, hid in zip(pred.tolist(), hidden.tolist())]
        if getattr(self.model, "tokenizer", None) is not None:
            target = self.model.tokenize(x)[0]
            panels.append(_grid_picture(palette[target.numpy()].reshape(h, w, 3), self.patch, self.scale))
            acc = float((pred[hidden] == target[hidden]).float().mean())
            info["target_ids"], info["hidden_accuracy"] = target.tolist(), round(acc, 4)
            note = (f"beit predicts visual-token ids: {int(hidden.sum())} hidden patches, "
                    f"{acc:.0%} predicted as the tokenizer's id")
        else:
            panels.append(np.full_like(panels[0], 128))
            note = f"beit predicts visual-token ids: {int(hidden.sum())} hidden patches (no tokenizer, no targets)"
        return panels, note

    def feature_errors(self, x, out, used) -> torch.Tensor:
        """(L,) error of the predicted features at each hidden patch (NaN at visible ones): the method's
        own loss per token (MaskFeat and data2vec 2.0: squared error; I-JEPA: smooth L1; iBOT: its patch
        term's cross-entropy, :meth:`mimkit.methods.ibot.IBOT.patch_cross_entropy`)."""
        import torch.nn.functional as F

        hidden = used[0]
        err = torch.full((self.num_patches,), float("nan"))
        if self.method == "maskfeat":
            target = self.model.hog(x, self.patch)[0]
            e = ((out.pred[0].float() - target.float()) ** 2).mean(-1)[hidden]
        elif self.method == "data2vec2":
            target = self.model.targets(x)[0]
            pred = out.pred[: int(hidden.sum())].float()  # the first masked copy (every copy has this mask)
            e = ((pred - target[hidden]) ** 2).sum(-1) / math.sqrt(target.shape[-1])
        elif self.method == "ijepa":
            from ..teacher import ijepa_targets

            target = ijepa_targets(self.model.teacher(x.float()).last_hidden_state)[0]
            # an explicit mask makes its hidden patches one target block, in patch order
            e = F.smooth_l1_loss(out.pred.float(), target[hidden], beta=1.0, reduction="none").mean(-1)
        elif self.method == "ibot":
            e = self.model.patch_cross_entropy(x, used)[0][hidden]
        else:
            raise ValueError(f"{self.method} has no per-patch view of its predictions in the explorer")
        err[hidden] = e.float().cpu()
        return err

    def _feature_panels(self, x, out, used, orig, info):
        err = self.feature_errors(x, out, used)
        top = float(np.nanmax(err.numpy())) if torch.isfinite(err).any() else 1.0
        scaled = (err / max(top, 1e-12)).numpy().reshape(self.grid)
        heat = _colormap(scaled)
        panels = [_grid_picture(heat, self.patch, self.scale)]
        gray = orig[0].mean(0).numpy()  # H, W in [0, 1]
        heat_px = heat.repeat(self.patch, 0).repeat(self.patch, 1)
        hid_px = np.isfinite(scaled).repeat(self.patch, 0).repeat(self.patch, 1)[..., None]
        over = np.where(hid_px, 0.45 * gray[..., None] + 0.55 * heat_px, gray[..., None])
        panels.append(_grid_picture(over, 1, self.scale))
        info["errors"] = [None if not math.isfinite(v) else round(v, 6) for v in err.tolist()]
        info["mean_error"] = round(float(err[torch.isfinite(err)].mean()), 6)
        target = FEATURE_TARGET.get(self.method, "features")
        note = (f"{self.method} predicts {target}, not pixels: error of its prediction at the "
                f"{info['hidden']} hidden patches, mean {info['mean_error']:.4f}, max {top:.4f}")
        return panels, note

    # ---- attention ----------------------------------------------------------------------------
    @torch.no_grad()
    def attention_map(self, x: torch.Tensor, block: int = -1) -> tuple[torch.Tensor, str]:
        """(heads, h, w) attention of ``block`` (0-based, negative from the end) and what it is: the cls
        token's attention to every patch, or for an encoder without a cls token the mean attention each
        patch receives (over all queries)."""
        from ..viz import attention_maps

        enc = self.encoder
        depth = self.depth
        if depth and not -depth <= int(block) < depth:
            raise ValueError(f"block must be between 1 and {depth} (this encoder has {depth} blocks)")
        if getattr(enc, "cls_token", None) is not None:
            return attention_maps(enc, x, int(block))[0], "cls-to-patch attention"
        if not depth:  # Swin: windowed attention only (its encoder says so)
            enc(x, output_attentions=True)
            raise ValueError(f"{type(enc).__name__} returns no attention maps")
        out = enc(x, output_attentions=True)
        att = out.attentions[int(block)]  # (1, heads, T, T)
        prefix = att.shape[-1] - self.num_patches
        return (att[0, :, prefix:, prefix:].mean(1).reshape(-1, *self.grid).float(),
                "mean attention each patch receives (no cls token)")

    def attention(self, x: torch.Tensor, block: int = -1, head: str | int = "mean", alpha: float = 0.55) -> dict:
        """The attention of one block and head over the image (an overlay picture) and the map's values."""
        maps, what = self.attention_map(x, block)
        heads = maps.shape[0]
        if str(head) == "mean":
            amap, head_name = maps.mean(0), "mean of heads"
        else:
            try:
                h = int(head)
            except ValueError:
                raise ValueError(f"head must be 'mean' or 1 to {heads}, got {head!r}") from None
            if not 1 <= h <= heads:
                raise ValueError(f"head must be 'mean' or 1 to {heads} (this block has {heads} heads), got {h}")
            amap, head_name = maps[h - 1], f"head {h}"
        from ..viz import denormalize

        scaled = (amap / amap.max().clamp_min(1e-12)).numpy()
        heat = _colormap(scaled, "inferno").repeat(self.patch, 0).repeat(self.patch, 1)
        gray = denormalize(x.float(), self.mean, self.std)[0].mean(0).numpy()[..., None]
        over = (1 - alpha) * gray + alpha * heat
        blk = (self.depth + int(block) if int(block) < 0 else int(block)) + 1
        return {"picture": _grid_picture(over, 1, self.scale), "map": amap.tolist(),
                "note": f"{what} of block {blk} of {self.depth}, {head_name} (each map scaled to its own max)",
                "info": {"block": blk, "head": head_name, "heads": heads, "what": what, "map": amap.tolist()}}

    # ---- neighbours ---------------------------------------------------------------------------
    def feature_pool(self) -> str:
        from ..eval.features import has_cls_token

        return "cls" if has_cls_token(self.model) else "mean"

    def train_features(self, progress: bool = True):
        """(encoder features, raw pixels, labels) of the training split, computed once and kept."""
        from ..eval.features import extract_features
        from ..eval.folders import pixel_features

        with self._lock:
            if self._features is None:
                ds, _ = self.split("train")
                feats, labels = extract_features(self.model, ds, self.feature_pool(), 512, "cpu", 0, progress,
                                                 "training-image features")
                raw, _ = pixel_features(ds)
                self._features = (feats, raw, labels)
        return self._features

    @torch.no_grad()
    def neighbours(self, x: torch.Tensor, k: int = 8, progress: bool = True) -> dict:
        """The ``k`` nearest training images under the encoder and under raw pixels (cosine)."""
        import torch.nn.functional as F

        from ..eval.features import has_cls_token, pool
        from ..eval.render import nearest
        from ..viz import denormalize

        feats, raw, labels = self.train_features(progress)
        if not 1 <= int(k) <= len(feats):
            raise ValueError(f"k must be between 1 and {len(feats)} (the training images), got {k}")
        ds, classes = self.split("train")
        q_enc = pool(self.model.encode(x), self.feature_pool(), has_cls_token(self.model)).float()
        q_raw = x.flatten(1).float()
        out = {"note": f"{int(k)} nearest of {len(feats)} training images (cosine similarity), features computed "
                       "once and kept", "info": {}}
        for name, train, q in (("encoder", feats, q_enc), ("pixels", raw, q_raw)):
            idx = nearest(train, q, int(k))[0]
            sims = (F.normalize(train[idx].float(), dim=1) @ F.normalize(q, dim=1)[0]).tolist()
            items = []
            for i, s in zip(idx.tolist(), sims):
                img = denormalize(ds[i][0].unsqueeze(0).float(), self.mean, self.std)[0]
                items.append((enlarge(img, max(1, self.scale // 2)), f"{classes[int(labels[i])]} ({s:.2f}) #{i}"))
            out[name] = items
            out["info"][name] = {"indices": idx.tolist(), "similarities": [round(s, 6) for s in sims],
                                 "classes": [classes[int(labels[i])] for i in idx.tolist()]}
        return out

    # ---- the run ------------------------------------------------------------------------------
    def run_summary(self) -> dict:
        """``config`` (text), ``curves`` (picture or None), ``report`` (Markdown or None), ``report_png``
        (path or None) and a ``note``."""
        cfg = getattr(self.model, "mimkit_config", None) or {}
        run = self.run_dir
        out = {"config": json.dumps(cfg, indent=2, default=str), "config_name": "config.json (the model's)",
               "curves": None, "report": None, "report_png": None}
        if run is None:
            out["note"] = (f"`{shown_path(self.checkpoint)}` is a model, not a run directory: the model's config is shown; no "
                           "curves or report (give the run directory to see them)")
            return out
        shown = shown_path(run)
        out["config"], out["config_name"] = (run / "config.yaml").read_text(), f"{shown_path(run / 'config.yaml')}"
        said = [f"run `{shown}`"]
        curves = self.curves()
        if curves is not None:
            out["curves"] = curves
        else:
            said.append("no logs/metrics.csv with losses")
        rep = run / "report"
        if (rep / "report.md").is_file():
            out["report"] = (rep / "report.md").read_text()
            if (rep / "report.png").is_file():
                out["report_png"] = str(rep / "report.png")
        else:
            said.append(f"no quality report yet (`mimkit report --checkpoint {shown}` writes one)")
        out["note"] = "; ".join(said)
        return out

    def curves(self) -> np.ndarray | None:
        """The run's loss and validation curves (train and val losses per step) as a picture."""
        from ..train.callbacks import read_metrics
        from ..viz import pyplot

        series = read_metrics(self.run_dir / "logs" / "metrics.csv") if self.run_dir else {}
        series = {k: v for k, v in series.items() if "loss" in k and v[0]}
        if not series:
            return None
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
        for name, (xs, ys) in sorted(series.items()):
            ax.plot(xs, ys, label=name, marker="o" if len(xs) < 30 else None, markersize=3)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(f"{self.run_dir.name}: losses", fontsize=9)
        fig.tight_layout()
        return figure_to_array(fig)
