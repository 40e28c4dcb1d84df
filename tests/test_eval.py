"""Evaluation protocols: weighted k-NN, linear probe, layer-wise lr decay, fine-tuning, and the
``mimkit eval`` / ``mimkit finetune`` commands on a tiny ImageFolder."""
import json
import math

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

import mimkit
from mimkit.eval.classifier import Classifier, layer_decay_param_groups, set_drop_path
from mimkit.eval.features import extract_features, pool
from mimkit.eval.knn import knn_accuracy, knn_predict
from mimkit.eval.linear import LinearProbeHead, fit_linear_probe


def tiny_mae(**kw):
    return mimkit.create("mae_vit_tiny_patch4_28", embed_dim=32, depth=3, num_heads=2, decoder_embed_dim=16,
                         decoder_depth=1, **kw)


def clusters(n_per, centers, noise, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for c, mu in enumerate(centers):
        xs.append(mu + noise * torch.randn(n_per, len(mu), generator=g))
        ys.append(torch.full((n_per,), c))
    return torch.cat(xs), torch.cat(ys)


# ---- k-NN ---------------------------------------------------------------------------------------
def test_knn_separable_clusters_near_perfect():
    g = torch.Generator().manual_seed(1)
    centers = torch.randn(5, 16, generator=g) * 3
    xtr, ytr = clusters(60, centers, 0.5, seed=2)
    xte, yte = clusters(30, centers, 0.5, seed=3)
    assert knn_accuracy(xtr, ytr, xte, yte) >= 0.99
    # chance level when the labels carry no information
    shuffled = ytr[torch.randperm(len(ytr), generator=g)]
    assert knn_accuracy(xtr, shuffled, xte, yte) < 0.5


def test_knn_vote_weighting_by_hand():
    # query along x; one very close neighbour of class 0 (cos 1.0) against two farther ones of class 1 (cos 0.6)
    train = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 2])
    q = torch.tensor([[2.0, 0.0]])  # features are L2-normalised: the scale must not matter
    # weights exp(1/0.07) = e^14.3 vs 2*exp(0.6/0.07) = 2e^8.6: class 0 wins although outnumbered
    assert math.exp(1 / 0.07) > 2 * math.exp(0.6 / 0.07)
    assert knn_predict(train, labels, q, k=3, temperature=0.07).tolist() == [0]
    # a hot temperature makes the votes (almost) equal: the majority, class 1, wins
    assert math.exp(1 / 100) < 2 * math.exp(0.6 / 100)
    assert knn_predict(train, labels, q, k=3, temperature=100.0).tolist() == [1]
    # k=1 is the nearest neighbour; the 4th (opposite) point never enters with k=3
    assert knn_predict(train, labels, -q, k=1).tolist() == [2]


def test_knn_errors():
    x, y = torch.randn(5, 3), torch.arange(5)
    with pytest.raises(ValueError, match="k must be"):
        knn_predict(x, y, x, k=6)
    with pytest.raises(ValueError, match="labels"):
        knn_predict(x, y[:4], x)


# ---- linear probe -------------------------------------------------------------------------------
@pytest.mark.parametrize("optimizer", ["sgd", "lars", "adamw"])
def test_linear_probe_learns_separable_problem(optimizer):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(24, 3, generator=g)
    x = torch.randn(1200, 24, generator=g) * 5 + 40  # far from standardised: the BatchNorm must handle it
    y = (x @ w).argmax(1)  # linearly separable by construction
    epochs = 30
    head, info = fit_linear_probe(x[:1000], y[:1000], x[1000:], y[1000:], epochs=epochs, batch_size=100,
                                  optimizer=optimizer, progress=False)
    assert info["acc"] >= 0.9, info
    assert isinstance(head[0], torch.nn.BatchNorm1d) and not head[0].affine
    assert sum(p.numel() for p in head.parameters()) == 24 * 3 + 3  # only the linear layer learns


def test_linear_probe_head_is_mae_protocol():
    h = LinearProbeHead(8, 4)
    assert isinstance(h[0], torch.nn.BatchNorm1d) and h[0].weight is None and h[0].bias is None
    assert h[1].in_features == 8 and h[1].out_features == 4


# ---- features -----------------------------------------------------------------------------------
def test_pool_and_swin_has_no_cls():
    tok = torch.arange(2 * 4 * 3, dtype=torch.float).reshape(2, 4, 3)
    assert torch.equal(pool(tok, "cls"), tok[:, 0])
    assert torch.allclose(pool(tok, "mean"), tok[:, 1:].mean(1))
    assert torch.allclose(pool(tok, "mean", cls_token=False), tok.mean(1))
    swin = mimkit.create("simmim_swin_tiny_window4_32", embed_dim=16, depths=(1, 1), num_heads=(1, 2))
    ds = TensorDataset(torch.randn(4, 1, 32, 32), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="no cls token"):
        extract_features(swin, ds, "cls", progress=False)
    f, _ = extract_features(swin, ds, "mean", progress=False)
    assert f.shape == (4, swin.encoder.num_features)


# ---- layer-wise lr decay ------------------------------------------------------------------------
def _scales(clf, decay):
    groups = layer_decay_param_groups(clf, 0.05, decay)
    by_id = {}
    for gr in groups:
        for p in gr["params"]:
            by_id[id(p)] = (gr["lr_scale"], gr["weight_decay"])
    return {n: by_id[id(p)] for n, p in clf.named_parameters() if p.requires_grad}


def test_layer_decay_scales_vit():
    m = tiny_mae()
    clf = Classifier(m.encoder, 10)
    depth, d = 3, 0.5
    s = _scales(clf, d)
    assert s["encoder.patch_embed.proj.weight"] == (d ** (depth + 1), 0.05)  # embeddings: layer 0
    assert s["encoder.cls_token"] == (d ** (depth + 1), 0.0)  # a token: no weight decay
    for i in range(depth):
        assert s[f"encoder.blocks.{i}.attn.qkv.weight"] == (d ** (depth - i), 0.05)  # block i = layer i + 1
        assert s[f"encoder.blocks.{i}.norm1.weight"][0] == d ** (depth - i)
    assert s["encoder.norm.weight"][0] == 1.0
    assert s["head.weight"] == (1.0, 0.05) and s["head.bias"] == (1.0, 0.0)
    assert "encoder.pos_embed" not in s  # fixed sin-cos: not trained
    # every trainable parameter is in exactly one group
    n_grouped = sum(len(g["params"]) for g in layer_decay_param_groups(clf, 0.05, d))
    assert n_grouped == sum(1 for p in clf.parameters() if p.requires_grad)


def test_layer_decay_scales_beit_and_swin():
    beit = mimkit.create("beit_vit_tiny_patch4_28", embed_dim=32, depth=2, num_heads=2, vocab_size=16)
    s = _scales(Classifier(beit.encoder, 3), 0.5)
    assert s["encoder.rel_pos_bias.relative_position_bias_table"][0] == 0.5 ** 3
    assert s["encoder.blocks.1.attn.proj.weight"][0] == 0.5
    swin = mimkit.create("simmim_swin_tiny_window4_32", embed_dim=16, depths=(1, 2), num_heads=(1, 2))
    clf = Classifier(swin.encoder, 3, pool="mean")
    assert clf.depth == 3
    s = _scales(clf, 0.5)
    assert s["encoder.patch_embed.proj.weight"][0] == 0.5 ** 4
    assert s["encoder.layers.0.blocks.0.attn.qkv.weight"][0] == 0.5 ** 3
    assert s["encoder.layers.1.downsample.reduction.weight"][0] == 0.5 ** 2  # merges with its stage's first block
    assert s["encoder.layers.1.blocks.1.mlp.fc1.weight"][0] == 0.5
    assert s["fc_norm.weight"][0] == s["head.weight"][0] == 1.0
    with pytest.raises(ValueError, match="no cls token"):
        Classifier(swin.encoder, 3, pool="cls")


def test_drop_path_set_on_a_copy():
    m = tiny_mae()
    clf = Classifier(m.encoder, 4)
    rates = set_drop_path(clf.encoder, 0.2)
    assert rates == pytest.approx([0.0, 0.1, 0.2])
    assert type(clf.encoder.blocks[2].drop_path1).__name__ == "DropPath"
    assert clf.encoder.blocks[2].drop_path1.drop_prob == pytest.approx(0.2)
    assert isinstance(clf.encoder.blocks[0].drop_path2, torch.nn.Identity)
    assert isinstance(m.encoder.blocks[2].drop_path1, torch.nn.Identity)  # the source model is untouched


# ---- fine-tuning --------------------------------------------------------------------------------
def _stripes(n, seed):
    """Two classes: bright top half or bright bottom half (plus noise)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 1, 28, 28, generator=g) * 0.3
    x[y == 0, :, :14] += 1.0
    x[y == 1, :, 14:] += 1.0
    return TensorDataset(x, y)


def test_finetune_reduces_loss_and_leaves_model_alone(tmp_path):
    from mimkit.eval.finetune import finetune, load_classifier

    m = tiny_mae().eval()  # as loaded from disk: fine-tuning must still train with drop path on
    before = {k: v.clone() for k, v in m.state_dict().items()}
    train, test = _stripes(192, 0), _stripes(96, 1)
    clf0 = Classifier(m.encoder, 2)
    with torch.no_grad():
        x, y = test.tensors
        loss0 = torch.nn.functional.cross_entropy(clf0.eval()(x), y).item()
    import lightning as L

    modes = []

    class Probe(L.Callback):  # records whether every module (drop path, dropout, ...) is in training mode
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            modes.append(all(mod.training for mod in pl_module.classifier.modules()))

    clf, res = finetune(m, train, test, 2, epochs=4, batch_size=32, blr=3e-2, drop_path=0.1, label_smoothing=0.0,
                        warmup_epochs=0.5, progress=False, out_dir=tmp_path / "ft",
                        trainer_kwargs={"callbacks": [Probe()]})
    assert modes and all(modes)
    assert loss0 == pytest.approx(math.log(2), abs=0.01)  # tiny head init: uniform predictions
    assert res["test_loss"] < loss0 - 0.2, res
    assert res["acc"] >= 0.9, res
    assert res["train_loss_last_epoch"] < res["train_loss_first_epoch"]
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    # saved and reloaded classifier gives the same logits
    again = load_classifier(tmp_path / "ft")
    with torch.no_grad():
        assert torch.allclose(again(x), clf.eval()(x), atol=1e-5)


def test_finetune_with_mixup_runs_and_rejects_tiny_dataset():
    from mimkit.eval.finetune import finetune

    m = tiny_mae()
    ds = _stripes(64, 2)
    _, res = finetune(m, ds, ds, 2, epochs=1, batch_size=16, mixup=0.8, cutmix=1.0, progress=False, pool="mean")
    assert 0 <= res["acc"] <= 1 and math.isfinite(res["test_loss"])
    with pytest.raises(ValueError, match="fewer than batch_size"):
        finetune(m, ds, ds, 2, batch_size=128, progress=False)


def test_finetune_ema_tests_and_returns_the_moving_average_of_the_weights():
    """ema=D: timm's ModelEmaV3 with warm-up (decay min(1 - t^(-2/3), D) after step t, the first step copied),
    fed the weights after every optimiser step; the average is what is tested and returned."""
    import lightning as L

    from mimkit.eval.finetune import classifier_accuracy, finetune

    seen = []

    class Weights(L.Callback):  # the trained (not averaged) weights after each optimiser step
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append({k: v.detach().clone() for k, v in pl_module.classifier.named_parameters()})

    train, test = _stripes(160, 0), _stripes(64, 1)
    kw = dict(epochs=2, batch_size=32, blr=3e-2, warmup_epochs=0.5, progress=False)
    torch.manual_seed(0)
    clf, res = finetune(tiny_mae(), train, test, 2, ema=0.6, trainer_kwargs={"callbacks": [Weights()]}, **kw)
    assert len(seen) == res["steps"] == 10 and res["ema"] == 0.6
    avg = dict(seen[0])
    for t, w in enumerate(seen[1:], start=2):
        d = min(1 - t ** (-2 / 3), 0.6)
        avg = {k: d * avg[k] + (1 - d) * w[k] for k in avg}
    got = dict(clf.named_parameters())
    assert all(torch.allclose(got[k], avg[k], atol=1e-6) for k in avg)
    assert not torch.allclose(got["head.weight"], seen[-1]["head.weight"])  # not the last weights
    assert res["acc"] == pytest.approx(classifier_accuracy(clf, test))  # the test read the average
    torch.manual_seed(0)  # the same initial weights, the same seed, no average: the last weights
    plain, _ = finetune(tiny_mae(), train, test, 2, **kw)
    assert torch.allclose(dict(plain.named_parameters())["head.weight"], seen[-1]["head.weight"], atol=1e-6)
    with pytest.raises(ValueError, match="ema is the decay"):
        finetune(tiny_mae(), train, test, 2, ema=1.0, **kw)


def test_finetune_flip_tta_scores_an_image_and_its_mirror_alike():
    """flip_tta: every score averages the logits of an image and its horizontal mirror, so an image and its
    mirror get one prediction. On classes told apart only by side (bright left / bright right half), exactly
    one of each mirrored pair is right; without it the classifier tells them apart. score_flips: the final pass
    scores the same weights both ways (what classifier_accuracy with and without flip_tta reads)."""
    from mimkit.eval.finetune import classifier_accuracy, classifier_predictions, finetune

    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 1, 28, 28, generator=g) * 0.3
    y = torch.arange(96) % 2
    x[y == 0, :, :, :14] += 1.0
    x[y == 1, :, :, 14:] += 1.0
    train = TensorDataset(x, y)
    test = TensorDataset(torch.cat([x[:24], x[:24].flip(-1)]), torch.cat([y[:24], 1 - y[:24]]))
    kw = dict(epochs=3, batch_size=32, blr=3e-2, warmup_epochs=0.5, progress=False, keep_correct=True)
    torch.manual_seed(0)
    clf, res = finetune(tiny_mae(), train, test, 2, flip_tta=True, score_flips=True, **kw)
    right = res["correct"]
    assert res["flip_tta"] is True and bool((right[:24] ^ right[24:]).all())
    assert res["acc_by_flip"]["flip"] == res["acc"] == 0.5
    assert res["acc_by_flip"]["plain"] == pytest.approx(classifier_accuracy(clf, test), abs=1e-6)
    assert torch.equal(classifier_predictions(clf, test, flip_tta=True) == test.tensors[1], right)
    torch.manual_seed(0)
    clf, plain = finetune(tiny_mae(), train, test, 2, score_flips=True, **kw)
    assert plain["flip_tta"] is False and plain["acc"] > 0.9 and plain["acc_by_flip"]["plain"] == plain["acc"]
    assert plain["acc_by_flip"]["flip"] == pytest.approx(classifier_accuracy(clf, test, flip_tta=True), abs=1e-6) == 0.5


# ---- command line -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """A tiny two-class ImageFolder (train/ and test/) of 28x28 grayscale PNGs."""
    from PIL import Image

    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for split, n in (("train", 24), ("test", 8)):
        for c, name in enumerate(("top", "bottom")):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(n):
                a = rng.integers(0, 60, (28, 28)).astype(np.uint8)
                if c == 0:
                    a[:14] += 150
                else:
                    a[14:] += 150
                Image.fromarray(a, "L").save(d / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def saved_mae(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("ckpt") / "mae"
    mimkit.save(tiny_mae(), d)
    return d


def test_cli_eval_knn_and_linear(image_folder, saved_mae, tmp_path, capsys):
    from mimkit.cli import main

    out = tmp_path / "knn.json"
    assert main(["eval", "knn", "--checkpoint", str(saved_mae), "--data", str(image_folder), "--pool", "both",
                 "--k", "5", "--out", str(out), "--no-progress"]) == 0
    r = json.loads(out.read_text())
    assert r["train_images"] == 48 and r["test_images"] == 16 and set(r["results"]) == {"cls", "mean"}
    assert all(0 <= v["acc"] <= 1 for v in r["results"].values())
    assert "| 5-NN" in capsys.readouterr().out
    out = tmp_path / "lin.json"
    assert main(["eval", "linear", "--checkpoint", str(saved_mae), "--data", str(image_folder), "--epochs", "20",
                 "--probe-batch-size", "16", "--out", str(out), "--no-progress"]) == 0
    r = json.loads(out.read_text())
    assert set(r["results"]) == {"cls"} and r["results"]["cls"]["acc"] >= 0.75  # the halves are easy to tell apart


def test_cli_finetune_and_errors(image_folder, saved_mae, tmp_path, capsys):
    from mimkit.cli import main

    out = tmp_path / "ft.json"
    assert main(["finetune", "--checkpoint", str(saved_mae), "--data", str(image_folder), "--epochs", "1",
                 "--batch-size", "16", "--out", str(out), "--save-dir", str(tmp_path / "ft"), "--no-progress"]) == 0
    r = json.loads(out.read_text())
    assert 0 <= r["results"]["acc"] <= 1 and r["results"]["layer_decay"] == 0.75
    assert (tmp_path / "ft" / "classifier.safetensors").exists()
    assert r["results"]["flip_tta"] is False
    # a budget in minutes instead of epochs, with an EMA of the weights, scored with flip averaging
    assert main(["finetune", "--checkpoint", str(saved_mae), "--data", str(image_folder), "--minutes", "0.05",
                 "--ema", "0.9", "--flip-tta", "--batch-size", "16", "--out", str(out), "--no-progress"]) == 0
    r = json.loads(out.read_text())["results"]
    assert r["budget_minutes"] == 0.05 and r["ema"] == 0.9 and r["steps"] >= 1 and r["flip_tta"] is True
    # clear errors: a folder without train/test, a missing checkpoint, cls pooling on Swin
    flat = tmp_path / "flat"
    flat.mkdir()
    assert main(["eval", "knn", "--checkpoint", str(saved_mae), "--data", str(flat)]) == 2
    assert "train/" in capsys.readouterr().err
    assert main(["eval", "knn", "--checkpoint", str(tmp_path / "nope")]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_cli_eval_accepts_hf_directory(image_folder, tmp_path):
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    from mimkit.cli import main

    cfg = ViTMAEConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=28, patch_size=4, num_channels=1, decoder_hidden_size=16,
                       decoder_num_hidden_layers=1, decoder_num_attention_heads=2, decoder_intermediate_size=32,
                       layer_norm_eps=1e-6)
    ViTMAEForPreTraining(cfg).save_pretrained(tmp_path / "hf")
    out = tmp_path / "r.json"
    assert main(["eval", "knn", "--checkpoint", f"hf:{tmp_path / 'hf'}", "--data", str(image_folder), "--out",
                 str(out), "--no-progress"]) == 0
    assert 0 <= json.loads(out.read_text())["results"]["cls"]["acc"] <= 1


def test_timm_encoder_through_from_timm_and_cli(image_folder, tmp_path):
    import timm

    from mimkit.cli import main
    from mimkit.interop.timm import from_timm, save_timm

    tm = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=28, patch_size=4, in_chans=1,
                           embed_dim=32, depth=2, num_heads=2, num_classes=0).eval()
    model = from_timm(tm)
    x = torch.randn(3, 1, 28, 28)
    ds = TensorDataset(x, torch.zeros(3, dtype=torch.long))
    f, _ = extract_features(model, ds, "cls", progress=False)
    with torch.no_grad():
        assert torch.allclose(f, tm(x), atol=1e-5)  # timm's pooled (cls) feature
    assert _scales(Classifier(model.encoder, 2), 0.5)["encoder.blocks.0.mlp.fc1.weight"][0] == 0.25
    save_timm(model, tmp_path / "timm")
    out = tmp_path / "r.json"
    assert main(["eval", "knn", "--checkpoint", f"timm:{tmp_path / 'timm'}", "--data", str(image_folder), "--out",
                 str(out), "--no-progress"]) == 0
    assert json.loads(out.read_text())["feature_dim"] == 32


@pytest.mark.parametrize("chans,size", [(1, 28), (3, 32)])
def test_pretransform_equals_per_item_transform(chans, size):
    """Fashion-MNIST evaluation images are transformed once in batches; each item must equal the
    per-item transform (resize, crop, scale, normalise, grey -> RGB)."""
    from mimkit.data import FMNIST_MEAN, FMNIST_STD
    from mimkit.eval.data import image_transform, pretransform

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (37, 28, 28), generator=g, dtype=torch.uint8)
    mean, std = list(FMNIST_MEAN) * chans, list(FMNIST_STD) * chans
    tf = image_transform(size, mean, std, False, (0.2, 1.0), True, chans, gray_source=True)
    ready = pretransform(images, tf, chans, size, chunk=10)
    assert ready.shape == (37, chans, size, size) and ready.dtype == torch.float32
    for i in (0, 9, 10, 36):
        torch.testing.assert_close(ready[i], tf(images[i].unsqueeze(0)), atol=1e-6, rtol=0)
    assert pretransform(images, tf, chans, size, max_bytes=1000) is None  # too big: stay lazy


def test_balanced_label_subsets():
    from mimkit.eval.data import balanced_indices

    labels = torch.arange(10).repeat_interleave(30)[torch.randperm(300)]
    idx = balanced_indices(labels, 7, seed=3)
    assert len(idx) == 70 and torch.equal(torch.bincount(labels[idx]), torch.full((10,), 7))
    assert torch.equal(idx, balanced_indices(labels, 7, seed=3)) and not torch.equal(idx, balanced_indices(labels, 7, seed=4))
    assert set(balanced_indices(labels, 3, seed=3).tolist()) != set(idx[:30].tolist())
    with pytest.raises(ValueError, match="class 0 has only 30 training images.*at most 30"):
        balanced_indices(labels, 31)
    with pytest.raises(ValueError, match="positive integer"):
        balanced_indices(labels, 0)


def test_cli_scarce_labels(image_folder, saved_mae, tmp_path, capsys):
    """--labels-per-class N: a balanced subset of the training labels, fixed by --seed; the test set
    is unchanged."""
    from mimkit.cli import main

    for protocol, extra in (("knn", ["--k", "3"]), ("linear", ["--epochs", "5", "--probe-batch-size", "4"])):
        out = tmp_path / f"{protocol}.json"
        assert main(["eval", protocol, "--checkpoint", str(saved_mae), "--data", str(image_folder),
                     "--labels-per-class", "5", "--seed", "1", "--out", str(out), "--no-progress", *extra]) == 0
        r = json.loads(out.read_text())
        assert r["train_images"] == 10 and r["test_images"] == 16 and r["labels_per_class"] == 5
    out = tmp_path / "ft.json"
    assert main(["finetune", "--checkpoint", str(saved_mae), "--data", str(image_folder), "--epochs", "1",
                 "--batch-size", "4", "--labels-per-class", "6", "--out", str(out), "--no-progress"]) == 0
    assert json.loads(out.read_text())["results"]["train_images"] == 12
    assert main(["eval", "knn", "--checkpoint", str(saved_mae), "--data", str(image_folder),
                 "--labels-per-class", "25"]) == 2
    assert "class 0 has only 24 training images" in capsys.readouterr().err


def test_finetune_fractional_epochs_stop_after_their_share_of_steps():
    """An equal-time baseline asks for e.g. 1.5 epochs: 6 batches per epoch -> 9 optimiser steps."""
    from mimkit.eval.finetune import finetune

    train, test = _stripes(192, 0), _stripes(32, 1)
    _, res = finetune(tiny_mae(), train, test, 2, epochs=1.5, batch_size=32, warmup_epochs=0.5, progress=False)
    assert res["steps"] == 9, res
    _, res = finetune(tiny_mae(), train, test, 2, epochs=2, batch_size=32, warmup_epochs=0.5, progress=False)
    assert res["steps"] == 12, res


def test_tune_finetune_chooses_on_validation_with_equal_trials_and_resumes(monkeypatch):
    """Every trial of a side runs on the fit set and is scored on the validation set (never a test set);
    the best is chosen (the untuned recipe wins ties); kept trials are not run again; both sides get as
    many trials."""
    from mimkit.eval import finetune as ft

    fit_set, val_set = _stripes(64, 0), _stripes(16, 1)
    calls = []

    def fake(model, train, scored_on, num_classes, minutes, **kw):
        calls.append((train, scored_on, minutes, kw))
        acc = 0.5 + kw.get("blr", 2e-3) * 10 + 0.3 * (kw.get("mixup", 0) > 0) * (kw["layer_decay"] == 1.0)
        return {"acc": acc, "minutes": minutes, "steps": 3}

    monkeypatch.setattr(ft, "finetune_for_minutes", fake)
    assert len(ft.FINETUNE_TRIALS["pretrained"]) == len(ft.FINETUNE_TRIALS["scratch"])
    got = ft.tune_finetune(None, "pretrained", fit_set, val_set, 2, 0.5, seed=3)
    assert [c[0] for c in calls] == [fit_set] * 4 and all(c[1] is val_set for c in calls)
    assert got["chosen"]["trial"] == "blr4e-3" and got["chosen"]["recipe"] == {"layer_decay": 0.75, "blr": 4e-3}
    assert got["chosen"]["val_acc"] == max(t["val_acc"] for t in got["trials"])
    calls.clear()
    scratch = ft.tune_finetune(None, "scratch", fit_set, val_set, 2, 1.0)
    assert scratch["chosen"]["trial"] == "mixup" and scratch["chosen"]["recipe"]["layer_decay"] == 1.0
    assert all(c[3]["layer_decay"] == 1.0 for c in calls) and {c[2] for c in calls} == {1.0}
    # resume: kept trials are not run again, and new ones are handed to on_trial
    calls.clear()
    kept = {t["trial"]: t for t in got["trials"][:2]}
    seen = []
    again = ft.tune_finetune(None, "pretrained", fit_set, val_set, 2, 0.5, done=kept, on_trial=seen.append)
    assert len(calls) == 2 and [t["trial"] for t in seen] == ["ld0.9", "mixup"]
    assert again["chosen"] == got["chosen"]
    # ties: the first (untuned) recipe stays
    monkeypatch.setattr(ft, "finetune_for_minutes", lambda *a, **k: {"acc": 0.7, "minutes": 0.1, "steps": 1})
    assert ft.tune_finetune(None, "scratch", fit_set, val_set, 2, 0.1)["chosen"]["trial"] == "base"
    with pytest.raises(ValueError, match="side must be one of"):
        ft.tune_finetune(None, "imagenet", fit_set, val_set, 2, 0.1)


def test_tune_finetune_chooses_flip_averaging_on_the_chosen_trials_own_weights(monkeypatch):
    """choose_flip: every trial is scored both ways (score_flips), the trial is chosen as before, and flip
    averaging joins its recipe only where its own weights read higher with it (a tie: without); no trial added."""
    from mimkit.eval import finetune as ft

    fit_set, val_set = _stripes(64, 0), _stripes(16, 1)
    flips = {2e-3: 0.1, 4e-3: 0.0}  # what flip averaging adds, by learning rate

    def fake(model, train, scored_on, num_classes, minutes, **kw):
        assert kw["score_flips"] and "flip_tta" not in kw
        acc = 0.5 + kw.get("blr", 2e-3) * 10 - 0.2 * (kw.get("mixup", 0) > 0)
        return {"acc": acc, "acc_by_flip": {"plain": acc, "flip": acc + flips[kw.get("blr", 2e-3)]}, "minutes": 1,
                "steps": 3}

    monkeypatch.setattr(ft, "finetune_for_minutes", fake)
    got = ft.tune_finetune(None, "pretrained", fit_set, val_set, 2, 0.5, choose_flip=True)
    assert len(got["trials"]) == 4 and got["chosen"]["trial"] == "blr4e-3"  # the base read 0.62 with flip: not a choice
    assert got["chosen"]["recipe"] == {"layer_decay": 0.75, "blr": 4e-3} and got["chosen"]["val_acc"] == 0.54  # a tie
    flips[4e-3] = 0.01
    got = ft.tune_finetune(None, "pretrained", fit_set, val_set, 2, 0.5, choose_flip=True)
    assert got["chosen"]["recipe"] == {"layer_decay": 0.75, "blr": 4e-3, "flip_tta": 1.0}
    assert got["chosen"]["val_acc"] == pytest.approx(0.55) and got["chosen"]["val_acc_by_flip"]["plain"] == 0.54
    with pytest.raises(ValueError, match="not scored both ways"):  # a kept trial from before score_flips
        ft.tune_finetune(None, "pretrained", fit_set, val_set, 2, 0.5, choose_flip=True,
                         done={t["trial"]: {k: v for k, v in t.items() if k != "val_acc_by_flip"} for t in got["trials"]})


def test_best_of_trials_resumes_keeps_first_of_equals_and_rejects_none():
    from mimkit.eval.trials import best_of_trials

    ran, kept = [], []

    def run(key, spec):
        ran.append(key)
        return {"key": key, "score": spec}

    best, recs = best_of_trials([("a", 0.5), ("b", 0.7), ("c", 0.7)], run, "score", done={"a": {"key": "a", "score": 0.9}},
                                on_trial=kept.append)
    assert ran == ["b", "c"] and [r["key"] for r in kept] == ["b", "c"] and best["key"] == "a"
    best, _ = best_of_trials([("x", 0.3), ("y", 0.3)], run, "score")
    assert best["key"] == "x"
    with pytest.raises(ValueError, match="at least one trial"):
        best_of_trials([], run, "score")


def test_choice_sets_fit_on_a_view_of_the_training_rows_and_score_on_the_validation_rows():
    from types import SimpleNamespace

    from mimkit.data import TensorImages
    from mimkit.eval.finetune import choice_sets
    from mimkit.eval.splits import validation_split

    images, labels = torch.randn(30, 1, 8, 8), torch.arange(30) % 3
    data = SimpleNamespace(train=TensorImages(images, labels))
    fit_rows, val_rows = validation_split(labels, 0.2, seed=0)
    fit, val = choice_sets(data, fit_rows, val_rows)
    assert fit.dataset.images is images  # no copy of the training images
    assert len(fit) == len(fit_rows) and len(val) == len(val_rows) == 6
    assert sorted(fit.indices) == fit_rows.tolist() and not set(fit.indices) & set(val_rows.tolist())
    assert torch.equal(val.labels, labels[val_rows]) and torch.equal(val.images, images[val_rows])
    assert fit[0][0].shape == (1, 8, 8) and int(fit[0][1]) == int(labels[fit_rows[0]])  # augmented, its own label


def test_finetune_for_minutes_reads_the_test_set_once_and_keeps_which_images_it_got_right(monkeypatch):
    """The per-image correctness comes from the same single test pass that gives the accuracy (no second
    prediction pass), and it equals the fine-tuned classifier's own predictions."""
    from mimkit.eval import finetune as ft

    train, test = _stripes(64, 0), _stripes(40, 1)
    calls = []
    real = ft.classifier_predictions
    monkeypatch.setattr(ft, "classifier_predictions", lambda *a, **k: calls.append(1) or real(*a, **k))
    r = ft.finetune_for_minutes(tiny_mae(), train, test, 2, 0.05, batch_size=16, progress=False, keep_classifier=True)
    assert not calls and r["correct"].dtype == torch.bool and r["correct"].shape == (40,)
    assert float(r["correct"].float().mean()) == pytest.approx(r["acc"], abs=1e-6)
    assert torch.equal(r["correct"], real(r["classifier"], test) == test.tensors[1])
