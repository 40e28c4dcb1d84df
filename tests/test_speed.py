"""The speed levers keep what they replace: batch augmentation draws torchvision's crop boxes and
resamples them as bicubic interpolation does, per item and independent of the batch; the batched
loader path gives the items the per-item path gives; compiled training falls back to eager with
the same random draws; short-sequence attention computes the same function."""
import math

import pytest
import torch
import torch.nn.functional as F

import mimkit
from mimkit.data import BatchAugment, BatchedSamples, TensorImages, collate, random_resized_crop_boxes, seeded_uniforms


def torchvision_box(u, h, w, scale, ratio):
    """torchvision's RandomResizedCrop.get_params, written as a loop over the same uniforms."""
    area = h * w
    for t in range(10):
        a = area * (scale[0] + (scale[1] - scale[0]) * u[4 * t])
        lr = (math.log(ratio[0]), math.log(ratio[1]))
        ar = math.exp(lr[0] + (lr[1] - lr[0]) * u[4 * t + 1])
        cw, ch = int(round(math.sqrt(a * ar))), int(round(math.sqrt(a / ar)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(u[4 * t + 2] * (h - ch + 1)), int(u[4 * t + 3] * (w - cw + 1)), ch, cw
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


@pytest.mark.parametrize("hw,scale", [((28, 28), (0.2, 1.0)), ((28, 40), (0.05, 1.0)), ((9, 30), (0.9, 1.0))])
def test_crop_boxes_are_torchvisions(hw, scale):
    u = seeded_uniforms(torch.arange(300), 41)
    boxes = random_resized_crop_boxes(u, *hw, scale, (3 / 4, 4 / 3))
    for i in range(300):
        assert tuple(int(v) for v in boxes[i]) == torchvision_box(u[i].tolist(), *hw, scale, (3 / 4, 4 / 3))


def test_uniforms_depend_on_the_seed_only():
    a = seeded_uniforms(torch.tensor([5, 7, 2**62 + 3]), 41)
    b = seeded_uniforms(torch.tensor([2**62 + 3, 5]), 41)
    assert torch.equal(a[0], b[1]) and torch.equal(a[2], b[0])
    assert not torch.equal(a[0], a[1])
    big = seeded_uniforms(torch.arange(20000), 41)
    assert 0 <= big.min() and big.max() < 1
    assert abs(big.mean().item() - 0.5) < 0.01 and abs(big.var().item() - 1 / 12) < 0.002


def test_batch_augment_resamples_as_bicubic_interpolation():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8, generator=g)
    seeds = torch.arange(64) * 7919
    aug = BatchAugment(28, (0.5,), (0.25,), (0.2, 1.0), hflip=True)
    out = aug(images, seeds)
    u = seeded_uniforms(seeds, 41)
    boxes = random_resized_crop_boxes(u, 28, 28, (0.2, 1.0))
    compared = 0
    for i in range(64):
        top, left, ch, cw = (int(v) for v in boxes[i])
        crop = images[i:i + 1, :, top:top + ch, left:left + cw].float()
        ref = F.interpolate(crop, size=(28, 28), mode="bicubic", align_corners=False).clamp(0, 255)
        # where the 4x4 taps stay inside the crop both read the same pixels (at the crop's edge
        # torchvision replicates the edge, BatchAugment reads the image's real neighbours)
        inside = []
        for n, size in ((ch, 28), (cw, 28)):
            src = (torch.arange(size) + 0.5) * n / size - 0.5
            inside.append((src.floor() - 1 >= 0) & (src.floor() + 2 <= n - 1))
        keep = inside[0][:, None] & inside[1][None, :]
        if u[i, 40] < 0.5:
            ref, keep = ref.flip(-1), keep.flip(-1)
        ref = (ref / 255 - 0.5) / 0.25
        assert torch.allclose(out[i, 0][keep], ref[0, 0][keep], atol=2e-4), i
        compared += int(keep.sum())
    assert compared > 64 * 28 * 28 // 2
    # the same item with the same seed is augmented the same in any batch
    again = aug(images[10:12].flip(0), seeds[10:12].flip(0))
    assert torch.allclose(again[1], out[10], atol=1e-6) and torch.allclose(again[0], out[11], atol=1e-6)


def test_batch_augment_identity_box_is_the_normalised_image():
    images = torch.randint(0, 256, (8, 3, 12, 12), dtype=torch.uint8)
    aug = BatchAugment(12, (0.1, 0.2, 0.3), (0.5, 0.6, 0.7), (1.0, 1.0), ratio=(1.0, 1.0), hflip=False)
    mean, std = torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1), torch.tensor([0.5, 0.6, 0.7]).view(1, 3, 1, 1)
    assert torch.allclose(aug(images, torch.arange(8)), (images / 255 - mean) / std, atol=1e-5)


def test_batched_loading_gives_the_items_of_the_item_path():
    from mimkit.train.loader import ResumableLoader, ResumableSampler, SeededSamples

    images = torch.randint(0, 256, (40, 28, 28), dtype=torch.uint8)
    ds = TensorImages(images, torch.arange(40), batch_transform=BatchAugment(28, (0.3,), (0.4,)))
    sampler = ResumableSampler(len(ds), 8, seed=3)
    loader = ResumableLoader(ds, sampler)
    keys = list(sampler)
    first = next(iter(loader))
    assert isinstance(first, tuple) and first[0].shape == (8, 1, 28, 28)
    item = SeededSamples(ds)
    for j, key in enumerate(keys[:8]):
        x, y = ds.get_batch([key[0]], torch.tensor([key[1]]))
        assert torch.allclose(first[0][j], x[0], atol=1e-6) and first[1][j] == y[0] == key[0]
    assert item.__getitems__(keys[:8])[1].tolist() == [k[0] for k in keys[:8]]
    # plain DataLoader over BatchedSamples: one call per batch, labels follow the images
    torch.manual_seed(0)
    dl = torch.utils.data.DataLoader(BatchedSamples(ds), batch_size=10, shuffle=True, collate_fn=collate)
    xs, ys = zip(*dl)
    assert sorted(torch.cat(ys).tolist()) == list(range(40)) and xs[0].shape == (10, 1, 28, 28)


def test_a_subset_keeps_the_batch_path():
    ds = TensorImages(torch.randint(0, 256, (30, 8, 8), dtype=torch.uint8), torch.arange(30) % 3,
                      batch_transform=BatchAugment(8, (0.5,), (0.5,)))
    sub = ds.subset([3, 4, 29])
    assert isinstance(sub, TensorImages) and sub.labels.tolist() == [0, 1, 2]
    x, _ = sub.get_batch([2], torch.tensor([11]))
    ref, _ = ds.get_batch([29], torch.tensor([11]))
    assert torch.equal(x, ref)


@pytest.mark.parametrize("recipe", ["mae_vit_tiny_patch4_28", "simmim_vit_tiny_patch4_28"])
def test_short_sequence_attention_is_the_same_function(recipe):
    from mimkit.train.speed import max_tokens, short_sequence_attention

    torch.manual_seed(0)
    model = mimkit.create(recipe).eval()
    assert max_tokens(model) == 50
    x, noise = torch.randn(4, 1, 28, 28), torch.rand(4, 49)
    kw = {"noise": noise} if recipe.startswith("mae") else {}
    with torch.no_grad():
        torch.manual_seed(1)
        ref = model(x, **kw)
        assert short_sequence_attention(model) > 0
        torch.manual_seed(1)
        got = model(x, **kw)
    assert torch.allclose(ref.loss, got.loss, atol=1e-5) and torch.allclose(ref.pred, got.pred, atol=1e-4)


def test_compile_setting():
    from mimkit.train.speed import COMPILE_MIN_STEPS, should_compile

    assert should_compile(True, 1, "cpu") and not should_compile(False, 10**6, "cpu")
    assert not should_compile("auto", COMPILE_MIN_STEPS - 1, "cuda") and should_compile("auto", COMPILE_MIN_STEPS, "cuda")
    assert not should_compile("auto", 10**6, "mps")
    with pytest.raises(ValueError, match="true, false or auto"):
        should_compile("sometimes", 1, "cpu")


def test_a_failing_compile_falls_back_to_eager_with_the_same_draws(monkeypatch):
    from mimkit.train import speed
    from mimkit.train.module import MIMModule

    monkeypatch.setattr(speed, "_warned", False)

    module = MIMModule({"recipe": "mae_vit_tiny_patch4_28", "embed_dim": 16, "depth": 1, "num_heads": 2,
                        "decoder_embed_dim": 8, "decoder_depth": 1, "decoder_num_heads": 2},
                       {"lr": 1e-3}, 4)
    x = torch.randn(4, 1, 28, 28)

    def broken(**kw):
        torch.rand(100)  # consumes random numbers before failing, as a half-run graph would
        raise RuntimeError("C++ compile error: no compiler")

    compiled = speed.Compiled(module.model)
    compiled.fn = broken
    object.__setattr__(module, "_compiled", compiled)
    torch.manual_seed(5)
    with pytest.warns(UserWarning, match="torch.compile failed"):
        out = module._forward({"images": x})
    torch.manual_seed(5)
    ref = module.model(x)
    assert torch.equal(out.mask, ref.mask) and torch.allclose(out.loss, ref.loss)
    assert compiled.fn is None  # later steps run eagerly without trying again


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["maskfeat_vit_tiny_patch4_28", "ijepa_vit_tiny_patch4_28"])
def test_compiled_step_draws_the_eager_masks_and_loss(recipe):
    """Masks are drawn eagerly under torch.compile (block masking is Python-side): a compiled forward
    and backward gives the eager masks, loss and gradients."""
    from mimkit.train.speed import compile_for_training

    torch.manual_seed(0)
    model = mimkit.create(recipe, embed_dim=16, depth=1, num_heads=2).train()
    compiled = compile_for_training(model, "cpu")
    x = torch.randn(4, 1, 28, 28)
    torch.manual_seed(3)
    got = compiled(x)
    got.loss.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    torch.manual_seed(3)
    ref = model(x)
    ref.loss.backward()
    assert torch.equal(got.mask, ref.mask)
    assert torch.allclose(got.loss, ref.loss, atol=1e-5)
    assert all(torch.allclose(a, p.grad, atol=1e-5) for a, p in zip(grads, (p for p in model.parameters() if p.grad is not None)))


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_ibot_compiles_its_encoders_only_and_trains_as_eagerly(monkeypatch, backend):
    """iBOT names the parts mimkit pretrain compiles (its encoders' token passes: fixed shapes); the
    masks of changing size and the in-place centre update stay eager. The compiled model gives the eager
    loss, gradients and new centres; state-dict keys do not change; restore puts the eager methods back."""
    import copy

    from mimkit.train import speed

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real_compile(fn, backend=backend, **kw))
    torch.manual_seed(0)
    model = mimkit.create("ibot_vit_tiny_patch7_28", embed_dim=16, depth=1, num_heads=2, out_dim=32, hidden_dim=16,
                          bottleneck_dim=8).train()
    eager = copy.deepcopy(model)
    keys = list(model.state_dict())
    restore = speed.compile_methods(model, model.compile_training, "cpu")
    assert isinstance(model.encoder.__dict__["forward_tokens"], speed.Compiled)
    assert isinstance(model.teacher.encoder.__dict__["forward_tokens"], speed.Compiled)
    assert list(model.state_dict()) == keys
    g = torch.Generator().manual_seed(1)
    x, second = torch.randn(4, 1, 28, 28, generator=g), torch.randn(4, 1, 28, 28, generator=g)
    locals_ = [torch.randn(4, 1, 14, 14, generator=g) for _ in range(2)]
    outs = []
    for m in (model, eager):
        torch.manual_seed(3)
        out = m(x, views=[second, *locals_])
        out.loss.backward()
        outs.append((out, [p.grad.clone() for p in m.parameters() if p.grad is not None]))
    (got, got_grads), (ref, ref_grads) = outs
    assert got.mask.sum() > 0 and torch.equal(got.mask, ref.mask)
    assert torch.allclose(got.loss, ref.loss, atol=1e-5)
    assert len(got_grads) == len(ref_grads) and all(torch.allclose(a, b, atol=1e-5) for a, b in zip(got_grads, ref_grads))
    assert torch.allclose(model.criterion.center, eager.criterion.center, atol=1e-6)
    assert model.criterion.center.abs().sum() > 0  # the centres moved, eagerly, once
    restore()
    assert "forward_tokens" not in model.encoder.__dict__ and "forward_tokens" not in model.teacher.encoder.__dict__
    with pytest.raises(ValueError, match="not a method"):
        speed.compile_methods(model, ["encoder.no_such_method"], "cpu")
