import pytest
import torch
from transformers import BeitConfig, BeitForMaskedImageModeling

import mimkit
from conftest import perturb_weights
from mimkit.encoders.beit import BEiTEncoder
from mimkit.interop.hf import from_hf, to_hf
from mimkit.masking import BlockMasking
from mimkit.targets import tokenizer_view


def small_hf(shared=True, per_layer=False, absolute=False, mean_pooling=True, layer_scale=0.1, vocab=50,
             attn="eager"):
    cfg = BeitConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     image_size=28, patch_size=4, num_channels=1, vocab_size=vocab, use_mask_token=True,
                     use_shared_relative_position_bias=shared, use_relative_position_bias=per_layer,
                     use_absolute_position_embeddings=absolute, use_mean_pooling=mean_pooling,
                     layer_scale_init_value=layer_scale, layer_norm_eps=1e-6, attn_implementation=attn)
    return perturb_weights(BeitForMaskedImageModeling(cfg).eval())


CONFIGS = [
    dict(shared=True),  # BEiT pretraining default
    dict(shared=True, per_layer=True, absolute=True, mean_pooling=False),
    dict(shared=False, per_layer=True, layer_scale=0.0),
    dict(shared=False, absolute=True, mean_pooling=False, layer_scale=0.2),
]


@pytest.mark.parametrize("opts", CONFIGS)
def test_parity_with_transformers(opts):
    hf = small_hf(**opts)
    model = from_hf(hf).eval()
    x = torch.randn(3, 1, 28, 28)
    mask = torch.rand(3, 49) < 0.4
    labels = torch.randint(0, 50, (int(mask.sum()),))
    ref = hf(pixel_values=x, bool_masked_pos=mask, labels=labels, output_attentions=True)
    out = model(x, mask=mask, labels=labels)
    assert torch.equal(out.mask.bool(), mask)
    assert (ref.logits[mask] - out.pred).abs().max() < 1e-5
    assert (ref.loss - out.loss).abs() < 1e-5
    assert (ref.logits - model.token_logits(x, mask)).abs().max() < 1e-5
    # attention maps (computed with the relative position bias only when asked)
    att = model(x, mask=mask, labels=labels, output_attentions=True)
    assert (att.loss - out.loss).abs() < 1e-6
    assert len(att.extra["attentions"]) == 2
    for a, b in zip(ref.attentions, att.extra["attentions"]):
        assert a.shape == b.shape == (3, 2, 50, 50)
        assert (a - b).abs().max() < 1e-5
    # another resolution: positions interpolated (bicubic), relative tables resized (bilinear)
    x2, mask2 = torch.randn(2, 1, 36, 36), torch.rand(2, 81) < 0.4
    ref2 = hf(pixel_values=x2, bool_masked_pos=mask2, interpolate_pos_encoding=True)
    assert (ref2.logits - model.token_logits(x2, mask2)).abs().max() < 1e-5


def test_parity_sdpa_and_full_labels():
    hf = small_hf(attn="sdpa")
    model = from_hf(hf).eval()
    x, mask = torch.randn(2, 1, 28, 28), torch.rand(2, 49) < 0.5
    ids = torch.randint(0, 50, (2, 49))
    ref = hf(pixel_values=x, bool_masked_pos=mask, labels=ids[mask])
    out = model(x, mask=mask, labels=ids)  # full (N, L) ids: the hidden ones are the targets
    assert (ref.loss - out.loss).abs() < 1e-5
    assert torch.equal(out.extra["labels"], ids[mask])


@pytest.mark.parametrize("opts", [CONFIGS[0], CONFIGS[1]])
def test_round_trip_to_transformers_is_exact(opts):
    model = from_hf(small_hf(**opts))
    back = from_hf(to_hf(model))
    a, b = model.state_dict(), back.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    hf = to_hf(mimkit.create("beit_vit_tiny_patch4_28", embed_dim=32, depth=2, num_heads=2, vocab_size=20))
    assert type(hf).__name__ == "BeitForMaskedImageModeling" and hf.config.use_shared_relative_position_bias


def test_from_saved_directory_and_old_key_names(tmp_path):
    from mimkit.interop.hf_beit import _normalize_beit_keys

    hf = small_hf(shared=True, per_layer=True)
    hf.save_pretrained(tmp_path / "hf")
    model = from_hf(tmp_path / "hf")
    x, mask = torch.randn(2, 1, 28, 28), torch.rand(2, 49) < 0.4
    assert (hf(pixel_values=x, bool_masked_pos=mask).logits - model.token_logits(x, mask)).abs().max() < 1e-5
    # transformers 4.x names (encoder.layer.i.attention.attention.query, intermediate.dense, ...)
    new = _normalize_beit_keys(hf.state_dict())
    renames = [(".attention.q_proj.", ".attention.attention.query."), (".attention.k_proj.", ".attention.attention.key."),
               (".attention.v_proj.", ".attention.attention.value."), (".attention.o_proj.", ".attention.output.dense."),
               (".mlp.fc1.", ".intermediate.dense."), (".mlp.fc2.", ".output.dense."),
               (".relative_position_bias.", ".attention.attention.relative_position_bias."),
               ("beit.layers.", "beit.encoder.layer."), ("beit.shared_position_bias.", "beit.encoder.relative_position_bias.")]
    old = {}
    for k, v in new.items():
        for a, b in renames:
            k = k.replace(a, b)
        old[k] = v
    assert "beit.encoder.layer.0.attention.attention.query.weight" in old
    assert _normalize_beit_keys(old).keys() == new.keys()


def test_encoder_options_match_beit_config():
    enc = BEiTEncoder(28, 4, 1, 32, 2, 2, layer_scale_init_value=0.1)
    assert enc.use_shared_relative_position_bias and not enc.use_relative_position_bias
    assert enc.pos_embed is None and enc.blocks[0].gamma_1 is not None
    # no key bias: timm keeps q/v biases as parameters and k as a zero buffer
    names = dict(enc.blocks[0].attn.named_parameters())
    assert "q_bias" in names and "v_bias" in names and "k_bias" not in names
    # 3 extra table entries for cls->token, token->cls, cls->cls
    assert enc.rel_pos_bias.relative_position_bias_table.shape == (13 * 13 + 3, 2)
    enc2 = BEiTEncoder(28, 4, 1, 32, 1, 2, use_shared_relative_position_bias=False, use_relative_position_bias=True,
                       use_absolute_position_embeddings=True, layer_scale_init_value=0)
    assert enc2.rel_pos_bias is None and enc2.use_relative_position_bias and enc2.pos_embed is not None
    assert enc2.blocks[0].gamma_1 is None
    with pytest.raises(ValueError, match="layer_scale_init_value"):
        BEiTEncoder(28, 4, 1, 32, 1, 2, layer_scale_init_value=-1)


def test_attentions_and_hidden_states():
    enc = perturb_weights(BEiTEncoder(28, 4, 1, 32, 2, 4, use_relative_position_bias=True).eval())
    x = torch.randn(2, 1, 28, 28)
    plain = enc(x)
    out = enc(x, output_attentions=True, output_hidden_states=True)
    assert plain.attentions is None and plain.hidden_states is None
    assert len(out.attentions) == 2 and len(out.hidden_states) == 3
    for a in out.attentions:
        assert a.shape == (2, 4, 50, 50)
        assert torch.allclose(a.sum(-1), torch.ones(2, 4, 50), atol=1e-5)
    assert (out.last_hidden_state - plain.last_hidden_state).abs().max() < 1e-5
    # visible-only mode: keeping every token in order equals the full forward
    ids = torch.arange(49).expand(2, -1)
    assert (enc(x, ids_keep=ids).last_hidden_state - plain.last_hidden_state).abs().max() < 1e-5
    sub = enc(x, ids_keep=ids[:, :10], output_attentions=True)
    assert sub.last_hidden_state.shape == (2, 11, 32) and sub.attentions[0].shape == (2, 4, 11, 11)


def test_block_masking_counts():
    g = torch.Generator().manual_seed(0)
    m = BlockMasking(num_masking_patches=75, min_num_patches=16)(64, (14, 14), generator=g)
    counts = m.sum(1)
    assert m.shape == (64, 196) and m.dtype == torch.bool
    # a pass that adds nothing stops early, so a sample may get fewer than the target, never more
    assert (counts <= 75).all() and (counts > 0).all() and counts.float().mean() > 65
    assert len({tuple(r.tolist()) for r in m}) == 64  # different per image
    model = mimkit.create("beit_vit_tiny_patch4_28", embed_dim=32, depth=1, num_heads=2)
    x = torch.rand(16, 1, 28, 28)
    out = model(x, labels=torch.randint(0, 512, (16, 49)))
    c = out.mask.sum(1)
    assert (c <= 19).all() and (c >= 4).all()
    # noise: same meaning as MAE (the largest noise is hidden), fixed count
    noise = torch.rand(2, 49)
    mask = model.make_mask(x[:2], noise=noise)
    assert mask.sum(1).tolist() == [19, 19]
    assert torch.equal(mask, noise >= noise.sort(1, descending=True).values[:, 18:19])


def test_loss_goes_down_and_accuracy_is_logged():
    model = mimkit.create("beit_vit_tiny_patch4_28", embed_dim=32, depth=2, num_heads=2, vocab_size=16)
    # every patch of image i carries token c_i, which its visible patches reveal (brightness)
    cls = torch.arange(8) * 2
    x = cls.view(8, 1, 1, 1) / 16 + 0.05 * torch.randn(8, 1, 28, 28)
    labels = cls.view(8, 1).expand(8, 49)
    mask = model.make_mask(x)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    first = model(x, mask=mask, labels=labels)
    assert first.extra["mask_acc"].ndim == 0 and first.pred.shape == (int(mask.sum()), 16)
    for _ in range(40):
        loss = model(x, mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = model(x, mask=mask, labels=labels)
    assert last.loss < 0.6 * first.loss
    assert last.extra["mask_acc"] > max(0.5, float(first.extra["mask_acc"]))
    assert model.encode(x).shape == (8, 50, 32)


def _tokenizer(tmp_path, img_size=28, vocab=32):
    tok = mimkit.create("dvae_tiny_28", img_size=img_size, vocab_size=vocab, hidden_dim=16, code_dim=8)
    mimkit.save(tok, tmp_path / "tok")
    return tok


def test_tokenizer_targets_two_views_and_frozen(tmp_path):
    tok = _tokenizer(tmp_path, img_size=56)  # tokenizer's own view: 56 px -> 14x14 tokens
    model = mimkit.create("beit_vit_tiny_patch4_28", img_size=56, embed_dim=32, depth=1, num_heads=2,
                          vocab_size=None, num_masking_patches=60, tokenizer_path=str(tmp_path / "tok"))
    assert model.vocab_size == 32
    x = torch.randn(2, 1, 56, 56)
    out = model(x)
    mask = out.mask.bool()
    assert torch.equal(out.extra["labels"], tok.eval().encode_ids(x)[mask])
    # a different resolution: the tokenizer view is the same crop resized to grid * downsample
    small = torch.randn(2, 1, 28, 28)
    view = tokenizer_view(model.tokenizer, small, model.grid(small))
    assert view.shape == (2, 1, 28, 28) and torch.equal(view, small)
    big = torch.randn(2, 1, 112, 112)
    assert tokenizer_view(model.tokenizer, big, model.grid(big)).shape == (2, 1, 56 * 2, 56 * 2)
    # a supplied second view replaces the resize
    other = torch.randn(2, 1, 56, 56)
    assert torch.equal(model.tokenize(x, other), tok.encode_ids(other))
    out.loss.backward()
    assert all(p.grad is None for p in model.tokenizer.parameters())
    assert all(not p.requires_grad for p in model.tokenizer.parameters())
    model.train()
    assert not model.tokenizer.training and model.encoder.training
    from mimkit.train.module import param_groups

    trainable = {id(p) for g in param_groups(model, 0.05) for p in g["params"]}
    assert not trainable & {id(p) for p in model.tokenizer.parameters()}
    # saved with the tokenizer's architecture: loads after the tokenizer file is gone
    mimkit.save(model, tmp_path / "beit")
    (tmp_path / "tok" / "model.safetensors").unlink()
    back = mimkit.load(tmp_path / "beit")
    assert torch.equal(back.tokenize(x), model.tokenize(x))


def test_clear_errors(tmp_path):
    model = mimkit.create("beit_vit_tiny_patch4_28", embed_dim=32, depth=1, num_heads=2)
    x = torch.rand(2, 1, 28, 28)
    with pytest.raises(ValueError, match="mimkit tokenizer train"):
        model(x)
    with pytest.raises(ValueError, match="labels must be"):
        model(x, labels=torch.zeros(2, 10, dtype=torch.long))
    with pytest.raises(ValueError, match="label ids must lie"):
        model(x, labels=torch.full((2, 49), 512))
    with pytest.raises(ValueError, match="hides no patch"):
        model(x, mask=torch.zeros(2, 49, dtype=torch.bool), labels=torch.zeros(2, 49, dtype=torch.long))
    with pytest.raises(ValueError, match="num_masking_patches"):
        mimkit.create("beit_vit_tiny_patch4_28", num_masking_patches=60)
    _tokenizer(tmp_path)
    with pytest.raises(ValueError, match="vocab_size=32"):
        mimkit.create("beit_vit_tiny_patch4_28", embed_dim=32, depth=1, num_heads=2, tokenizer_path=str(tmp_path / "tok"))
    m = mimkit.create("beit_vit_tiny_patch4_28", embed_dim=32, depth=1, num_heads=2, vocab_size=None,
                      tokenizer_path=str(tmp_path / "tok"))
    with pytest.raises(ValueError, match="token grid matches"):
        m(x, tokenizer_images=torch.rand(2, 1, 56, 56))
    with pytest.raises(FileNotFoundError, match="mimkit tokenizer train"):
        mimkit.create("beit_vit_tiny_patch4_28", tokenizer_path=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="not a tokenizer"):
        mae = mimkit.create("mae_vit_tiny_patch4_28", embed_dim=32, depth=1, num_heads=2, decoder_depth=1)
        mimkit.save(mae, tmp_path / "mae")
        mimkit.create("beit_vit_tiny_patch4_28", tokenizer_path=str(tmp_path / "mae"))


def test_attention_maps_for_visualize():
    from mimkit.viz import attention_maps

    model = mimkit.create("beit_vit_tiny_patch4_28", embed_dim=32, depth=2, num_heads=4)
    maps = attention_maps(model, torch.rand(3, 1, 28, 28))  # cls -> patches of the last block, per head
    assert maps.shape == (3, 4, 7, 7)
    assert (maps >= 0).all() and (maps.sum((-2, -1)) <= 1 + 1e-5).all()
