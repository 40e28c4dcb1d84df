import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mimkit.masking import (
    BlockMasking,
    CenterMasking,
    ExplicitMasking,
    RandomMasking,
    SimMIMMasking,
    build_masking,
    mask_to_noise,
    random_masking,
    shuffle_ids,
)

FAST = settings(max_examples=40, deadline=None, derandomize=True)
ratios = st.floats(min_value=0.01, max_value=0.99)
sides = st.integers(min_value=1, max_value=16)
seeds = st.integers(min_value=0, max_value=2**31 - 1)


def gen(seed):
    return torch.Generator().manual_seed(seed)


@FAST
@given(h=sides, w=sides, ratio=ratios, batch=st.integers(1, 4), seed=seeds)
def test_random_masking_count_shape_determinism(h, w, ratio, batch, seed):
    m = RandomMasking(ratio)
    L = h * w
    a = m(batch, (h, w), generator=gen(seed))
    assert a.shape == (batch, L) and a.dtype == torch.bool
    assert (a.sum(1) == L - int(L * (1 - ratio))).all()
    assert torch.equal(a, m(batch, (h, w), generator=gen(seed)))


@FAST
@given(h=sides, w=sides, ratio=ratios, seed=seeds)
def test_random_masking_matches_mae_shuffle(h, w, ratio, seed):
    """The generator's noise rule is MAE's: the same noise gives the same mask as random_masking."""
    L = h * w
    noise = torch.rand(2, L, generator=gen(seed))
    x = torch.randn(2, L, 3)
    _, mae_mask, _, _ = random_masking(x, ratio, noise=noise)
    assert torch.equal(RandomMasking(ratio).from_noise(noise).float(), mae_mask)


@FAST
@given(cells_h=st.integers(1, 6), cells_w=st.integers(1, 6), scale=st.integers(1, 4),
       patch=st.sampled_from([2, 4, 16]), ratio=ratios, batch=st.integers(1, 3), seed=seeds)
def test_simmim_masking_cells(cells_h, cells_w, scale, patch, ratio, batch, seed):
    m = SimMIMMasking(ratio, mask_patch_size=patch * scale, model_patch_size=patch)
    grid = (cells_h * scale, cells_w * scale)
    a = m(batch, grid, generator=gen(seed))
    assert a.shape == (batch, grid[0] * grid[1])
    cells = cells_h * cells_w
    # every cell is all hidden or all visible, and exactly ceil(cells * r) cells are hidden
    blocks = a.reshape(batch, cells_h, scale, cells_w, scale)
    per_cell = blocks.sum(dim=(2, 4))
    assert ((per_cell == 0) | (per_cell == scale * scale)).all()
    assert ((per_cell > 0).sum(dim=(1, 2)) == math.ceil(cells * ratio)).all()
    assert (a.sum(1) == math.ceil(cells * ratio) * scale * scale).all()
    assert torch.equal(a, m(batch, grid, generator=gen(seed)))


def test_simmim_noise_on_patch_grid_uses_top_left_patch():
    m = SimMIMMasking(0.5, mask_patch_size=8, model_patch_size=4)
    cell_noise = torch.tensor([[0.1, 0.9, 0.5, 0.2]])  # 2x2 cells; hide the 2 largest: cells 1 and 2
    expected = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]], dtype=torch.bool)
    assert torch.equal(m.from_noise(cell_noise, (4, 4)), expected.reshape(1, 16))
    patch_noise = cell_noise.reshape(1, 2, 2).repeat_interleave(2, 1).repeat_interleave(2, 2).reshape(1, 16)
    patch_noise = patch_noise + torch.rand(1, 16) * 1e-3 * (torch.arange(16) % 2 == 1)  # only non-top-left differ
    assert torch.equal(m.from_noise(patch_noise, (4, 4)), expected.reshape(1, 16))


@settings(max_examples=30, deadline=None, derandomize=True)
@given(h=st.integers(3, 16), w=st.integers(3, 16), ratio=st.floats(0.1, 0.6), min_patches=st.integers(1, 16),
       batch=st.integers(1, 3), seed=seeds)
def test_block_masking_rectangles_and_budget(h, w, ratio, min_patches, batch, seed):
    m = BlockMasking(ratio=ratio, min_num_patches=min_patches)
    rects = []
    a = m(batch, (h, w), generator=gen(seed), rects=rects)
    target = int(round(h * w * ratio))
    assert a.shape == (batch, h * w)
    assert (a.sum(1) <= target).all()  # never more than the target
    for row, rs in zip(a, rects):
        union = torch.zeros(h, w, dtype=torch.bool)
        for top, left, bh, bw in rs:
            # rectangles strictly smaller than the grid, inside it, each adding >= 1 new patch
            assert 1 <= bh < h and 1 <= bw < w and top + bh <= h and left + bw <= w
            before = int(union.sum())
            union[top:top + bh, left:left + bw] = True
            assert int(union.sum()) > before
        assert torch.equal(union.reshape(-1), row)
    assert torch.equal(a, m(batch, (h, w), generator=gen(seed)))


@settings(max_examples=30, deadline=None, derandomize=True)
@given(side=st.integers(10, 16), min_patches=st.integers(2, 16), seed=seeds)
def test_block_masking_reaches_min_patches(side, min_patches, seed):
    """With room for every rectangle (BEiT-like settings: target >= 2*min on a 10-16 side grid) each
    sample hides at least ``min_num_patches`` patches and close to the target."""
    target = max(2 * min_patches, int(side * side * 0.4))
    m = BlockMasking(num_masking_patches=target, min_num_patches=min_patches)
    a = m(16, (side, side), generator=gen(seed))
    counts = a.sum(1)
    assert (counts >= min_patches).all() and (counts <= target).all()
    assert counts.float().mean() >= 0.8 * target


def test_block_masking_reference_numbers():
    """The BEiT reference setting (14x14, 75 patches, min 16) hides ~75 patches on average."""
    a = BlockMasking(num_masking_patches=75, min_num_patches=16)(200, (14, 14), generator=gen(0))
    assert a.sum(1).max() <= 75 and a.sum(1).float().mean() > 70


@FAST
@given(h=sides, w=sides, ratio=ratios, batch=st.integers(1, 3))
def test_center_masking(h, w, ratio, batch):
    a = CenterMasking(ratio)(batch, (h, w)).reshape(batch, h, w)
    rows = a[0].any(1).nonzero().flatten()
    cols = a[0].any(0).nonzero().flatten()
    # one filled rectangle, centred (offsets on both sides differ by at most one), same for all images
    assert a[0].sum() == len(rows) * len(cols) >= 1
    assert abs(int(rows[0]) - (h - 1 - int(rows[-1]))) <= 1 and abs(int(cols[0]) - (w - 1 - int(cols[-1]))) <= 1
    assert len(rows) == max(1, min(h, round(h * math.sqrt(ratio))))
    assert (a == a[:1]).all()


def test_explicit_masking_shapes():
    m2d = torch.zeros(3, 4, dtype=torch.bool)
    m2d[0, :2] = True
    for spec in (m2d, m2d.reshape(-1), m2d.reshape(1, -1)):
        out = ExplicitMasking(spec)(2, (3, 4))
        assert out.shape == (2, 12) and out.sum() == 4
    per_image = torch.rand(2, 12) > 0.5
    assert torch.equal(ExplicitMasking(per_image)(2, (3, 4)), per_image)
    with pytest.raises(ValueError, match="does not fit"):
        ExplicitMasking(torch.zeros(5, dtype=torch.bool))(2, (3, 4))
    with pytest.raises(ValueError, match="does not fit"):
        ExplicitMasking(per_image)(3, (3, 4))


def test_generator_on_cpu_for_any_device_and_device_argument():
    g = torch.Generator().manual_seed(0)
    assert RandomMasking(0.5)(2, (4, 4), generator=g, device="cpu").device.type == "cpu"


def test_mask_to_noise_keeps_visible_first():
    mask = torch.tensor([[1, 0, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    noise, keep = mask_to_noise(mask, generator=gen(0))
    ids_keep, _, removed = shuffle_ids(noise, keep)
    assert keep == 2 and torch.equal(removed.bool(), mask)
    assert not mask.gather(1, ids_keep).any()


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5, "half"])
@pytest.mark.parametrize("cls", [RandomMasking, SimMIMMasking, CenterMasking])
def test_ratio_outside_open_interval_is_rejected(cls, ratio):
    with pytest.raises(ValueError, match="between 0 and 1"):
        cls(ratio)


def test_block_ratio_rejected_and_bad_block_options():
    with pytest.raises(ValueError, match="between 0 and 1"):
        BlockMasking(ratio=1.0)
    with pytest.raises(ValueError, match="num_masking_patches"):
        BlockMasking(num_masking_patches=0)
    with pytest.raises(ValueError, match="exceeds"):
        BlockMasking(num_masking_patches=50)(1, (7, 7))


def test_mask_patch_not_multiple_of_model_patch():
    with pytest.raises(ValueError, match="multiple of the model patch size 16.*mask_patch_size=16 or 32"):
        SimMIMMasking(0.6, mask_patch_size=24, model_patch_size=16)
    with pytest.raises(ValueError, match="multiple of the model patch size 4"):
        SimMIMMasking(0.6, mask_patch_size=2, model_patch_size=4)


def test_image_not_divisible_by_mask_patch():
    m = SimMIMMasking(0.6, mask_patch_size=32, model_patch_size=16)
    with pytest.raises(ValueError, match="48x48 px is not divisible by mask_patch_size 32"):
        m(2, (3, 3))
    with pytest.raises(ValueError, match="not divisible by mask_patch_size"):
        m.check_grid((4, 3))


def test_build_masking_by_name():
    assert isinstance(build_masking("simmim", ratio=0.5, patch_size=4, mask_patch_size=8), SimMIMMasking)
    assert build_masking("simmim", ratio=0.5, patch_size=4, mask_patch_size=8).scale == 2
    assert build_masking("block", ratio=0.3).ratio == 0.3
    assert build_masking("block", ratio=0.3, num_masking_patches=10).num_masking_patches == 10
    with pytest.raises(ValueError, match="unknown masking 'blocks'"):
        build_masking("blocks")
    with pytest.raises(ValueError, match="bad options for masking 'center'"):
        build_masking("center", mask_patch_size=3)
