import pytest
import torch
from transformers import SwinConfig, SwinForMaskedImageModeling, ViTConfig, ViTForMaskedImageModeling

import mimkit
from conftest import perturb_weights
from mimkit.interop.hf import from_hf, to_hf
from mimkit.masking import BlockMasking, CenterMasking, RandomMasking, SimMIMMasking
from mimkit.methods.simmim import SimMIM
from mimkit.methods.simmim_swin import SimMIMSwin
from mimkit.ops import pixel_mask


def perturb(model):
    return perturb_weights(model).eval()


def small_vit(channels=1, image_size=28, patch_size=4, eps=1e-6, qkv_bias=True):
    cfg = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                    image_size=image_size, patch_size=patch_size, num_channels=channels, encoder_stride=patch_size,
                    layer_norm_eps=eps, qkv_bias=qkv_bias)
    return perturb(ViTForMaskedImageModeling(cfg))


def small_swin(image_size=32, depths=(2, 2), heads=(2, 4), window=4, channels=1, ape=False, eps=1e-5):
    cfg = SwinConfig(image_size=image_size, patch_size=4, num_channels=channels, embed_dim=16, depths=depths,
                     num_heads=heads, window_size=window, encoder_stride=4 * 2 ** (len(depths) - 1),
                     use_absolute_embeddings=ape, layer_norm_eps=eps)
    return perturb(SwinForMaskedImageModeling(cfg))


@pytest.mark.parametrize("channels,eps,qkv_bias", [(1, 1e-6, True), (3, 1e-12, False)])
def test_vit_parity_with_transformers(channels, eps, qkv_bias):
    hf = small_vit(channels, eps=eps, qkv_bias=qkv_bias)
    model = from_hf(hf).eval()
    assert isinstance(model, SimMIM) and model.encoder.norm.eps == eps
    x = torch.randn(3, channels, 28, 28)
    for bool_masked_pos in (torch.rand(3, 49) < 0.6, SimMIMMasking(0.6, 4, 4)(3, (7, 7))):
        ref = hf(pixel_values=x, bool_masked_pos=bool_masked_pos)
        out = model(x, mask=bool_masked_pos)
        assert torch.equal(out.mask.bool(), bool_masked_pos)
        assert (ref.loss - out.loss).abs() < 1e-5
        rec = model.reconstruct(x, mask=bool_masked_pos)
        assert rec.shape == x.shape and (ref.reconstruction - rec).abs().max() < 1e-5
        # pred is the reconstruction cut into patches
        assert torch.equal(model.patchify(rec), out.pred)
    # the encoder's tokens (cls included) also match
    ref_tokens = hf.vit(pixel_values=x, bool_masked_pos=bool_masked_pos).last_hidden_state
    assert (ref_tokens - model.encoder(x, mask=bool_masked_pos).last_hidden_state).abs().max() < 1e-5


@pytest.mark.parametrize("kw", [
    dict(),  # 2 stages, window 4, stride 8
    dict(depths=(2, 2, 2), heads=(2, 2, 4), window=2, channels=3, ape=True, eps=1e-6),  # stride 16, ape
    dict(image_size=96, depths=(1, 1, 1, 1), heads=(1, 2, 2, 4), window=3),  # 4 stages, stride 32
])
def test_swin_parity_with_transformers(kw):
    hf = small_swin(**kw)
    model = from_hf(hf).eval()
    assert isinstance(model, SimMIMSwin)
    size, c = kw.get("image_size", 32), kw.get("channels", 1)
    L = (size // 4) ** 2
    x = torch.randn(2, c, size, size)
    bool_masked_pos = torch.rand(2, L) < 0.6
    ref = hf(pixel_values=x, bool_masked_pos=bool_masked_pos)
    out = model(x, mask=bool_masked_pos)
    assert out.pred.shape == (2, L, 16 * c) and torch.equal(out.mask.bool(), bool_masked_pos)
    assert (ref.loss - out.loss).abs() < 1e-5
    assert (ref.reconstruction - model.reconstruct(x, mask=bool_masked_pos)).abs().max() < 1e-5
    ref_tokens = hf.swin(pixel_values=x, bool_masked_pos=bool_masked_pos).last_hidden_state
    assert (ref_tokens - model.encoder(x, mask=bool_masked_pos).last_hidden_state).abs().max() < 1e-5


def _assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_vit_round_trip_is_exact():
    model = mimkit.create("simmim_vit_tiny_patch4_28", embed_dim=48, depth=2, num_heads=3).eval()
    hf = to_hf(model)
    assert type(hf).__name__ == "ViTForMaskedImageModeling"
    back = from_hf(hf)
    _assert_same_state(model, back)
    x, m = torch.randn(2, 1, 28, 28), torch.rand(2, 49) < 0.5
    assert (hf(pixel_values=x, bool_masked_pos=m).loss - model(x, mask=m).loss).abs() < 1e-6


def test_swin_round_trip_is_exact():
    model = mimkit.create("simmim_swin_tiny_window4_32", embed_dim=16, depths=(1, 1), num_heads=(1, 2)).eval()
    hf = to_hf(model)
    assert type(hf).__name__ == "SwinForMaskedImageModeling"
    back = from_hf(hf)
    _assert_same_state(model, back)
    x, m = torch.randn(2, 1, 32, 32), torch.rand(2, 64) < 0.5
    assert (hf(pixel_values=x, bool_masked_pos=m).loss - model(x, mask=m).loss).abs() < 1e-6


def test_save_load_round_trip(tmp_path):
    model = mimkit.create("simmim_swin_tiny_window4_32", embed_dim=16, depths=(1, 1), num_heads=(1, 2)).eval()
    mimkit.save(model, tmp_path / "run")
    back = mimkit.load(tmp_path / "run")
    _assert_same_state(model, back)
    converted = from_hf(small_vit())
    mimkit.save(converted, tmp_path / "vit")
    _assert_same_state(converted, mimkit.load(tmp_path / "vit"))


def test_patch_size_must_equal_encoder_stride_with_a_mask():
    model = SimMIM(img_size=28, patch_size=4, in_chans=1, embed_dim=32, depth=1, num_heads=2, encoder_stride=2,
                   mask_patch_size=4)
    with pytest.raises(ValueError, match="patch_size must equal encoder_stride.*encoder_stride=4"):
        model(torch.randn(1, 1, 28, 28))
    hf = to_hf(model)  # transformers refuses the same configuration
    with pytest.raises(ValueError, match="patch_size"):
        hf(pixel_values=torch.randn(1, 1, 28, 28), bool_masked_pos=torch.zeros(1, 49, dtype=torch.bool))


def test_swin_export_refuses_windows_that_do_not_divide_stages():
    # 40 px -> 10x10 grid: transformers pads before the cyclic shift, timm after; outputs would differ
    model = SimMIMSwin(img_size=40, in_chans=1, embed_dim=16, depths=(1, 1), num_heads=(1, 2), window_size=4,
                       mask_patch_size=8)
    assert model(torch.randn(1, 1, 40, 40)).loss.isfinite()
    with pytest.raises(ValueError, match="multiples of window_size 4"):
        to_hf(model)


@pytest.mark.parametrize("name,size", [("simmim_vit_tiny_patch4_28", 28), ("simmim_swin_tiny_window4_32", 32)])
def test_loss_goes_down(name, size):
    torch.manual_seed(0)
    kw = dict(embed_dim=32, depth=2, num_heads=2) if "vit" in name else dict(embed_dim=16, depths=(1, 1),
                                                                             num_heads=(1, 2))
    model = mimkit.create(name, **kw)
    x = torch.rand(8, 1, size, size)
    mask = model.masking(8, model.grid(x), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    first = model(x, mask=mask).loss.item()
    for _ in range(25):
        loss = model(x, mask=mask).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.6 * first


def test_loss_only_counts_hidden_pixels():
    model = mimkit.create("simmim_vit_tiny_patch4_28", embed_dim=32, depth=1, num_heads=2).eval()
    x = torch.rand(2, 1, 28, 28)
    mask = torch.zeros(2, 49, dtype=torch.bool)
    mask[:, :10] = True
    out = model(x, mask=mask)
    rec = model.unpatchify(out.pred, (7, 7))
    pm = pixel_mask(mask, (7, 7), 4).float()
    manual = ((rec - x).abs() * pm).sum() / (pm.sum() + 1e-5)
    assert torch.allclose(out.loss, manual, atol=1e-6)
    # changing visible pixels' target leaves the loss unchanged only through the input, so compare the
    # loss of the same prediction against an image differing on visible pixels
    from mimkit.losses import masked_l1_pixels

    y = x + (1 - pm) * torch.randn_like(x)
    assert torch.allclose(masked_l1_pixels(rec, y, pm), out.loss, atol=1e-6)


def test_default_masks_and_noise():
    model = mimkit.create("simmim_vit_base_patch16", depth=1)
    assert isinstance(model.masking, SimMIMMasking) and model.masking.mask_patch_size == 32
    assert model.masking.scale == 2
    tiny = mimkit.create("simmim_vit_tiny_patch4_28", embed_dim=32, depth=1, num_heads=2)
    x = torch.rand(3, 1, 28, 28)
    out = tiny(x)
    assert out.mask.shape == (3, 49) and (out.mask.sum(1) == 30).all()  # ceil(49 * 0.6)
    noise = torch.rand(3, 49)
    a, b = tiny(x, noise=noise), tiny(x, noise=noise)
    assert torch.equal(a.mask, b.mask) and torch.equal(a.mask.bool(), tiny.masking.from_noise(noise, (7, 7)))
    swin = mimkit.create("simmim_swin_base_window6_192", depths=(1, 1, 1, 1))
    assert swin.encoder_stride == 32 and swin.masking.scale == 8
    m = swin.masking(2, (48, 48))
    assert (m.sum(1) == 22 * 64).all()  # ceil(36 * 0.6) cells of 8x8 patches


@pytest.mark.parametrize("masking,cls", [("random", RandomMasking), ("block", BlockMasking),
                                         ("center", CenterMasking), ("simmim", SimMIMMasking)])
def test_every_masking_drives_simmim(masking, cls):
    kw = {"min_num_patches": 4} if masking == "block" else None
    model = mimkit.create("simmim_vit_tiny_patch4_28", embed_dim=32, depth=1, num_heads=2, masking=masking,
                          masking_kwargs=kw)
    assert isinstance(model.masking, cls)
    out = model(torch.rand(2, 1, 28, 28))
    assert out.loss.isfinite() and out.mask.sum() > 0
    swin = mimkit.create("simmim_swin_tiny_window4_32", embed_dim=16, depths=(1, 1), num_heads=(1, 2),
                         masking=masking, masking_kwargs=kw)
    assert swin(torch.rand(2, 1, 32, 32)).loss.isfinite()


def test_compositions_from_keyword_options():
    hog = mimkit.create("simmim_vit_tiny_patch4_28", embed_dim=32, depth=1, num_heads=2, target="hog", hog_cell=4)
    out = hog(torch.rand(2, 1, 28, 28))
    assert out.pred.shape == (2, 49, 9) and out.loss.isfinite()
    mae_block = mimkit.create("mae_vit_tiny_patch4_28", embed_dim=32, depth=1, num_heads=2, decoder_depth=1,
                              masking="block", masking_kwargs={"min_num_patches": 4})
    assert isinstance(mae_block.masking, BlockMasking)
    assert mae_block(torch.rand(2, 1, 28, 28)).loss.isfinite()
    with pytest.raises(ValueError, match="target must be one of"):
        mimkit.create("simmim_vit_tiny_patch4_28", target="tokens")


def test_clear_errors():
    with pytest.raises(ValueError, match="not divisible by mask_patch_size 32"):
        mimkit.create("simmim_vit_base_patch16", img_size=208, depth=1)
    with pytest.raises(ValueError, match="multiple of the model patch size 4"):
        mimkit.create("simmim_vit_tiny_patch4_28", mask_patch_size=6)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        mimkit.create("simmim_vit_tiny_patch4_28", mask_ratio=1.0)
    with pytest.raises(ValueError, match="multiple of the Swin output stride 8"):
        mimkit.create("simmim_swin_tiny_window4_32", img_size=28)
    model = mimkit.create("simmim_swin_tiny_window4_32", embed_dim=16, depths=(1, 1), num_heads=(1, 2))
    with pytest.raises(ValueError, match="built for 32x32 images"):
        model(torch.rand(1, 1, 64, 64))
    with pytest.raises(ValueError, match="channel"):
        model(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"mask must have shape \(batch, num_patches\) = \(1, 64\)"):
        model(torch.rand(1, 1, 32, 32), mask=torch.zeros(1, 49))
    with pytest.raises(ValueError, match="noise only drives"):
        mimkit.create("simmim_vit_tiny_patch4_28", masking="center", embed_dim=32, depth=1, num_heads=2)(
            torch.rand(1, 1, 28, 28), noise=torch.rand(1, 49))
    cfg = small_vit().config
    cfg.hidden_act = "relu"
    with pytest.raises(ValueError, match="hidden_act"):
        from_hf(ViTForMaskedImageModeling(cfg))


def test_encode_shapes_and_no_weight_decay():
    from mimkit.eval.features import pool
    from mimkit.train.module import no_weight_decay_names

    swin = mimkit.create("simmim_swin_tiny_window4_32", embed_dim=16, depths=(1, 1), num_heads=(1, 2)).eval()
    x = torch.rand(2, 1, 32, 32)
    tok = swin.encode(x)
    last = swin.encoder(x).last_hidden_state
    # no cls in Swin: the average token stands in front, so (N, 1+L, D) holds and pooling works unchanged
    assert tok.shape == (2, 1 + 16, 32) and torch.allclose(tok[:, 0], last.mean(1)) and torch.equal(tok[:, 1:], last)
    assert torch.allclose(pool(tok, "mean"), pool(tok, "cls"))
    names = no_weight_decay_names(swin)
    assert "encoder.mask_token" in names and "encoder.layers.0.blocks.0.attn.relative_position_bias_table" in names
    vit = mimkit.create("simmim_vit_tiny_patch4_28", embed_dim=32, depth=1, num_heads=2)
    assert vit.encode(torch.rand(2, 1, 28, 28)).shape == (2, 50, 32)
    assert {"encoder.mask_token", "encoder.pos_embed", "encoder.cls_token"} <= no_weight_decay_names(vit)
