"""What the protocols choose among and how fine-tuning stops: the frozen poolings (both, last4), early
stopping of fine-tuning on held-out labels, scarce-label schedules."""
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

import mimkit
from mimkit.eval.features import check_pool, extract_features, frozen_pools

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_mae():
    return mimkit.create("mae_vit_tiny_patch4_28", embed_dim=32, depth=5, num_heads=2, decoder_embed_dim=16,
                         decoder_depth=1)


def test_both_and_last4_pools_are_what_they_say():
    m = tiny_mae().eval()
    x = torch.randn(6, 1, 28, 28)
    feats, _ = extract_features(m, TensorDataset(x, torch.zeros(6)), frozen_pools(m), 4, progress=False)
    assert frozen_pools(m) == ("cls", "mean", "both", "last4", "tokens")
    with torch.no_grad():
        out = m.encoder(x, output_hidden_states=True)
    tok = out.last_hidden_state
    assert torch.allclose(feats["both"], torch.cat([tok[:, 0], tok[:, 1:].mean(1)], 1), atol=1e-6)
    # hidden_states = inputs of blocks 0..4 and the normed output: the outputs of blocks 1..4 are
    # hidden_states[2:5] and the last block's output before the final norm
    with torch.no_grad():
        last = m.encoder.blocks[-1](out.hidden_states[-2])
    outs = [*out.hidden_states[2:5], last]
    want = torch.cat([torch.nn.functional.layer_norm(t, t.shape[-1:])[:, 1:].mean(1) for t in outs], 1)
    assert feats["last4"].shape == (6, 4 * 32) and torch.allclose(feats["last4"], want, atol=1e-5)
    assert not m.encoder.blocks[-1]._forward_hooks  # the taps are removed afterwards
    # tokens: every patch token of the final output (7x7 grid), layer-normalised without affine, in grid order
    want = torch.nn.functional.layer_norm(tok, tok.shape[-1:])[:, 1:].reshape(6, 7, 7, 32).permute(0, 3, 1, 2)
    assert feats["tokens"].shape == (6, 32 * 49) and torch.allclose(feats["tokens"], want.flatten(1), atol=1e-5)


@pytest.mark.parametrize("recipe", ["mae_vit_tiny_patch4_28", "simmim_vit_tiny_patch4_28", "beit_vit_tiny_patch4_28",
                                    "maskfeat_vit_tiny_patch4_28", "data2vec2_vit_tiny_patch4_28",
                                    "ijepa_vit_tiny_patch4_28", "ibot_vit_tiny_patch4_28"])
def test_every_method_gives_every_frozen_pooling_it_offers(recipe):
    """What the report extracts from each method: ``encode`` puts exactly the encoder's prefix tokens (a class
    token or none: I-JEPA) before the patch tokens, so mean and the token map read the patches alone (I-JEPA's
    15-minute curve point once failed here: its encode put a mean token in front that no one counted)."""
    extra = {"top_k_layers": 2} if recipe.startswith("data2vec2") else {}  # its targets average the top blocks
    m = mimkit.create(recipe, embed_dim=32, depth=2, num_heads=2, **extra).eval()
    x = torch.randn(3, 1, 28, 28)
    pools = frozen_pools(m)
    feats, _ = extract_features(m, TensorDataset(x, torch.zeros(3)), pools, 4, progress=False)
    with torch.no_grad():
        tok = m.feature_encoder()(x).last_hidden_state
    patches = tok[:, -49:]
    assert tok.shape[1] == 49 + (1 if "cls" in pools else 0) and torch.equal(m.encode(x), tok)
    assert torch.allclose(feats["mean"], patches.mean(1), atol=1e-6)
    want = torch.nn.functional.layer_norm(patches, (32,)).reshape(3, 7, 7, 32).permute(0, 3, 1, 2).flatten(1)
    assert torch.allclose(feats["tokens"], want, atol=1e-5) and feats["last4"].shape == (3, 2 * 32)
    if "cls" in pools:
        assert torch.equal(feats["cls"], tok[:, 0])


def test_tokens_pool_to_at_most_a_7x7_grid():
    from mimkit.eval.features import token_map

    tok = torch.randn(2, 1 + 14 * 14, 8)
    got = token_map(tok, (14, 14), prefix=1)
    normed = torch.nn.functional.layer_norm(tok, (8,))[:, 1:].reshape(2, 14, 14, 8).permute(0, 3, 1, 2)
    assert got.shape == (2, 8 * 49) and torch.allclose(got, torch.nn.functional.avg_pool2d(normed, 2).flatten(1), atol=1e-5)
    wide = token_map(torch.randn(2, 1 + 14 * 14, 768), (14, 14), prefix=1)  # a ViT-B: 3x3 cells, <= 8192 numbers
    assert wide.shape == (2, 768 * 9)


def test_swin_has_only_mean_pooling():
    m = mimkit.create("simmim_swin_tiny_window4_32", embed_dim=16, depths=(1, 1), num_heads=(1, 2))
    assert frozen_pools(m) == ("mean",)
    for how in ("both", "last4", "tokens"):
        with pytest.raises(ValueError, match="use pool 'mean'"):
            check_pool(m, how, frozen=True)
    with pytest.raises(ValueError, match="pool must be one of"):
        check_pool(m, "last4")  # a frozen-feature pooling, not a classifier's


def _stripes(n, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = 0.3 * torch.randn(n, 1, 28, 28, generator=g)
    x[y == 1, :, :, :14] += 1.5
    return TensorDataset(x, y)


def test_early_stopping_keeps_the_best_validation_epoch():
    from mimkit.eval.finetune import classifier_accuracy, finetune

    m = tiny_mae()
    train, val, test = _stripes(96, 0), _stripes(64, 1), _stripes(64, 2)
    clf, res = finetune(m, train, test, 2, epochs=4, batch_size=32, blr=3e-2, warmup_epochs=0.5, progress=False,
                        val_dataset=val)
    assert len(res["val_scores"]) == 4 and res["val_acc"] == pytest.approx(max(res["val_scores"]), abs=1e-5)
    assert res["best_epoch"] == res["val_scores"].index(max(res["val_scores"])) + 1
    assert classifier_accuracy(clf, val) == pytest.approx(res["val_acc"], abs=1e-6)  # the kept weights are the best
    assert classifier_accuracy(clf, test) == pytest.approx(res["acc"], abs=1e-6)


def test_scarce_label_schedules_fit_their_size():
    from mimkit.eval.finetune import scarce_label_schedule

    small, large = scarce_label_schedule(600), scarce_label_schedule(6000)
    assert small["epochs"] == 50 and large["epochs"] == 10 and small["batch_size"] < large["batch_size"]
    assert small["crop_scale"][0] < large["crop_scale"][0] and small["patience"] >= 3
    assert 10 <= scarce_label_schedule(60000)["epochs"] and scarce_label_schedule(10)["epochs"] == 100
