"""The protocols' fairness rules: splits drawn per class (never "the last rows"), scarce subsets from the
fitting rows with every class, choices with N labels per class made with those labels only, choices on
validation never on test, raw pixels choosing their preprocessing, and the intervals and verdicts."""
import math

import pytest
import torch

from mimkit.eval import protocols
from mimkit.eval.protocols import Settings, choose, compare, evaluate_row, raw_vectors, summarise
from mimkit.eval.splits import class_counts, scarce_subsets, stratified_folds, validation_split
from mimkit.eval.stats import accuracy_interval, draws_difference, paired_difference, verdict

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = Settings(probe_epochs=5, max_probe_epochs=10, cs=(0.1, 1.0), blrs=(0.1, 0.4), logreg_iters=200)


def sorted_labels(per_class=(30, 30, 30, 12)):
    """Labels of a class-sorted folder: all of class 0, then all of class 1, ..."""
    return torch.cat([torch.full((n,), c) for c, n in enumerate(per_class)])


def test_validation_is_drawn_from_every_class_of_a_sorted_folder():
    y = sorted_labels()
    fit, val = validation_split(y, 1 / 6, seed=0)
    assert class_counts(y, val) == {"0": 5, "1": 5, "2": 5, "3": 2}  # round(n / 6) of each class
    assert set(fit.tolist()) | set(val.tolist()) == set(range(len(y))) and not set(fit.tolist()) & set(val.tolist())
    again, other = validation_split(y, 1 / 6, seed=0)[1], validation_split(y, 1 / 6, seed=1)[1]
    assert torch.equal(again, val) and not torch.equal(other, val)
    with pytest.raises(ValueError, match="class 1 has 1 training image"):
        validation_split(torch.tensor([0, 0, 0, 1]), 0.5)


def test_scarce_subsets_hold_every_class_and_name_the_short_one():
    y = sorted_labels()
    fit, _ = validation_split(y, 1 / 6, seed=0)
    subs = scarce_subsets(y, fit, 4, draws=3, seed=0)
    assert len(subs) == 3 and len({tuple(s.tolist()) for s in subs}) == 3  # three different draws
    for s in subs:
        assert set(s.tolist()) <= set(fit.tolist()) and class_counts(y, s) == {"0": 4, "1": 4, "2": 4, "3": 4}
    with pytest.raises(ValueError, match="class 'sneaker' has 10 training images outside the validation split"):
        scarce_subsets(y, fit, 11, class_names=["a", "b", "c", "sneaker"])


def test_folds_inside_a_subset_are_stratified():
    y = sorted_labels((6, 6, 3))
    folds = stratified_folds(y, k=3, seed=0)
    assert len(folds) == 3
    for tr, held in folds:
        assert torch.bincount(y[held], minlength=3).tolist() == [2, 2, 1]
        assert not set(tr.tolist()) & set(held.tolist()) and len(tr) + len(held) == len(y)
    assert len(stratified_folds(y, k=5)) == 3  # no more folds than the smallest class has rows
    assert stratified_folds(torch.tensor([0, 0, 1]), k=3) == []  # a class of one: nothing to hold out


def _trap(n=600, nt=200, seed=0):
    """Vector 'good' separates the classes on the training rows but is noise on test; 'trap' is noise on
    the training rows but perfect on test. A choice that never reads the test set takes 'good'."""
    g = torch.Generator().manual_seed(seed)
    ytr, yte = torch.arange(n) % 3, torch.arange(nt) % 3
    centres = torch.eye(3) * 4
    tr = {"good": centres[ytr] + 0.5 * torch.randn(n, 3, generator=g), "trap": torch.randn(n, 3, generator=g)}
    te = {"good": torch.randn(nt, 3, generator=g), "trap": centres[yte] + 0.1 * torch.randn(nt, 3, generator=g)}
    return tr, ytr, te, yte


def test_choices_are_made_on_validation_and_the_test_set_read_once_with_them():
    tr, ytr, te, yte = _trap()
    fit, val = validation_split(ytr, 0.25)
    subs = {10: scarce_subsets(ytr, fit, 10, draws=2)}
    res = evaluate_row(tr, ytr, te, yte, fit_rows=fit, val_rows=val, subsets=subs, num_classes=3, s=FAST)
    for p in ("knn", "linear", "logreg"):
        r = res["all"][p]
        assert r["choice"].split("@")[0] == "good" and r["choice_acc"] > 0.9 and r["acc"] < 0.6
        assert r["labels"] == 600 and r["correct"].shape == (200,)
        assert all(d["choice"].split("@")[0] == "good" and d["labels"] == 30 for d in res["scarce"][10][p])
    assert set(res["all"]["linear"]["scores"]) == {"good@0.1", "good@0.4", "trap@0.1", "trap@0.4"}
    assert set(res["all"]["logreg"]["scores"]) == {"good@0.1", "good@1", "trap@0.1", "trap@1"}
    assert res["all"]["best_linear"]["choice"].split(": ")[0] in ("linear", "logreg")


def test_with_n_labels_per_class_every_choice_and_fit_reads_only_those_labels(monkeypatch):
    tr, ytr, te, yte = _trap()
    # each training vector carries its row number in a last column (test vectors carry -1), so any read
    # of a row outside the subset shows, whichever function reads it
    tr = {k: torch.cat([v, torch.arange(len(v)).float()[:, None]], 1) for k, v in tr.items()}
    te = {k: torch.cat([v, -torch.ones(len(v), 1)], 1) for k, v in te.items()}
    fit, _ = validation_split(ytr, 0.25)
    sub = scarce_subsets(ytr, fit, 8, draws=1)[0]
    allowed = set(sub.tolist()) | {-1}
    seen = []
    real_fp, real_lr = protocols.fit_predict, protocols.logistic_regression

    def spy_fp(protocol, key, feats, y, train_rows, query, *a, **kw):
        seen.append(set(torch.as_tensor(train_rows).tolist()))
        if not isinstance(query, dict):
            seen.append(set(torch.as_tensor(query).tolist()))
        return real_fp(protocol, key, feats, y, train_rows, query, *a, **kw)

    def spy_lr(xtr, y, xq, *a, **kw):
        seen.extend([set(xtr[:, -1].long().tolist()), set(xq[:, -1].long().tolist())])
        return real_lr(xtr, y, xq, *a, **kw)

    monkeypatch.setattr(protocols, "fit_predict", spy_fp)
    monkeypatch.setattr(protocols, "logistic_regression", spy_lr)
    per = protocols.evaluate_scarce(tr, ytr, te, yte, [sub], 3, FAST)
    assert len(seen) > 30 and all(rows <= allowed for rows in seen)  # folds, fits and held-out rows
    assert all(per[p][0]["labels"] == 24 for p in per) and set(per) == {"knn", "linear", "logreg", "best_linear"}
    assert per["linear"][0]["scores"] and per["logreg"][0]["choice_acc"] is not None  # chosen by cross-validation


def test_raw_pixels_choose_among_as_many_vectors_as_an_encoder():
    import mimkit
    from mimkit.eval.features import frozen_pools

    x, train = torch.rand(5, 1, 4, 4), torch.rand(7, 1, 4, 4)
    mean, std = (0.3,), (0.2,)
    v = raw_vectors((x - 0.3) / 0.2, mean, std, (train - 0.3) / 0.2)
    vit = mimkit.create("mae_vit_tiny_patch4_28", embed_dim=16, depth=1, num_heads=2, decoder_embed_dim=8,
                        decoder_depth=1)
    assert set(v) == {"standardised", "[0, 1]", "per-pixel z", "half", "half per-pixel z"}
    assert len(v) == len(frozen_pools(vit))  # the same number of trials on both sides
    assert torch.allclose(v["[0, 1]"], x.flatten(1), atol=1e-6)
    assert torch.allclose(v["standardised"], ((x - 0.3) / 0.2).flatten(1))
    t = train.flatten(1)  # per-pixel statistics come from the training images, not the images themselves
    assert torch.allclose(v["per-pixel z"], (x.flatten(1) - t.mean(0)) / t.std(0), atol=1e-4)
    assert v["half"].shape == (5, 4)
    assert torch.allclose(v["half"][:, 0], ((x[:, 0, :2, :2] - 0.3) / 0.2).mean((1, 2)), atol=1e-6)
    h = torch.nn.functional.avg_pool2d(train, 2).flatten(1)
    assert torch.allclose(v["half per-pixel z"], (torch.nn.functional.avg_pool2d(x, 2).flatten(1) - h.mean(0)) / h.std(0),
                          atol=1e-4)


def test_intervals_and_verdicts():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2000, generator=g) < 0.8
    same = paired_difference(a, a)
    assert same["diff"] == 0 and same["lo"] == 0 == same["hi"] and same["verdict"] == "tie"
    better = a | (torch.rand(2000, generator=g) < 0.3)  # right on every image a is, and on some more
    d = paired_difference(better, a)
    assert d["verdict"] == "better" and 0 < d["lo"] < d["diff"] < d["hi"]
    assert paired_difference(a, better)["verdict"] == "worse"
    noisy = torch.rand(2000, generator=g) < 0.8  # the same accuracy, independent errors: a tie
    assert paired_difference(noisy, a)["verdict"] == "tie"
    ci = accuracy_interval(a)
    half = 1.96 * math.sqrt(0.8 * 0.2 / 2000)  # the normal approximation
    assert ci["lo"] < ci["acc"] < ci["hi"] and ci["hi"] - ci["lo"] == pytest.approx(2 * half, rel=0.15)
    t = draws_difference([0.80, 0.82, 0.81], [0.70, 0.71, 0.73])
    sd = torch.tensor([0.10, 0.11, 0.08]).std().item()
    assert t["diff"] == pytest.approx(0.0966667, abs=1e-6) and t["std"] == pytest.approx(sd, abs=1e-6)
    assert t["hi"] - t["diff"] == pytest.approx(4.303 * sd / math.sqrt(3), abs=1e-6) and t["verdict"] == "better"
    assert draws_difference([0.8], [0.7])["verdict"] == "tie"  # one draw: no interval
    assert verdict(-0.01, 0.02) == "tie" and verdict(0.001, 0.02) == "better" and verdict(-0.02, -0.001) == "worse"


def test_summary_rows_carry_intervals_verdicts_and_label_counts():
    tr, ytr, te, yte = _trap()
    fit, val = validation_split(ytr, 0.25)
    subs = {10: scarce_subsets(ytr, fit, 10, draws=3)}
    s = Settings(probe_epochs=3, cs=(1.0,), blrs=(0.1,), protocols=("knn", "logreg"))
    g = torch.Generator().manual_seed(5)  # raw pixels here: a vector that separates the classes everywhere
    px_tr, px_te = torch.eye(3)[ytr] * 4 + torch.randn(600, 3, generator=g), torch.eye(3)[yte] * 4 + torch.randn(200, 3, generator=g)
    raw = evaluate_row({"px": px_tr}, ytr, {"px": px_te}, yte, fit_rows=fit, val_rows=val, subsets=subs,
                       num_classes=3, s=s)
    enc = evaluate_row({"g": tr["good"]}, ytr, {"g": te["good"]}, yte, fit_rows=fit, val_rows=val, subsets=subs,
                       num_classes=3, s=s)
    rows = summarise({"raw_pixels": raw, "enc": enc}, resamples=200)
    assert {(r["encoder"], r["protocol"], r["labels_per_class"]) for r in rows} == {
        (e, p, n) for e in ("raw_pixels", "enc") for p in ("knn", "logreg") for n in (None, 10)}
    for r in rows:
        assert r["labels_used"] == (600 if r["labels_per_class"] is None else 30)
        if r["labels_per_class"] is None:
            assert r["ci"][0] <= r["accuracy"] <= r["ci"][1]
        else:
            assert len(r["draws"]) == 3 and r["std"] >= 0
        assert ("vs_raw" in r) == (r["encoder"] == "enc")
    knn = next(r for r in rows if r["encoder"] == "enc" and r["protocol"] == "knn" and r["labels_per_class"] is None)
    # the encoder's vector is noise on test, raw pixels' separate the classes there: clearly worse
    assert knn["vs_raw"]["verdict"] == "worse" and knn["vs_raw"]["hi"] < 0
    # any two rows compared with each other (mimkit report's `pairs`): the same numbers, from either side
    pair = compare({"raw_pixels": raw, "enc": enc}, "raw_pixels", "enc", resamples=200)
    assert {(c["protocol"], c["labels_per_class"]) for c in pair} == {(p, n) for p in ("knn", "logreg") for n in (None, 10)}
    k = next(c for c in pair if c["protocol"] == "knn" and c["labels_per_class"] is None)
    assert k["verdict"] == "better" and k["diff"] == pytest.approx(-knn["vs_raw"]["diff"])
    assert k["lo"] == pytest.approx(-knn["vs_raw"]["hi"]) and k["hi"] == pytest.approx(-knn["vs_raw"]["lo"])
    with pytest.raises(ValueError, match="no row 'nope'"):
        compare({"raw_pixels": raw, "enc": enc}, "nope", "enc")


def test_choose_without_folds_takes_the_first_setting():
    tr, ytr, _, _ = _trap()
    key, scores = choose("linear", tr, ytr, [], 3, FAST)
    assert key == "good@0.1" and scores == {}


def test_logistic_regression_leaves_out_vectors_wider_than_its_limit():
    from mimkit.eval.protocols import grid, logreg_vectors

    s = Settings(logreg_max_dims=8, cs=(0.1, 1.0))
    feats = {"mean": torch.zeros(4, 8), "tokens": torch.zeros(4, 64)}
    assert logreg_vectors(feats, s) == ["mean"]
    assert grid("logreg", feats, s) == ["mean@0.1", "mean@1"]
    assert grid("knn", feats, s) == ["mean", "tokens"] and len(grid("linear", feats, s)) == 4
    assert logreg_vectors({"a": torch.zeros(4, 40), "b": torch.zeros(4, 20)}, s) == ["b"]  # the narrowest stays
