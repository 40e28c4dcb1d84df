"""iBOT: the head and the loss against transcriptions of the reference (bytedance/ibot ``models/head.py``
``iBOTHead``, ``main_ibot.py`` ``iBOTLoss``; the reference code is not imported), its masking against
``loader.py``'s ``ImageFolderMask``, views seeded per image and view, training steps with the EMA teacher
and the frozen prototypes, a run through the engine, and the centre averaged over two processes."""
import math
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mimkit
from mimkit.data.tensors import TensorImages
from mimkit.data.transforms import seeded_uniforms
from mimkit.data.views import MultiCropAugment, MultiCropImages, _gaussian_blur, _hue
from mimkit.heads import IBOTHead, ibot_head_state_dict
from mimkit.losses import IBOTLoss, warmup_temperature
from mimkit.masking import IBOTMasking
from mimkit.methods.ibot import cosine_momentum, interpolate_pos_embed

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(embed_dim=32, depth=2, num_heads=2, out_dim=64, hidden_dim=32, bottleneck_dim=16, local_crops_number=2)

pytestmark = pytest.mark.usefixtures("one_thread")


# ---- the reference, transcribed ---------------------------------------------------------------------
class RefIBOTHead(nn.Module):
    """bytedance/ibot ``models/head.py``: ``DINOHead`` + ``iBOTHead`` with ``norm=None``, ``act='gelu'``,
    ``last_norm=None``, ``bottleneck_dim > 0`` (the ViT-S/B commands), torch's legacy ``weight_norm``."""

    def __init__(self, in_dim, out_dim, patch_out_dim=8192, nlayers=3, hidden_dim=2048, bottleneck_dim=256,
                 norm_last_layer=True, shared_head=False):
        super().__init__()
        layers = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
        for _ in range(nlayers - 2):
            layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
        layers.append(nn.Linear(hidden_dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.nn.utils.weight_norm is deprecated; the reference uses it
            self.last_layer = nn.utils.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
            self.last_layer.weight_g.data.fill_(1)
            if norm_last_layer:
                self.last_layer.weight_g.requires_grad = False
            if not shared_head:
                self.last_layer2 = nn.utils.weight_norm(nn.Linear(bottleneck_dim, patch_out_dim, bias=False))
                self.last_layer2.weight_g.data.fill_(1)
                if norm_last_layer:
                    self.last_layer2.weight_g.requires_grad = False
            else:
                self.last_layer2 = self.last_layer

    def forward(self, x):
        if len(x.shape) == 2:
            x = self.mlp(x)
            x = nn.functional.normalize(x, dim=-1, p=2)
            return self.last_layer(x)
        x = self.mlp(x)
        x = nn.functional.normalize(x, dim=-1, p=2)
        return self.last_layer(x[:, 0]), self.last_layer2(x[:, 1:])


class RefIBOTLoss(nn.Module):
    """bytedance/ibot ``main_ibot.py`` ``iBOTLoss.forward`` + ``update_center`` for one process (the
    all-reduce of a one-process group is the identity, its world size 1); temperatures given directly
    instead of looked up by epoch."""

    def __init__(self, out_dim, patch_out_dim, ngcrops, nlcrops, student_temp=0.1, center_momentum=0.9,
                 center_momentum2=0.9, lambda1=1.0, lambda2=1.0):
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum, self.center_momentum2 = center_momentum, center_momentum2
        self.ngcrops, self.nlcrops, self.ncrops = ngcrops, nlcrops, ngcrops + nlcrops
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.register_buffer("center2", torch.zeros(1, 1, patch_out_dim))
        self.lambda1, self.lambda2 = lambda1, lambda2

    def forward(self, student_output, teacher_output, student_local_cls, student_mask, temp, temp2):
        student_cls, student_patch = student_output
        teacher_cls, teacher_patch = teacher_output
        if student_local_cls is not None:
            student_cls = torch.cat([student_cls, student_local_cls])
        student_cls = student_cls / self.student_temp
        student_cls_c = student_cls.chunk(self.ncrops)
        student_patch = student_patch / self.student_temp
        student_patch_c = student_patch.chunk(self.ngcrops)
        teacher_cls_c = F.softmax((teacher_cls - self.center) / temp, dim=-1)
        teacher_cls_c = teacher_cls_c.detach().chunk(self.ngcrops)
        teacher_patch_c = F.softmax((teacher_patch - self.center2) / temp2, dim=-1)
        teacher_patch_c = teacher_patch_c.detach().chunk(self.ngcrops)
        total_loss1, n_loss_terms1 = 0, 0
        total_loss2, n_loss_terms2 = 0, 0
        for q in range(len(teacher_cls_c)):
            for v in range(len(student_cls_c)):
                if v == q:
                    loss2 = torch.sum(-teacher_patch_c[q] * F.log_softmax(student_patch_c[v], dim=-1), dim=-1)
                    mask = student_mask[v].flatten(-2, -1)
                    loss2 = torch.sum(loss2 * mask.float(), dim=-1) / mask.sum(dim=-1).clamp(min=1.0)
                    total_loss2 += loss2.mean()
                    n_loss_terms2 += 1
                else:
                    loss1 = torch.sum(-teacher_cls_c[q] * F.log_softmax(student_cls_c[v], dim=-1), dim=-1)
                    total_loss1 += loss1.mean()
                    n_loss_terms1 += 1
        total_loss1 = total_loss1 / n_loss_terms1 * self.lambda1
        total_loss2 = total_loss2 / n_loss_terms2 * self.lambda2
        total_loss = dict(cls=total_loss1, patch=total_loss2, loss=total_loss1 + total_loss2)
        self.update_center(teacher_cls, teacher_patch)
        return total_loss

    @torch.no_grad()
    def update_center(self, teacher_cls, teacher_patch):
        cls_center = torch.sum(teacher_cls, dim=0, keepdim=True)
        cls_center = cls_center / (len(teacher_cls) * 1)
        self.center = self.center * self.center_momentum + cls_center * (1 - self.center_momentum)
        patch_center = torch.sum(teacher_patch.mean(1), dim=0, keepdim=True)
        patch_center = patch_center / (len(teacher_patch) * 1)
        self.center2 = self.center2 * self.center_momentum2 + patch_center * (1 - self.center_momentum2)


def ref_get_pred_ratio(rng, pred_ratio, pred_ratio_var):
    """``ImageFolderMask.get_pred_ratio`` with list arguments, drawing from ``rng``."""
    out = []
    for prm, prv in zip(pred_ratio, pred_ratio_var):
        assert prm >= prv
        out.append(rng.uniform(prm - prv, prm + prv) if prv > 0 else prm)
    return rng.choice(out)


def ref_block_mask(rng, H, W, high, log_aspect_ratio=(math.log(0.3), math.log(1 / 0.3))):
    """``ImageFolderMask.__getitem__``'s ``pred_shape == 'block'`` loop for one view, drawing from ``rng``."""
    mask = np.zeros((H, W), dtype=bool)
    mask_count = 0
    while mask_count < high:
        max_mask_patches = high - mask_count
        delta = 0
        for attempt in range(10):
            low = (min(H, W) // 3) ** 2
            target_area = rng.uniform(low, max_mask_patches)
            aspect_ratio = math.exp(rng.uniform(*log_aspect_ratio))
            h = int(round(math.sqrt(target_area * aspect_ratio)))
            w = int(round(math.sqrt(target_area / aspect_ratio)))
            if w < W and h < H:
                top = rng.randint(0, H - h)
                left = rng.randint(0, W - w)
                num_masked = mask[top: top + h, left: left + w].sum()
                if 0 < h * w - num_masked <= max_mask_patches:
                    for i in range(top, top + h):
                        for j in range(left, left + w):
                            if mask[i, j] == 0:
                                mask[i, j] = 1
                                delta += 1
            if delta > 0:
                break
        if delta == 0:
            break
        else:
            mask_count += delta
    return mask


def perturbed(module, scale=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return module


# ---- (a) head -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("shared_head,norm_last_layer", [(True, False), (False, True)])
def test_head_equals_the_reference_with_its_weights(shared_head, norm_last_layer):
    ref = perturbed(RefIBOTHead(24, 40, patch_out_dim=56, hidden_dim=48, bottleneck_dim=16,
                                norm_last_layer=norm_last_layer, shared_head=shared_head))
    ours = IBOTHead(24, 40, patch_out_dim=56, hidden_dim=48, bottleneck_dim=16, norm_last_layer=norm_last_layer,
                    shared_head=shared_head)
    ours.load_state_dict(ibot_head_state_dict(ref.state_dict(), shared_head), strict=True)  # every key mapped
    x = torch.randn(3, 1 + 9, 24)
    rc, rp = ref(x)
    oc, op = ours(x)
    assert op.shape == (3, 9, 40 if shared_head else 56)
    assert (rc - oc).abs().max() < 1e-6 and (rp - op).abs().max() < 1e-6
    assert (ref(x[:, 0]) - ours(x[:, 0])).abs().max() < 1e-6  # (N, D): the class-token path
    # the gains (weight_g) were perturbed away from 1, so the weight norm is really exercised
    assert (ours.last_layer.parametrizations.weight.original0 - 1).abs().max() > 0.01
    gains = [n for n, p in ours.named_parameters() if n.endswith("original0")]
    assert len(gains) == (1 if shared_head else 2)
    assert all(p.requires_grad == (not norm_last_layer) for n, p in ours.named_parameters() if n.endswith("original0"))
    # the reference's init: trunc-normal(0.02) MLP weights with zero biases, gains at 1
    fresh = IBOTHead(64, 32, hidden_dim=256, bottleneck_dim=16)
    w = fresh.mlp[0].weight.detach()
    assert abs(float(w.std()) - 0.02) < 0.002 and not fresh.mlp[0].bias.any()  # torch's default: std 0.072
    assert torch.equal(fresh.last_layer.parametrizations.weight.original0, torch.ones(32, 1))


# ---- (b) loss ----------------------------------------------------------------------------------------
def _loss_inputs(dtype, B=4, L=9, K=48, K2=40, G=2, NL=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype) * 3  # noqa: E731
    student = (r(G * B, K), r(G * B, L, K2))
    teacher = (r(G * B, K), r(G * B, L, K2))
    local = r(NL * B, K)
    masks = [torch.rand(B, 3, 3, generator=g) < 0.4 for _ in range(G)]
    masks[1][0] = False  # an image whose view hides nothing (the count is clamped to 1)
    return student, teacher, local, masks


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_loss_and_new_centres_equal_the_reference(dtype, tol):
    B, K, K2, G, NL = 4, 48, 40, 2, 3
    student, teacher, local, masks = _loss_inputs(dtype)
    ref = RefIBOTLoss(K, K2, G, NL, lambda1=0.7, lambda2=1.3).to(dtype)
    ours = IBOTLoss(K, K2, lambda1=0.7, lambda2=1.3).to(dtype)
    g = torch.Generator().manual_seed(1)
    for buf in ("center", "center2"):  # centres from an earlier step
        c = torch.randn(getattr(ref, buf).shape, generator=g, dtype=dtype)
        setattr(ref, buf, c.clone())
        getattr(ours, buf).copy_(c)
    temp, temp2 = 0.05, 0.065
    want = ref(student, teacher, local, masks, temp, temp2)
    m = torch.cat([mk.flatten(1) for mk in masks])  # (G*B, L), view-major as the reference's chunks
    got = ours(torch.cat([student[0], local]), student[1][m], teacher[0], teacher[1][m], teacher[1].mean(1), m,
               temp, temp2, num_global=G)
    for k in ("loss", "cls", "patch"):
        assert abs(float(got[k]) - float(want[k])) < tol * max(1.0, abs(float(want[k]))), k
    assert float(want["patch"]) > 0 and float(want["cls"]) > 0
    assert (ours.center - ref.center).abs().max() < tol and (ours.center2 - ref.center2).abs().max() < tol
    # the gradients reach the student exactly as the reference's do
    s_cls = torch.cat([student[0], local]).clone().requires_grad_(True)
    s_patch = student[1].clone().requires_grad_(True)
    ref2, ours2 = RefIBOTLoss(K, K2, G, NL).to(dtype), IBOTLoss(K, K2).to(dtype)
    ref2(((s_cls[: G * B]), s_patch), teacher, s_cls[G * B:], masks, temp, temp2)["loss"].backward()
    want_grads = s_cls.grad.clone(), s_patch.grad.clone()
    s_cls.grad = s_patch.grad = None
    ours2(s_cls, s_patch[m], teacher[0], teacher[1][m], teacher[1].mean(1), m, temp, temp2)["loss"].backward()
    assert (s_cls.grad - want_grads[0]).abs().max() < tol and (s_patch.grad - want_grads[1]).abs().max() < tol


def _dinov2_sinkhorn_knopp_teacher(teacher_output, teacher_temp, n_iterations=3):
    """A transcription of DINOv2's ``DINOLoss.sinkhorn_knopp_teacher`` on one process, in float64 (the
    reference's float32 arithmetic is itself ~1e-4 from exact on sharp scores)."""
    Q = torch.exp(teacher_output.double() / teacher_temp).t()
    B, K = Q.shape[1], Q.shape[0]
    Q /= torch.sum(Q)
    for _ in range(n_iterations):
        Q /= torch.sum(Q, dim=1, keepdim=True)
        Q /= K
        Q /= torch.sum(Q, dim=0, keepdim=True)
        Q /= B
    Q *= B
    return Q.t()


def test_sinkhorn_teacher_equals_dinov2_and_balances_prototypes():
    from mimkit.losses import sinkhorn_knopp

    g = torch.Generator().manual_seed(3)
    logits = torch.randn(64, 32, generator=g) * 0.3 + torch.randn(1, 32, generator=g)  # a shared bias, as a collapse
    got, want = sinkhorn_knopp(logits, 0.04), _dinov2_sinkhorn_knopp_teacher(logits, 0.04)
    assert got.dtype == torch.float32 and (got.double() - want).abs().max() < 1e-6
    assert (sinkhorn_knopp(logits.double(), 0.04) - want).abs().max() < 1e-12
    assert torch.allclose(got.sum(1), torch.ones(64), atol=1e-5)
    # the shared bias that a softmax keeps (most rows on the same few prototypes) is gone: every prototype
    # gets a similar share of the batch, and each row stays sharp
    soft = F.softmax(logits / 0.04, dim=-1)
    assert soft.sum(0).max() > 10 and got.sum(0).max() < 4
    assert sinkhorn_knopp(logits[:0], 0.04).shape == (0, 32)
    # the loss with sinkhorn centring: no centre is read or moved, the teacher rows are the normalised ones
    B, K, K2, G = 4, 48, 40, 2
    student, teacher, local, masks = _loss_inputs(torch.float64)
    loss = IBOTLoss(K, K2, centering="sinkhorn")
    m = torch.cat([mk.flatten(1) for mk in masks])
    out = loss(torch.cat([student[0], local]), student[1][m], teacher[0], teacher[1][m], teacher[1].mean(1), m,
               0.05, 0.065, num_global=G)
    assert float(out["loss"]) > 0 and loss.center.abs().max() == 0 and loss.center2.abs().max() == 0
    t = sinkhorn_knopp(teacher[0], 0.05).double().reshape(G, B, -1)
    s_all = F.log_softmax(torch.cat([student[0], local]) / 0.1, -1).reshape(-1, B, K)
    pairs = [-(t[q] * s_all[v]).sum(-1).mean() for q in range(G) for v in range(len(s_all)) if v != q]
    assert abs(float(out["cls"]) - float(sum(pairs) / len(pairs))) < 1e-6
    with pytest.raises(ValueError, match="centering must be"):
        IBOTLoss(K, K2, centering="nope")


def test_schedules_accept_float_steps():
    # teacher temperature: 0.04 -> 0.07 linearly over the first 10% of the run, after a 20% start for the patches
    assert warmup_temperature(0, 1000, 0.04, 0.07, 0.1) == 0.04
    assert warmup_temperature(50.5, 1000, 0.04, 0.07, 0.1) == pytest.approx(0.04 + 0.03 * 0.505)
    assert warmup_temperature(100, 1000, 0.04, 0.07, 0.1) == 0.07 == warmup_temperature(999.5, 1000, 0.04, 0.07, 0.1)
    assert warmup_temperature(150, 1000, 0.04, 0.07, 0.1, start_fraction=0.2) == 0.04
    assert warmup_temperature(250, 1000, 0.04, 0.07, 0.1, start_fraction=0.2) == pytest.approx(0.055)
    # momentum: the reference's cosine_scheduler(0.996, 1, epochs, iters) at iteration step - 1
    ref = 1 + 0.5 * (0.996 - 1) * (1 + np.cos(np.pi * np.arange(100) / 100))
    assert [cosine_momentum(s, 100, 0.996) for s in (1, 37, 100)] == pytest.approx([ref[0], ref[36], ref[99]])
    assert cosine_momentum(50.5, 100, 0.996) == pytest.approx(1 - 0.002 * (1 + math.cos(math.pi * 0.495)))


# ---- (c) masks ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("grid", [(14, 14), (7, 7)])
def test_masks_equal_the_reference_loader_draw_for_draw(grid):
    gen = IBOTMasking(pred_ratio=(0.0, 0.3), pred_ratio_var=(0.0, 0.2))
    n = 300
    ratios = []
    masks = gen(n, grid, generator=torch.Generator().manual_seed(3), ratios=ratios)
    seeds = torch.randint(0, 2**31 - 1, (n,), generator=torch.Generator().manual_seed(3)).tolist()
    L = grid[0] * grid[1]
    counts = masks.sum(1)
    for row, s in enumerate(seeds):
        rng = random.Random(s)
        r = ref_get_pred_ratio(rng, (0.0, 0.3), (0.0, 0.2))
        assert r == ratios[row]
        want = ref_block_mask(rng, *grid, r * L)
        assert torch.equal(masks[row], torch.from_numpy(want).reshape(-1)), row
        assert counts[row] <= r * L  # BEiT's rule: never more than the target
    r = torch.tensor(ratios)
    zero = r == 0
    assert 0.4 < float(zero.float().mean()) < 0.6  # half the views stay whole
    assert (counts[zero] == 0).all() and bool(((r[~zero] >= 0.1) & (r[~zero] <= 0.5)).all())
    assert float(r[~zero].mean()) == pytest.approx(0.3, abs=0.03)
    # blocks reach most of their target (the loop stops early only when no rectangle fits)
    assert float(counts[~zero].sum()) / float((r[~zero] * L).sum()) > 0.75


def test_random_shape_and_validation():
    m = IBOTMasking(pred_ratio=0.4, pred_ratio_var=0.1, shape="rand")
    ratios = []
    out = m(50, (7, 7), generator=torch.Generator().manual_seed(0), ratios=ratios)
    assert [int(c) for c in out.sum(1)] == [int(r * 49) for r in ratios]
    assert all(0.3 <= r <= 0.5 for r in ratios) and len(set(ratios)) > 40
    with pytest.raises(ValueError, match="0 <= v <= r"):
        IBOTMasking(pred_ratio=(0.1, 0.3), pred_ratio_var=(0.2, 0.0))
    with pytest.raises(ValueError, match="one value per pred_ratio"):
        IBOTMasking(pred_ratio=(0.1, 0.3), pred_ratio_var=(0.0, 0.1, 0.1))


# ---- (d) views ---------------------------------------------------------------------------------------
def test_views_are_seeded_per_image_and_view_not_per_batch():
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (6, 3, 28, 28), dtype=torch.uint8, generator=g)
    seeds = torch.tensor([11, 22, 33, 44, 55, 66])
    aug = MultiCropAugment(28, 12, 3, mean=(0.5,) * 3, std=(0.25,) * 3, blur_sigma=(0.1, 1.0))
    views = aug(imgs, seeds)
    assert [tuple(v.shape) for v in views] == [(6, 3, 28, 28)] * 2 + [(6, 3, 12, 12)] * 3
    order = torch.tensor([4, 1, 5])  # another batch: a subset in another order
    again = aug(imgs[order], seeds[order])
    for v, w in zip(views, again):
        assert torch.allclose(v[order], w, atol=1e-6, rtol=0)
    # the global views do not depend on how many local crops follow them
    fewer = MultiCropAugment(28, 12, 0, mean=(0.5,) * 3, std=(0.25,) * 3, blur_sigma=(0.1, 1.0))(imgs, seeds)
    assert len(fewer) == 2 and all(torch.allclose(a, b, atol=1e-6, rtol=0) for a, b in zip(fewer, views[:2]))
    # another seed, another view; every view of an image differs from the others
    other = aug(imgs, seeds + 1)
    assert all((a - b).abs().amax(dim=(1, 2, 3)).min() > 0.01 for a, b in zip(views, other))
    assert (views[0] - views[1]).abs().amax(dim=(1, 2, 3)).min() > 0.01


def test_view_operations_match_torchvision():
    from torchvision.transforms.v2 import functional as TF

    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 16, 16, generator=g)
    f = torch.tensor([-0.1, 0.03, 0.07, 0.1])
    want = torch.stack([TF.adjust_hue(x[i], float(f[i])) for i in range(4)])
    assert (_hue(x, f.view(-1, 1, 1, 1)) - want).abs().max() < 1e-5
    sigma = torch.tensor([0.4, 0.9, 1.3, 2.0])
    got = _gaussian_blur(x, sigma, 6)
    want = torch.stack([TF.gaussian_blur(x[i], [13, 13], [float(sigma[i])] * 2) for i in range(4)])
    assert (got - want)[..., 6:-6, 6:-6].abs().max() < 1e-5  # the same kernel away from the border


def test_solarize_on_the_second_global_view_only():
    """A flat image at 230/255: crops and blur keep it flat, jitter keeps it above the threshold (brightness
    >= 0.6 x 0.9; contrast has nothing to stretch), so exactly the views whose solarize draw fires go dark --
    only in the second global view, about 20% of the time."""
    n = 256
    imgs = torch.full((n, 1, 28, 28), 230, dtype=torch.uint8)
    seeds = torch.arange(n)
    v1, v2 = MultiCropAugment(28, 12, 0, mean=(0.0,), std=(1.0,))(imgs, seeds)
    u = seeded_uniforms(seeds, 2 * 64).reshape(n, 2, 64)
    dark2 = v2.mean(dim=(1, 2, 3)) < 0.5
    assert torch.equal(dark2, u[:, 1, 53] < 0.2) and 0.12 < float(dark2.float().mean()) < 0.28
    assert not bool((v1.mean(dim=(1, 2, 3)) < 0.5).any())
    # colour jitter (p 0.8): the brightness factor U(0.6, 1.4) of the first view, clipped at 1
    factor = (1 + 0.4 * (2 * u[:, 0, 42] - 1)).float()
    want = torch.where(u[:, 0, 41] < 0.8, (230 / 255 * factor).clamp(max=1), torch.tensor(230 / 255))
    assert torch.allclose(v1.mean(dim=(1, 2, 3)), want, atol=1e-5)


def test_multi_crop_images_through_mimkits_loader():
    from mimkit.train.loader import ResumableLoader, ResumableSampler, mix_seed

    g = torch.Generator().manual_seed(0)
    base = TensorImages(torch.randint(0, 256, (20, 28, 28), dtype=torch.uint8, generator=g), torch.zeros(20))
    aug = MultiCropAugment(28, 12, 2, mean=(0.3,), std=(0.3,), blur_sigma=(0.1, 1.0))
    ds = MultiCropImages(base, aug, (0.3,), (0.3,))
    sampler = ResumableSampler(len(ds), 8, seed=5, rank=0, world_size=1)
    batch = next(iter(ResumableLoader(ds, sampler)))
    assert set(batch) == {"images", "views"} and batch["images"].shape == (8, 1, 28, 28)
    assert [tuple(v.shape) for v in batch["views"]] == [(8, 1, 28, 28), (8, 1, 12, 12), (8, 1, 12, 12)]
    idx = sampler.order(0)[:8]
    want = aug(base.images[idx], torch.tensor([mix_seed(5, 0, int(i)) for i in idx]))  # the loader's item seeds
    assert torch.equal(batch["images"], want[0]) and all(torch.equal(a, b) for a, b in zip(batch["views"], want[1:]))
    assert len(ds.subset(range(5))) == 5


# ---- the model: local crops, training steps, the teacher ----------------------------------------------
def test_local_crops_use_the_references_position_interpolation():
    pe = torch.randn(1, 1 + 49, 8)
    got = interpolate_pos_embed(pe, (7, 7), (3, 3))
    table = pe[:, 1:].reshape(1, 7, 7, 8).permute(0, 3, 1, 2)  # DINO's interpolate_pos_encoding, w0 = h0 = 3
    want = F.interpolate(table, scale_factor=(3.1 / 7, 3.1 / 7), mode="bicubic").permute(0, 2, 3, 1).reshape(1, 9, 8)
    assert torch.equal(got[:, :1], pe[:, :1]) and torch.equal(got[:, 1:], want)
    sized = F.interpolate(table, size=(3, 3), mode="bicubic").permute(0, 2, 3, 1).reshape(1, 9, 8)
    assert (got[:, 1:] - sized).abs().max() > 1e-3  # not the size-based resize other code uses
    m = mimkit.create("ibot_vit_tiny_patch4_28", **TINY).eval()
    from mimkit.methods.ibot import encode_tokens

    local = torch.randn(2, 1, 12, 12)
    tokens = encode_tokens(m.encoder, local)
    enc = m.encoder
    pos = interpolate_pos_embed(enc.pos_embed, (7, 7), (3, 3))
    x = torch.cat([(enc.cls_token + pos[:, :1]).expand(2, -1, -1), enc.patch_embed(local) + pos[:, 1:]], 1)
    assert tokens.shape == (2, 10, 32) and torch.allclose(tokens, enc.forward_tokens(x).last_hidden_state)


def _step(model, opt, batch, step, total):
    model.on_train_step(step, total)
    out = model(**batch)
    opt.zero_grad(set_to_none=True)
    out.loss.backward()
    model.before_optimizer_step(step, total)
    opt.step()
    model.after_optimizer_step(step + 1, total)
    return out


def test_training_steps_move_the_teacher_by_ema_and_freeze_the_prototypes_first():
    torch.manual_seed(0)
    model = mimkit.create("ibot_vit_tiny_patch4_28", **TINY, freeze_last_layer_fraction=0.25,
                          momentum_teacher=0.9).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.04)
    aug = MultiCropAugment(28, 12, 2, mean=(0.3,), std=(0.3,), blur_sigma=(0.1, 1.0))
    imgs = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8)
    first, *rest = aug(imgs, torch.arange(8))
    batch = {"images": first, "views": rest}
    last = model.head.last_layer.parametrizations.weight.original1.detach().clone()
    qkv = model.encoder.blocks[0].attn.qkv.weight
    t_qkv = model.teacher.encoder.blocks[0].attn.qkv.weight
    center = model.criterion.center.clone()
    losses = []
    for step in range(4):  # steps 0 and 1 are inside the frozen quarter of a 8-step run
        before_s, before_t = qkv.detach().clone(), t_qkv.clone()
        out = _step(model, opt, batch, step, 8)
        losses.append(float(out.loss.detach()))
        m = cosine_momentum(step + 1, 8, 0.9)
        assert torch.allclose(t_qkv, m * before_t + (1 - m) * qkv.detach(), atol=1e-6)  # EMA, after the step
        assert not torch.equal(t_qkv, before_t) and not torch.equal(qkv.detach(), before_s)
        frozen = torch.equal(model.head.last_layer.parametrizations.weight.original1, last)
        assert frozen == (step < 2)
    assert all(math.isfinite(v) for v in losses)
    assert not torch.equal(model.criterion.center, center)  # the centres follow the teacher
    assert set(out.extra) >= {"cls_loss", "patch_loss", "teacher_entropy", "teacher_temp"}
    assert out.mask.shape == (16, 49) and out.pred.shape == (int(out.mask.sum()), 64)
    # validation (eval mode) leaves the centres alone
    model.eval()
    c = model.criterion.center.clone()
    model(first)
    assert torch.equal(model.criterion.center, c)


def test_no_masks_before_pred_start_and_a_callers_mask():
    model = mimkit.create("ibot_vit_tiny_patch4_28", **TINY, pred_start_fraction=0.5).train()
    x = torch.randn(4, 1, 28, 28)
    model.on_train_step(10, 100)
    assert model(x).mask.sum() == 0
    model.on_train_step(60, 100)
    assert model(x).mask.sum() > 0
    mask = torch.zeros(4, 49, dtype=torch.bool)
    mask[:, :10] = True
    out = model(x, mask=mask)  # one mask per image, used for both global views
    assert torch.equal(out.mask, torch.cat([mask, mask]).float()) and out.pred.shape[0] == 80


def test_pretrain_runs_through_the_engine(tmp_path):
    """`mimkit pretrain` with the tiny config: the data layer makes the views, the engine calls the hooks,
    the loss is finite, and the teacher and the centres are saved with the model."""
    from safetensors.torch import load_file

    from mimkit.train.config import load_config
    from mimkit.train.run import run_pretrain

    over = [f"model.{k}={v}" for k, v in TINY.items()] + [
        "data.limit=64", "data.batch_size=16", "trainer.max_steps=3", "trainer.max_epochs=1", "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "trainer.compile=false",
        f"run.dir={tmp_path / 'run'}"]
    run = run_pretrain(load_config(ROOT / "configs" / "ibot_vit_tiny_patch4_28.yaml", over))
    rows = (run / "logs" / "metrics.csv").read_text().splitlines()
    head = rows[0].split(",")
    losses = [float(r.split(",")[head.index("train/loss")]) for r in rows[1:] if r.split(",")[head.index("train/loss")]]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    sd = load_file(run / "model" / "model.safetensors")
    assert {"criterion.center", "criterion.center2", "teacher.encoder.pos_embed"} <= set(sd)
    assert not torch.equal(sd["teacher.encoder.blocks.0.attn.qkv.weight"], sd["encoder.blocks.0.attn.qkv.weight"])
    assert sd["criterion.center"].abs().sum() > 0


def test_resume_from_a_checkpoint_is_exact(tmp_path):
    """An 8-step run, and the same run resumed from its checkpoint after epoch 1 (step 4): bit-identical
    weights, teacher and centres (views seeded per image, schedules -- the weight decay's too -- read from
    the step, centres saved)."""
    from safetensors.torch import load_file

    from mimkit.train.config import load_config
    from mimkit.train.run import run_pretrain

    def cfg(run_dir):
        over = [f"model.{k}={v}" for k, v in TINY.items()] + [
            "model.freeze_last_layer_fraction=0.3", "model.pred_start_fraction=0.2", "optim.weight_decay_end=0.4",
            "model.clip_grad=0.5", "data.limit=64",
            "data.batch_size=16", "trainer.max_epochs=2", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
            "trainer.compile=false", "run.keep_periodic=-1", f"run.dir={run_dir}"]
        return load_config(ROOT / "configs" / "ibot_vit_tiny_patch4_28.yaml", over)

    full = run_pretrain(cfg(tmp_path / "full"))
    ckpt = next((full / "checkpoints").glob("epoch000-step0000004.ckpt"))
    resumed = run_pretrain(cfg(tmp_path / "resumed"), resume=str(ckpt))
    a, b = load_file(full / "model" / "model.safetensors"), load_file(resumed / "model" / "model.safetensors")
    assert a.keys() == b.keys() and {"criterion.center", "teacher_head.encoder.mlp.0.weight"} <= set(a)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]


# ---- (f) the centres over two processes ---------------------------------------------------------------
def _centre_worker(rank: int, init: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        g = torch.Generator().manual_seed(100 + rank)
        loss = IBOTLoss(16, 12)
        loss.update_center(torch.randn(6, 16, generator=g), torch.randn(6, 12, generator=g))
        if rank == 0:
            torch.save({"center": loss.center, "center2": loss.center2}, out)
    finally:
        dist.destroy_process_group()


def test_centres_average_over_processes(tmp_path):
    """Two gloo processes (forked: no second import of torch) update the centres from their own batches;
    the result is the one-process update on both batches together (the reference's all-reduce)."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    init, out = f"file://{tmp_path / 'rendezvous'}", str(tmp_path / "centres.pt")
    procs = [ctx.Process(target=_centre_worker, args=(rank, init, out)) for rank in (0, 1)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=60)
    assert [proc.exitcode for proc in procs] == [0, 0]
    got = torch.load(out)
    one = IBOTLoss(16, 12)  # one process holding both ranks' batches
    cls, mean = [], []
    for rank in (0, 1):
        g = torch.Generator().manual_seed(100 + rank)
        cls.append(torch.randn(6, 16, generator=g))
        mean.append(torch.randn(6, 12, generator=g))
    one.update_center(torch.cat(cls), torch.cat(mean))
    assert torch.allclose(got["center"], one.center, atol=1e-7) and torch.allclose(got["center2"], one.center2, atol=1e-7)
    alone = IBOTLoss(16, 12)
    alone.update_center(cls[0], mean[0])
    assert not torch.allclose(got["center"], alone.center)
