import math

import pytest
import torch

import mimkit
from mimkit.masking import BlockMasking
from mimkit.methods.maskfeat import MaskFeat
from mimkit.targets import HOGTarget


def naive_hog(img, bins, cell, block=1):
    """Straightforward loop implementation of the documented HOG (one image (C, H, W))."""
    c, h, w = img.shape
    pad = torch.nn.functional.pad(img[None].double(), (1, 1, 1, 1), mode="reflect")[0]
    hist = torch.zeros(c, bins, h // cell, w // cell, dtype=torch.float64)
    for ch in range(c):
        for i in range(h):
            for j in range(w):
                gx = pad[ch, i + 1, j + 2] - pad[ch, i + 1, j]
                gy = pad[ch, i + 2, j + 1] - pad[ch, i, j + 1]
                mag = math.hypot(gx, gy)
                ang = math.atan2(gy, gx) % math.pi
                b = min(int(ang // (math.pi / bins)), bins - 1)
                hist[ch, b, i // cell, j // cell] += mag
    for ch in range(c):
        for bi in range(0, h // cell, block):
            for bj in range(0, w // cell, block):
                blk = hist[ch, :, bi:bi + block, bj:bj + block]
                n = blk.pow(2).sum().sqrt()
                if n > 1e-12:
                    hist[ch, :, bi:bi + block, bj:bj + block] = blk / n
    return hist


@pytest.mark.parametrize("c,bins,cell,block", [(1, 9, 4, 1), (3, 9, 2, 2), (2, 6, 4, 2)])
def test_hog_matches_naive_implementation(c, bins, cell, block):
    img = torch.rand(c, 16, 16)
    ours = HOGTarget(c, bins, cell, block).histograms(img[None])[0]
    ref = naive_hog(img, bins, cell, block)
    assert ours.shape == ref.shape
    # float32 vs float64 may flip a pixel whose angle sits exactly on a bin edge; allow none here
    assert (ours.double() - ref).abs().max() < 1e-4


def test_hog_orientation_and_normalisation():
    hog = HOGTarget(1, 9, 4)
    vertical_edge = torch.zeros(1, 1, 8, 8)
    vertical_edge[..., 4:] = 1.0  # gradient along x -> angle 0 -> bin 0
    h = hog.histograms(vertical_edge)
    assert h[0, 0, :, 0, 1].argmax() == 0 and h[0, 0, 0, 0, 1] == pytest.approx(1.0)
    horizontal_edge = vertical_edge.transpose(-1, -2)  # gradient along y -> angle pi/2 -> bin 4
    assert hog.histograms(horizontal_edge)[0, 0, :, 1, 0].argmax() == 4
    # every cell with any gradient is L2-normalised; a flat image gives zeros
    x = torch.rand(2, 1, 16, 16)
    norms = hog.histograms(x).norm(dim=2)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    assert hog.histograms(torch.full((1, 1, 8, 8), 0.3)).abs().max() == 0
    # contrast invariance: scaling the image does not change normalised histograms
    assert torch.allclose(hog.histograms(3 * x), hog.histograms(x), atol=1e-5)


def test_hog_patch_layout_and_dims():
    hog = HOGTarget(3, 9, 8)
    x = torch.rand(2, 3, 32, 48)
    t = hog(x, 16)
    assert hog.dim(16) == 108 and t.shape == (2, 2 * 3, 108)
    hist = hog.histograms(x)  # (N, C, bins, 4, 6)
    # patch (row 1, col 2), cell (row 0, col 1), channel 2, bin 5 -> (0*2+1)*27 + 2*9 + 5
    assert t[1, 1 * 3 + 2, (0 * 2 + 1) * 27 + 2 * 9 + 5] == hist[1, 2, 5, 2, 5]
    g = HOGTarget(3, 9, 8, gaussian_window=16)
    assert g(x, 16).shape == t.shape and not torch.allclose(g(x, 16), t)


def test_maskfeat_tiny_recipe_and_loss_on_hidden_patches():
    model = mimkit.create("maskfeat_vit_tiny_patch4_28", embed_dim=32, depth=1, num_heads=2)
    assert isinstance(model, MaskFeat) and isinstance(model.masking, BlockMasking)
    x = torch.rand(3, 1, 28, 28)
    mask = torch.zeros(3, 49, dtype=torch.bool)
    mask[:, 5:25] = True
    out = model(x, mask=mask)
    target = model.hog(x, 4)
    assert out.pred.shape == (3, 49, 9) == target.shape
    manual = ((out.pred - target) ** 2).mean(-1)[mask].mean()
    assert torch.allclose(out.loss, manual, atol=1e-6)
    # only hidden patches carry gradient to the prediction
    pred = out.pred.detach().requires_grad_()
    from mimkit.losses import masked_mse

    masked_mse(pred, target, mask.float()).backward()
    assert pred.grad[~mask].abs().max() == 0 and pred.grad[mask].abs().max() > 0
    default = model(x)
    assert default.mask.sum(1).le(20).all() and default.mask.sum(1).ge(4).all()  # block mask, <= 0.4 * 49


def test_maskfeat_base_recipe_dims():
    model = mimkit.create("maskfeat_vit_base_patch16", depth=1)
    assert model.head.out_features == 108 and model.masking.ratio == 0.4
    assert model.hog.cell == 8 and model.hog.bins == 9


def test_maskfeat_loss_goes_down():
    torch.manual_seed(0)
    model = mimkit.create("maskfeat_vit_tiny_patch4_28", embed_dim=32, depth=2, num_heads=2)
    x = torch.rand(8, 1, 28, 28)
    mask = model.masking(8, (7, 7), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    first = model(x, mask=mask).loss.item()
    for _ in range(25):
        loss = model(x, mask=mask).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.6 * first


def test_maskfeat_other_maskings_and_errors():
    with pytest.raises(ValueError, match="pass masking_kwargs=None"):  # the recipe's block options
        mimkit.create("maskfeat_vit_tiny_patch4_28", masking="simmim")
    m = mimkit.create("maskfeat_vit_tiny_patch4_28", embed_dim=32, depth=1, num_heads=2, masking="simmim",
                      masking_kwargs=None, mask_ratio=0.6, mask_patch_size=4)
    assert (m(torch.rand(2, 1, 28, 28)).mask.sum(1) == 30).all()
    with pytest.raises(ValueError, match="HOG cell 8 does not divide the patch size 4"):
        mimkit.create("maskfeat_vit_tiny_patch4_28", hog_cell=8)
    assert not hasattr(m, "reconstruct")  # features, not pixels: trainers and viz skip reconstructions
    assert hasattr(mimkit.create("simmim_vit_tiny_patch4_28", embed_dim=32, depth=1, num_heads=2), "reconstruct")
    with pytest.raises(ValueError, match="unknown option 'target'"):
        mimkit.create("maskfeat_vit_tiny_patch4_28", target="pixels")
    with pytest.raises(ValueError, match="hog_bins must be a positive integer"):
        mimkit.create("maskfeat_vit_tiny_patch4_28", hog_bins=0)
