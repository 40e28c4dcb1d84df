import pytest
import torch
from transformers import ViTMAEConfig, ViTMAEForPreTraining

import mimkit
from mimkit.interop.hf import from_hf, to_hf
from mimkit.ops import patchify, sincos_pos_embed_2d, unpatchify


def small_hf(norm_pix_loss=False, mask_ratio=0.6, image_size=28, patch_size=4, channels=1):
    cfg = ViTMAEConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=image_size, patch_size=patch_size, num_channels=channels,
                       decoder_hidden_size=16, decoder_num_hidden_layers=2, decoder_num_attention_heads=2,
                       decoder_intermediate_size=32, layer_norm_eps=1e-6, mask_ratio=mask_ratio,
                       norm_pix_loss=norm_pix_loss)
    return ViTMAEForPreTraining(cfg).eval()


@pytest.mark.parametrize("norm_pix_loss", [False, True])
@pytest.mark.parametrize("mask_ratio,channels", [(0.6, 1), (0.75, 3)])
def test_parity_with_transformers(norm_pix_loss, mask_ratio, channels, perturb):
    hf = perturb(small_hf(norm_pix_loss, mask_ratio, channels=channels))
    model = from_hf(hf).eval()
    x = torch.randn(3, channels, 28, 28)
    noise = torch.rand(3, 49)
    ref = hf(pixel_values=x, noise=noise)
    out = model(x, noise=noise)
    assert torch.equal(ref.mask, out.mask)
    assert out.mask.sum(1).eq(49 - int(49 * (1 - mask_ratio))).all()
    assert (ref.logits - out.pred).abs().max() < 1e-5
    assert (ref.loss - out.loss).abs() < 1e-5
    # the encoder's visible tokens also match
    ref_enc = hf.vit(pixel_values=x, noise=noise).last_hidden_state
    ids_keep = noise.argsort(1)[:, : int(49 * (1 - mask_ratio))]
    ours = model.encoder(x, ids_keep=ids_keep).last_hidden_state
    assert (ref_enc - ours).abs().max() < 1e-5


def test_round_trip_to_transformers_is_exact():
    model = mimkit.create("mae_vit_tiny_patch4_28", embed_dim=48, depth=2, num_heads=3, decoder_embed_dim=32,
                          decoder_depth=1).eval()
    hf = to_hf(model)
    back = from_hf(hf)
    for (k, a), (k2, b) in zip(model.state_dict().items(), back.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    x, noise = torch.randn(2, 1, 28, 28), torch.rand(2, 49)
    assert torch.allclose(hf(pixel_values=x, noise=noise).loss, model(x, noise=noise).loss, atol=1e-6)


def test_sincos_matches_transformers_layout():
    hf = small_hf()
    # transformers 5.x may skip this init on a fresh model; run its own initialisers explicitly
    emb = hf.vit.embeddings
    emb.patch_embeddings.projection._is_hf_initialized = False
    emb.initialize_weights()
    hf.decoder.initialize_weights(49)
    assert torch.allclose(emb.position_embeddings, sincos_pos_embed_2d(32, (7, 7)), atol=1e-6)
    assert torch.allclose(hf.decoder.decoder_pos_embed, sincos_pos_embed_2d(16, (7, 7)), atol=1e-6)
    ours_rect = sincos_pos_embed_2d(32, (3, 5), cls_token=False)
    # row-major grid: entry (r, c) = index r*5+c; first half encodes the column, second the row
    assert torch.allclose(ours_rect[0, 7, :16], sincos_pos_embed_2d(32, (1, 5), False)[0, 2, :16])


def test_patchify_roundtrip_and_layout():
    x = torch.randn(2, 3, 8, 12)
    p = patchify(x, 4)
    assert p.shape == (2, 6, 48)
    # channel-last inside a patch: element (row 0, col 1 of patch 0) channel 2 is at index (0*4+1)*3+2
    assert p[0, 0, (0 * 4 + 1) * 3 + 2] == x[0, 2, 0, 1]
    assert torch.equal(unpatchify(p, 4, (2, 3), 3), x)


def test_api_shapes_and_training_step_reduces_loss():
    torch.manual_seed(0)
    model = mimkit.create("mae_vit_tiny_patch4_28", embed_dim=64, depth=2, num_heads=2, decoder_embed_dim=32,
                          decoder_depth=1)
    x = torch.rand(8, 1, 28, 28)
    out = model(x)
    assert out.pred.shape == (8, 49, 16) and out.mask.shape == (8, 49)
    assert model.encode(x).shape == (8, 50, 64)
    assert model.reconstruct(x).shape == x.shape
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    noise = torch.rand(8, 49)
    first = model(x, noise=noise).loss.item()
    for _ in range(30):
        loss = model(x, noise=noise).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_explicit_mask_drives_mae():
    model = mimkit.create("mae_vit_tiny_patch4_28", embed_dim=32, depth=1, num_heads=2, decoder_depth=1)
    mask = torch.zeros(2, 49, dtype=torch.bool)
    mask[:, :20] = True
    out = model(torch.rand(2, 1, 28, 28), mask=mask)
    assert torch.equal(out.mask.bool(), mask)


@pytest.mark.parametrize("bad,msg", [
    (dict(mask_ratio=1.0), "strictly between 0 and 1"),
    (dict(mask_ratio=0.0), "strictly between 0 and 1"),
    (dict(img_size=30), "not divisible by patch size"),
    (dict(mask_ratoi=0.5), "did you mean mask_ratio"),
])
def test_bad_config_errors(bad, msg):
    with pytest.raises(ValueError, match=msg):
        mimkit.create("mae_vit_tiny_patch4_28", **bad)


def test_bad_input_errors():
    model = mimkit.create("mae_vit_tiny_patch4_28", embed_dim=32, depth=1, num_heads=2, decoder_depth=1)
    with pytest.raises(ValueError, match="channel"):
        model(torch.rand(2, 3, 28, 28))
    with pytest.raises(ValueError, match="not divisible by patch size 4"):
        model(torch.rand(2, 1, 30, 30))
    with pytest.raises(KeyError, match="Did you mean"):
        mimkit.create("mae_vit_tiny_patch4")
