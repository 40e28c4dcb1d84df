"""What the official-format converters share: reading a file safely, unwrapping state dicts, the
architecture facts a state dict does not store (head counts), and resizing position tensors as the
reference code does."""
from __future__ import annotations

import math
import os
import re

import torch

# official encoder head counts by width (ViT-Ti/S/B/L/H/g as the reference models define them)
HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16, 1408: 16}
METHODS = ("mae", "beit", "simmim", "ijepa", "data2vec2")


def read_official(path_or_obj, method: str | None = None, trust_checkpoint: bool = False):
    """The top-level object of an official file (a path to ``.pth``/``.pt``/``.pth.tar``/``.safetensors``),
    or ``path_or_obj`` itself when it is already a dict. Pickles are read weights-only with the
    globals that ``method``'s files hold (every official format's when ``method`` is None)."""
    if isinstance(path_or_obj, dict):
        return path_or_obj
    path = os.fspath(path_or_obj)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.endswith(".safetensors"):
        from ...files import read_safetensors

        return read_safetensors(path)
    from ...files import official_globals, read_torch_checkpoint

    obj = read_torch_checkpoint(path, trust_checkpoint=trust_checkpoint, extra_globals=official_globals(method))
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a dict of state dicts; not an official checkpoint")
    return obj


def tensors(d: dict, strip=("module.",)) -> dict[str, torch.Tensor]:
    """The tensor entries of a state dict, with DDP's ``module.`` (and other ``strip``) prefixes removed."""
    out = {}
    for k, v in d.items():
        if not isinstance(v, torch.Tensor):
            continue
        for prefix in strip:
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def sub(sd: dict, prefix: str) -> dict:
    """The entries under ``prefix`` with the prefix removed."""
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def count(sd: dict, prefix: str) -> int:
    """How many ``{prefix}.{i}.`` blocks the state dict holds (their indices must be 0..n-1)."""
    idx = {int(m.group(1)) for k in sd for m in [re.match(rf"{re.escape(prefix)}\.(\d+)\.", k)] if m}
    if idx and idx != set(range(len(idx))):
        raise ValueError(f"{prefix} indices are not contiguous: {sorted(idx)}")
    return len(idx)


def square_side(n: int, what: str) -> int:
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"{what} has {n} patch positions, not a square grid; pass img_size (--set img_size=[H,W])")
    return side


def heads(width: int, overrides: dict, key: str = "num_heads", per: int = 64) -> int:
    """A head count the state dict does not store: ``overrides[key]``, else the official count for a
    standard width, else ``width // per``."""
    if key in overrides:
        return overrides.pop(key)
    return HEADS.get(width, max(1, width // per))


def mlp_ratio(fc1: torch.Tensor, width: int) -> float:
    return fc1.shape[0] / width


def is_sincos(pe: torch.Tensor, grid, cls_token: bool) -> bool:
    """Whether ``pe`` (1, [1+]h*w, D) is the fixed 2-D sin-cos table of the MAE-family references."""
    from ...ops import sincos_pos_embed_2d

    return pe.shape[-1] % 4 == 0 and torch.allclose(
        pe.float(), sincos_pos_embed_2d(pe.shape[-1], tuple(grid), cls_token=cls_token), atol=1e-5)


def place_pos_embed(value: torch.Tensor, own: torch.Tensor, old_grid, new_grid, num_prefix: int,
                    fixed: bool) -> torch.Tensor:
    """A position table saved for ``old_grid`` for a model built for ``new_grid``: unchanged on the same
    grid; else the model's recomputed table when ``fixed`` (sin-cos), else bicubic 2-D interpolation."""
    from ...ops import resize_pos_embed

    if tuple(old_grid) == tuple(new_grid):
        return value
    return own.clone() if fixed else resize_pos_embed(value, tuple(old_grid), tuple(new_grid), num_prefix=num_prefix)


def _geometric_axis(src: int, dst: int) -> tuple[list[float], list[float]]:
    """The BEiT/SimMIM reference's sample positions along one axis of a relative position table of side
    ``src`` resized to ``dst`` (both odd, 2*w - 1): source offsets spaced geometrically so the table's
    far end reaches the target's, target offsets on the integer grid."""
    left, right = 1.01, 1.5
    q = left
    while right - left > 1e-6:
        q = (left + right) / 2.0
        gp = (1.0 - q ** (src // 2)) / (1.0 - q)
        if gp > dst // 2:
            right = q
        else:
            left = q
    dis, cur = [], 1.0
    for i in range(src // 2):
        dis.append(cur)
        cur += q ** (i + 1)
    xs = [-d for d in reversed(dis)] + [0.0] + dis
    t = dst // 2
    return xs, [float(v) for v in range(-t, t + 1)]


def resize_rel_pos_table_reference(table: torch.Tensor, old_window, new_window, extra: int = 3) -> torch.Tensor:
    """Resize a relative position bias table ((2h-1)*(2w-1) [+ extra], heads) from the patch grid
    ``old_window`` to ``new_window`` as microsoft/unilm BEiT and microsoft/SimMIM do when they fine-tune
    at another resolution: geometric source offsets, bicubic spline interpolation per head (scipy's
    ``interp2d(kind='cubic')`` there; the same spline through ``RectBivariateSpline`` here), the
    ``extra`` cls entries kept. Rectangular grids are resized per axis (the reference handles squares)."""
    old_window, new_window = tuple(old_window), tuple(new_window)
    if old_window == new_window:
        return table
    try:
        from scipy.interpolate import RectBivariateSpline
    except ImportError:  # pragma: no cover - scipy comes with scikit-learn
        raise ValueError("resizing relative position tables as the reference does needs scipy: pip install scipy") from None
    import numpy as np

    sh, sw = 2 * old_window[0] - 1, 2 * old_window[1] - 1
    dh, dw = 2 * new_window[0] - 1, 2 * new_window[1] - 1
    ys, dys = _geometric_axis(sh, dh)
    xs, dxs = _geometric_axis(sw, dw)
    grid, rest = table[: sh * sw], table[sh * sw:]
    if rest.shape[0] != extra:
        raise ValueError(f"relative position table has {table.shape[0]} rows, expected {sh}x{sw} + {extra} for "
                         f"a {old_window[0]}x{old_window[1]} grid")
    cols = []
    for h in range(table.shape[1]):
        z = grid[:, h].reshape(sh, sw).float().numpy().astype(np.float64)
        f = RectBivariateSpline(np.array(ys), np.array(xs), z, kx=3, ky=3, s=0)
        cols.append(torch.from_numpy(f(np.array(dys), np.array(dxs)).astype(np.float32)).reshape(-1, 1))
    return torch.cat([torch.cat(cols, dim=1).to(table.dtype), rest], dim=0)


def rel_table_window(rows: int, extra: int = 3) -> tuple[int, int]:
    """The square patch grid of a relative position table with ``rows`` = (2w-1)^2 + extra."""
    side = math.isqrt(rows - extra)
    if side * side != rows - extra or side % 2 == 0:
        raise ValueError(f"relative position table with {rows} rows is not (2w-1)^2 + {extra} for a square grid")
    return (side + 1) // 2, (side + 1) // 2


def target_size(img_size, overrides: dict, file_size):
    """The image size to build for: ``img_size`` (``--img-size``), else ``--set img_size``, else the file's."""
    from ...ops import to_2tuple

    size = img_size if img_size is not None else overrides.pop("img_size", None)
    overrides.pop("img_size", None)
    size = file_size if size is None else size
    return list(to_2tuple(size))


def fill_missing(out: dict, own: dict, keys, why: str, warn: bool = True) -> None:
    """Keep the freshly initialised value of mimkit keys the file does not hold (with one warning)."""
    import warnings

    missing = [k for k in keys if k not in out]
    for k in missing:
        out[k] = own[k]
    if missing and warn:
        warnings.warn(f"{why}: {', '.join(sorted({k.rsplit('.', 1)[0] for k in missing})[:4])} "
                      "freshly initialised", stacklevel=3)
