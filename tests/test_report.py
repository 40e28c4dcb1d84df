"""`mimkit report`: encoders beside raw pixels and random init on a user's labelled folder of real images
(Fashion-MNIST written as PNG files; a colour folder of another size), its bad-input lines, the
`run.report` hook of pretraining."""
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mimkit
from mimkit.cli import main
from mimkit.data import load_fashion_mnist
from mimkit.eval.knn import knn_accuracy
from mimkit.eval.protocols import Settings
from mimkit.eval.report import accuracy, build_report, find, load_report_data
from mimkit.eval.splits import scarce_subsets, validation_split

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = {0: "tshirt", 1: "trouser", 2: "pullover", 3: "dress", 4: "coat", 5: "sandal", 6: "shirt", 7: "sneaker",
           8: "bag", 9: "boot"}  # Fashion-MNIST's classes, named as a user would
QUICK = Settings(probe_epochs=3, max_probe_epochs=6, logreg_iters=100, blrs=(0.1,), cs=(1.0,))  # short and small grids
TINY = dict(embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)


def write_pngs(root: Path, per_class: dict, split_offset: int = 0, size=None, colour=False, seed=0):
    """Real Fashion-MNIST images of CLASSES as PNG files under root/<class>/; ``per_class`` = {label: n}."""
    x, y = load_fashion_mnist("train")
    g = np.random.default_rng(seed)
    for label, n in per_class.items():
        d = root / CLASSES[label]
        d.mkdir(parents=True, exist_ok=True)
        idx = (y == label).nonzero().squeeze(1)[split_offset:split_offset + n]
        for j, i in enumerate(idx.tolist()):
            im = Image.fromarray(x[i].numpy(), "L")
            if colour:  # a random tint per image (independent of the class): a colour picture of the garment
                tint = g.uniform(0.3, 1.0, size=3)
                im = Image.fromarray((np.asarray(im)[..., None] * tint).astype(np.uint8), "RGB")
            if size:
                im = im.resize(size, Image.BICUBIC)
            im.save(d / f"img{j:04d}.png")
    return root


@pytest.fixture(scope="module")
def png_folder(tmp_path_factory):
    """train/ + test/ of three classes, 28x28 grayscale PNGs: 80 + 30 per class (330 images)."""
    root = tmp_path_factory.mktemp("pngs")
    write_pngs(root / "train", {c: 80 for c in (0, 1, 7)})
    write_pngs(root / "test", {c: 30 for c in (0, 1, 7)}, split_offset=80)
    return root


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny MAE saved as a run's model/ directory (random weights, seed 1: not the report's random init)."""
    torch.manual_seed(1)
    run = tmp_path_factory.mktemp("runs") / "tiny-run"
    mimkit.save(mimkit.create("mae_vit_tiny_patch4_28", **TINY), run / "model")
    return run


def read_folder(folder: Path, mean=0.5, std=0.5):
    """Independent reading of an ImageFolder split: sorted classes, sorted files, pixels / 255, normalised."""
    xs, ys = [], []
    for c, d in enumerate(sorted(p for p in folder.iterdir() if p.is_dir())):
        for f in sorted(d.iterdir()):
            xs.append((np.asarray(Image.open(f).convert("L"), dtype=np.float32) / 255 - mean) / std)
            ys.append(c)
    return torch.from_numpy(np.stack(xs)).flatten(1), torch.tensor(ys)


def test_report_end_to_end_on_a_png_folder(png_folder, tiny_run, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["report", "--checkpoint", str(tiny_run), "--data", str(png_folder), "--labels-per-class", "5,20",
                 "--probe-epochs", "3", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    rep = json.loads((out / "report.json").read_text())
    rows = rep["rows"]
    assert all({"encoder", "protocol", "labels_per_class", "accuracy", "labels_used", "choice"} <= set(r) for r in rows)
    # 3 rows x 4 protocols (20-NN, probe, logistic regression, the better linear one) x 3 label budgets
    assert len(rows) == 36
    assert {r["encoder"] for r in rows} == {"raw_pixels", "random_init", "tiny-run"}
    assert {r["protocol"] for r in rows} == {"knn", "linear", "logreg", "best_linear"}
    assert {r["labels_per_class"] for r in rows} == {5, 20, None}
    assert all(0 <= r["accuracy"] <= 1 for r in rows)
    # the same labels for every row of a column: all 240 with all labels, N x 3 classes with N per class
    assert all(r["labels_used"] == (240 if r["labels_per_class"] is None else 3 * r["labels_per_class"]) for r in rows)
    # raw pixels choose their preprocessing like an encoder its pooling; its 20-NN, computed here on the chosen one
    xtr, ytr = read_folder(png_folder / "train")
    xte, yte = read_folder(png_folder / "test")
    vtr, vte = _raw(xtr, xte)
    pick = find(rep, "raw_pixels", "knn")["choice"]
    assert pick in vtr
    assert accuracy(rep, "raw_pixels", "knn") == pytest.approx(knn_accuracy(vtr[pick], ytr, vte[pick], yte, k=20), abs=1e-6)
    # validation is drawn per class; the scarce subsets come from the rest, three draws, every class in each
    assert rep["splits"]["validation"]["per_class"] == {"sneaker": 13, "trouser": 13, "tshirt": 13}
    fit, _ = validation_split(ytr, 1 / 6, seed=0)
    draws = scarce_subsets(ytr, fit, 5, draws=3, seed=0)
    assert rep["splits"]["scarce"]["5"]["draws"] == [{"sneaker": 5, "trouser": 5, "tshirt": 5}] * 3
    knn5 = find(rep, "raw_pixels", "knn", 5)
    for d, idx in enumerate(draws):
        c = knn5["choice"][d] if isinstance(knn5["choice"], list) else knn5["choice"]
        assert knn5["draws"][d] == pytest.approx(knn_accuracy(vtr[c][idx], ytr[idx], vte[c], yte, k=15), abs=1e-6)
    assert all(r["choice"] for r in rows if r["encoder"] != "raw_pixels")
    # intervals and verdicts against raw pixels
    for r in rows:
        if r["labels_per_class"] is None:
            assert r["ci"][0] <= r["accuracy"] <= r["ci"][1]
        else:
            assert len(r["draws"]) == 3
        if r["encoder"] != "raw_pixels":
            assert r["vs_raw"]["verdict"] in ("better", "tie", "worse") and r["vs_raw"]["lo"] <= r["vs_raw"]["hi"]
    # the data said as it is
    d = rep["data"]
    assert d["classes"] == ["sneaker", "trouser", "tshirt"] and d["train_images"] == 240 and d["test_images"] == 90
    assert d["train_per_class"] == {"sneaker": 80, "trouser": 80, "tshirt": 80} and d["encoder_input"] == "1x28x28"
    md = (out / "report.md").read_text()
    assert "| encoder" in md and "raw pixels" in md and "`tiny-run`" in md and "sneaker (80 / 30)" in md
    assert "Wall times" in md and "20-NN" in md and "linear probe, 5/class" in md and "Against raw pixels" in md
    for pic in ("report.png", "neighbours.png"):
        with Image.open(out / pic) as im:
            assert im.size[0] > 300 and im.size[1] > 200
    assert "raw pixels" in text and str(out / "report.md") in text and ("better" in text or "tie" in text or "worse" in text)


def test_a_class_sorted_ten_class_folder_holds_every_class_in_validation_and_every_subset(tiny_run, tmp_path):
    """A folder as a user has it: one sub-folder per class, so its rows are sorted by class. Every class is
    in the validation split and in every scarce subset, and raw pixels' figures agree with an independent
    20-NN on the same files."""
    root = tmp_path / "ten"
    write_pngs(root / "train", {c: 30 for c in CLASSES})
    write_pngs(root / "test", {c: 10 for c in CLASSES}, split_offset=30)
    rep = build_report([str(tiny_run)], str(root), None, labels_per_class=[10], settings=QUICK, progress=False)
    sp = rep["splits"]
    assert set(sp["validation"]["per_class"].values()) == {5}  # a sixth of each class's 30
    assert set(sp["fit"]["per_class"].values()) == {25}
    assert sp["scarce"]["10"]["draws"] == [{c: 10 for c in sorted(CLASSES.values())}] * 3
    xtr, ytr = read_folder(root / "train")
    xte, yte = read_folder(root / "test")
    fit, _ = validation_split(ytr, 1 / 6, seed=0)
    vtr, vte = _raw(xtr, xte)
    raw = find(rep, "raw_pixels", "knn", 10)
    for d, idx in enumerate(scarce_subsets(ytr, fit, 10, draws=3, seed=0)):
        assert torch.bincount(ytr[idx], minlength=10).tolist() == [10] * 10
        c = raw["choice"][d] if isinstance(raw["choice"], list) else raw["choice"]
        assert raw["draws"][d] == pytest.approx(knn_accuracy(vtr[c][idx], ytr[idx], vte[c], yte, k=20), abs=1e-6)
    full = find(rep, "raw_pixels", "knn")
    c = full["choice"]
    assert full["accuracy"] == pytest.approx(knn_accuracy(vtr[c], ytr, vte[c], yte, k=20), abs=1e-6)
    assert raw["accuracy"] > 0.4  # every class has labels: far from the 0.1 of a subset that misses classes


def test_colour_folder_of_another_size_split_by_test_fraction(tmp_path):
    """One folder of class sub-folders (no train/test), RGB 40x36 images, an RGB encoder at 28 px."""
    root = write_pngs(tmp_path / "colour", {0: 40, 1: 40, 7: 40}, size=(40, 36), colour=True)
    torch.manual_seed(2)
    model = mimkit.create("mae_vit_tiny_patch4_28", in_chans=3, **TINY)
    rep = build_report([model], str(root), tmp_path / "out", names=["rgb"], labels_per_class=[10], settings=QUICK,
                       test_fraction=0.25, seed=3, draws=1, progress=False)
    d = rep["data"]
    assert d["original_sizes"] == {"40x36": 120} and d["encoder_input"] == "3x28x28"
    assert d["test_images"] == 30 and d["train_images"] == 90  # round(0.25 * 40) per class held out
    assert set(d["test_per_class"].values()) == {10}
    assert "resized to 28" in d["preprocessing"] and "one folder split" in d["layout"]
    assert len(rep["rows"]) == 3 * 4 * 2
    # raw pixels: 3 * 28 * 28 values per image, exactly what the encoder is fed ([0, 1] or normalised)
    data = load_report_data(str(root), model, test_fraction=0.25, seed=3, progress=False)
    assert tuple(data.train.images.shape[1:]) == (3, 28, 28)
    xtr, xte = data.train.images.flatten(1), data.test.images.flatten(1)
    if find(rep, "raw_pixels", "knn")["choice"] == "[0, 1]":
        xtr, xte = xtr * 0.5 + 0.5, xte * 0.5 + 0.5
    assert accuracy(rep, "raw_pixels", "knn") == pytest.approx(
        knn_accuracy(xtr, data.train.labels, xte, data.test.labels), abs=1e-6)
    # the split is fixed by the seed, and another seed gives another split
    again = load_report_data(str(root), model, test_fraction=0.25, seed=3, progress=False)
    assert torch.equal(again.test.images, data.test.images)
    other = load_report_data(str(root), model, test_fraction=0.25, seed=4, progress=False)
    assert not torch.equal(other.test.images, data.test.images)
    assert (tmp_path / "out" / "neighbours.png").exists() and (tmp_path / "out" / "report.png").exists()


def test_finetune_rows_with_the_equal_time_scratch_baseline(png_folder, tiny_run, tmp_path):
    rep = build_report([str(tiny_run)], str(png_folder), None, labels_per_class=[20], settings=QUICK, draws=1,
                       finetune_minutes=0.05, pretrain_minutes=0.05, finetune_batch_size=32, progress=False,
                       finetune_trial_fraction=0.3)
    ft = [r for r in rep["rows"] if r["protocol"] == "finetune"]
    assert {(r["encoder"], r["labels_per_class"]) for r in ft} == {
        ("tiny-run", None), ("tiny-run", 20), ("random_init", None), ("random_init", 20)}
    assert all(min(r["steps"]) >= 1 and 0 <= r["accuracy"] <= 1 for r in ft)
    # scratch gets the fine-tuning minutes plus the pretraining minutes (budget-true): more steps
    steps = {(r["encoder"], r["labels_per_class"]): r["steps"][0] for r in ft}
    assert steps[("random_init", None)] > steps[("tiny-run", None)]
    assert rep["finetune"]["scratch_minutes"] == pytest.approx(0.1)
    mine = next(r for r in ft if r["encoder"] == "tiny-run" and r["labels_per_class"] is None)
    assert mine["vs_scratch"]["verdict"] in ("better", "tie", "worse") and mine["ci"][0] <= mine["accuracy"]
    # each side's recipe is chosen by as many trials, on validation (all labels: the report's validation split;
    # 20 per class: a fifth of those 20 x classes labels only), and the row carries the chosen recipe
    recipes = rep["finetune"]["recipes"]
    nc = len(rep["splits"]["validation"]["per_class"])
    labelled = rep["splits"]["fit"]["images"] + rep["splits"]["validation"]["images"]
    for budget, images in (("all", labelled), ("20", 20 * nc)):
        mine_t, scratch_t = recipes["tiny-run"][budget]["trials"], recipes["random_init"][budget]["trials"]
        assert len(mine_t) == len(scratch_t) == 4
        for trials in (mine_t, scratch_t):
            assert all(t["fit_images"] + t["val_images"] == images for t in trials)
            chosen = recipes["tiny-run" if trials is mine_t else "random_init"][budget]["chosen"]
            best = max(trials, key=lambda t: t["val_acc"])
            assert chosen["trial"] == best["trial"] and best["val_acc"] == best["val_acc_by_flip"]["plain"]
            # flip averaging chosen on the same weights: kept only where it scored higher than without
            flip = best["val_acc_by_flip"]["flip"] > best["val_acc_by_flip"]["plain"]
            assert chosen["recipe"].get("flip_tta") == (1.0 if flip else None)
            assert chosen["val_acc"] == max(best["val_acc_by_flip"].values())
        if budget == "all":
            assert all(t["val_images"] == rep["splits"]["validation"]["images"] for t in mine_t)
        # trials keep each side's share of the clock: 0.3 x 0.1 min from scratch, 0.3 x 0.05 min pretrained
        assert all(t["minutes"] == pytest.approx(0.03) for t in scratch_t)
        assert all(t["minutes"] == pytest.approx(0.015, abs=0.006) for t in mine_t)
    assert mine["recipe"] == recipes["tiny-run"]["all"]["chosen"]["recipe"]
    assert mine["choice"] == recipes["tiny-run"]["all"]["chosen"]["trial"]
    assert mine["choice_acc"] == recipes["tiny-run"]["all"]["chosen"]["val_acc"] and rep["finetune"]["flip_choice"]


# ---- bad input: one clear line each ---------------------------------------------------------------
def run_cli(args, capsys):
    code = main(["report", "--no-progress", "--probe-epochs", "2", "--draws", "1", *args])
    return code, capsys.readouterr().err


def test_folder_without_class_subfolders(tiny_run, tmp_path, capsys):
    flat = tmp_path / "flat"
    write_pngs(tmp_path / "tmp", {0: 3})
    flat.mkdir()
    for f in (tmp_path / "tmp" / "tshirt").iterdir():
        f.rename(flat / f.name)
    code, err = run_cli(["--checkpoint", str(tiny_run), "--data", str(flat), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and err.startswith("mimkit report: error: ") and "no class sub-folders" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_one_class_only(tiny_run, tmp_path, capsys):
    write_pngs(tmp_path / "one", {1: 5})
    code, err = run_cli(["--checkpoint", str(tiny_run), "--data", str(tmp_path / "one")], capsys)
    assert code == 2 and "only one class ('trouser')" in err


def test_classes_differ_between_train_and_test(tiny_run, tmp_path, capsys):
    write_pngs(tmp_path / "d" / "train", {0: 5, 1: 5, 7: 5})
    write_pngs(tmp_path / "d" / "test", {0: 3, 1: 3})
    code, err = run_cli(["--checkpoint", str(tiny_run), "--data", str(tmp_path / "d")], capsys)
    assert code == 2 and "different classes" in err and "only in train/: ['sneaker']" in err


def test_fewer_images_than_labels_per_class_names_the_class(tiny_run, tmp_path, capsys):
    write_pngs(tmp_path / "few" / "train", {0: 30, 1: 30, 7: 12})
    write_pngs(tmp_path / "few" / "test", {0: 3, 1: 3, 7: 3}, split_offset=30)
    code, err = run_cli(["--checkpoint", str(tiny_run), "--data", str(tmp_path / "few"), "--labels-per-class",
                         "5,20"], capsys)
    # 12 sneakers, 2 of them in the validation split: 10 left to draw from
    assert code == 2 and "'sneaker' has 10 training images outside the validation split" in err
    assert "--labels-per-class 20" in err and "--labels-per-class 10 or less" in err


def test_unreadable_images_are_counted_and_skipped(tiny_run, tmp_path):
    root = write_pngs(tmp_path / "bad" / "train", {0: 25, 1: 25}).parent
    write_pngs(root / "test", {0: 5, 1: 5}, split_offset=25)
    (root / "train" / "tshirt" / "broken.png").write_bytes(b"not a png")
    (root / "test" / "trouser" / "zz_truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    with pytest.warns(UserWarning, match="skipped 2 unreadable"):
        rep = build_report([str(tiny_run)], str(root), tmp_path / "o", labels_per_class=[], settings=QUICK,
                           progress=False)
    d = rep["data"]
    assert d["skipped_unreadable"] == 2 and d["train_images"] == 50 and d["test_images"] == 10
    assert "skipped 2 unreadable" in (tmp_path / "o" / "report.md").read_text()


def test_bad_values(tiny_run, png_folder, tmp_path, capsys):
    code, err = run_cli(["--checkpoint", str(tiny_run), "--data", str(tmp_path / "nowhere")], capsys)
    assert code == 2 and "neither 'fashion_mnist' nor a directory" in err
    code, err = run_cli(["--checkpoint", str(tiny_run), "--data", str(png_folder), "--finetune-minutes", "0"], capsys)
    assert code == 2 and "--finetune-minutes must be > 0" in err
    with pytest.raises(SystemExit):
        main(["report", "--checkpoint", str(tiny_run), "--labels-per-class", "ten"])
    from mimkit.train.config import load_config, validate

    with pytest.raises(ValueError, match="run.report must be fashion_mnist or a labelled image folder"):
        validate(load_config(None, ["run.report=/no/such/folder"]))
    with pytest.raises(ValueError, match="run.report_protocols must be a non-empty list of"):
        validate(load_config(None, ["run.report_protocols=[knn,svm]"]))
    for bad in ("0", "2.5", "ten"):
        with pytest.raises(ValueError, match="run.report_probe_epochs must be a whole number of epochs >= 1"):
            validate(load_config(None, [f"run.report_probe_epochs={bad}"]))


# ---- pretraining with run.report, and the benchmark script ---------------------------------------
def test_pretrain_writes_the_report_into_the_run(png_folder, tmp_path, capsys):
    from mimkit.cli import main

    ov = [f"run.dir={tmp_path / 'run'}", f"run.report={png_folder}", "data.limit=128", "data.batch_size=64",
          "trainer.max_steps=2", "trainer.max_epochs=-1", "trainer.enable_progress_bar=false", "run.recon_images=0",
          "run.report_probe_epochs=2", *[f"model.{k}={v}" for k, v in TINY.items()]]
    assert main(["pretrain", *ov]) == 0  # the command writes the report (mimkit.train imports no evaluation)
    run = tmp_path / "run"
    rep = json.loads((Path(run) / "report" / "report.json").read_text())
    assert {r["encoder"] for r in rep["rows"]} == {"raw_pixels", "random_init", "run"}
    assert {(c["a"], c["b"]) for c in rep["pairs"]} == {("run", "random_init")}  # what pretraining adds, paired
    assert "## Between encoders" in (Path(run) / "report" / "report.md").read_text()
    assert rep["labels_per_class"] == [10] and any("left out" in n for n in rep["notes"])  # 67 per class to draw from
    assert rep["settings"]["probe_epochs"] == 2 and rep["settings"]["max_probe_epochs"] == 8  # run.report_probe_epochs
    assert (Path(run) / "report" / "neighbours.png").exists()
    assert "mimkit: report" in capsys.readouterr().out


def _raw(xtr, xte):
    """Raw pixels' vectors of the normalised (mean 0.5, std 0.5) grayscale images, as the report makes them."""
    from mimkit.eval.protocols import raw_vectors

    side = math.isqrt(xtr.shape[1])  # read_folder flattens square grayscale images
    xtr, xte = (x.reshape(len(x), 1, side, side) for x in (xtr, xte))
    return raw_vectors(xtr, (0.5,), (0.5,)), raw_vectors(xte, (0.5,), (0.5,), xtr)


def test_raw_pixels_logistic_regression_keeps_every_vector_an_encoder_may_not(png_folder, tiny_run, monkeypatch):
    """The width limit of logistic regression drops an encoder's wide vectors, never raw pixels': the
    baseline gets at least the encoder's number of trials."""
    from mimkit.eval import report as rmod

    seen = {}
    real = rmod.evaluate_row

    def spy(tr, *a, s, **k):
        seen[len(seen)] = (sorted(tr), s.logreg_max_dims)
        return real(tr, *a, s=s, **k)

    monkeypatch.setattr(rmod, "evaluate_row", spy)
    tight = dataclasses.replace(QUICK, logreg_max_dims=64)
    rep = build_report([str(tiny_run)], str(png_folder), None, labels_per_class=[], settings=tight, progress=False)
    raw_vectors_seen, raw_cap = seen[0]
    assert raw_cap == rmod.RAW_LOGREG_MAX_DIMS and len(raw_vectors_seen) == 5  # raw pixels: a memory-safe limit only
    assert not any("left out the preprocessings" in n for n in rep["notes"])  # every raw vector fits under it here
    assert all(cap == 64 for _, cap in list(seen.values())[1:])  # the encoders keep the limit
    logreg = {r["encoder"]: r["choice"] for r in rep["rows"] if r["protocol"] == "logreg"}
    assert logreg["tiny-run"].split("@")[0] != "tokens"  # the encoder's token map is wider than 64 numbers
    monkeypatch.setattr(rmod, "RAW_LOGREG_MAX_DIMS", 200)  # images too large for it: the full-size vectors go
    rep = build_report([str(tiny_run)], str(png_folder), None, labels_per_class=[], settings=tight, progress=False)
    raw = next(r for r in rep["rows"] if r["encoder"] == "raw_pixels" and r["protocol"] == "logreg")
    assert raw["choice"].startswith("half")  # only the 2x2-mean vectors (196 numbers) were tried
    assert any("raw_pixels: logistic regression left out the preprocessings wider than 200" in n for n in rep["notes"])


def test_rows_are_reused_by_their_weights_and_code_not_their_path(png_folder, tiny_run, tmp_path, monkeypatch, capsys):
    """A committed folder of rows (``reuse_rows``, read-only) serves a copy of the same weights elsewhere; new
    weights, another random init or changed evaluation code make new rows; computed rows go to ``cache_dir``."""
    import shutil

    from mimkit.eval import report as rmod

    calls = []
    real = rmod.evaluate_row

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(rmod, "evaluate_row", counting)
    opts = dict(labels_per_class=[], settings=QUICK, names=["enc"])
    first = build_report([str(tiny_run)], str(png_folder), None, cache_dir=tmp_path / "rows", **opts)
    assert len(calls) == 3 and len(list((tmp_path / "rows").glob("*.pt"))) == 3
    moved = tmp_path / "elsewhere"  # the same weights at another path (a fresh clone): every row is reused
    shutil.copytree(tiny_run, moved)
    again = build_report([str(moved)], str(png_folder), None, reuse_rows=tmp_path / "rows", **opts)
    assert len(calls) == 3 and again["rows"] == first["rows"]
    assert capsys.readouterr().out.count("reusing the evaluated row") == 3
    torch.manual_seed(2)  # other weights: the encoder's row is evaluated again, the baselines' are not
    mimkit.save(mimkit.create("mae_vit_tiny_patch4_28", **TINY), tmp_path / "other" / "model")
    build_report([str(tmp_path / "other")], str(png_folder), None, reuse_rows=tmp_path / "rows", **opts)
    assert len(calls) == 4 and len(list((tmp_path / "rows").glob("*.pt"))) == 3  # read-only: nothing written there
    build_report([str(moved)], str(png_folder), None, reuse_rows=tmp_path / "rows", seed=1, **opts)
    assert len(calls) == 7  # another seed: another split and another random init
    monkeypatch.setattr(rmod, "eval_code_id", lambda: "changed")  # the evaluation code changed: nothing is reused
    build_report([str(moved)], str(png_folder), None, reuse_rows=tmp_path / "rows", **opts)
    assert len(calls) == 10


def test_demo_rows_copies_the_baselines_of_a_finished_demo(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("demo_rows", Path(__file__).parents[1] / "scripts" / "demo_rows.py")
    demo_rows = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo_rows)
    rows = tmp_path / "run" / "report" / "rows"
    rows.mkdir(parents=True)
    for name in ("raw_pixels-aaaa.pt", "random_init-bbbb.pt", "run-cccc.pt"):
        torch.save({"x": 1}, rows / name)
    dest = tmp_path / "committed"
    dest.mkdir()
    torch.save({}, dest / "raw_pixels-stale.pt")
    assert demo_rows.main(["--from", str(tmp_path / "run"), "--to", str(dest)]) == 0
    assert sorted(p.name for p in dest.iterdir()) == ["random_init-bbbb.pt", "raw_pixels-aaaa.pt"]  # the stale one gone
    (rows / "random_init-bbbb.pt").unlink()
    with pytest.raises(SystemExit, match="holds no rows of raw_pixels and random_init"):
        demo_rows.main(["--from", str(tmp_path / "run"), "--to", str(dest)])


def test_a_folder_changed_under_the_same_path_is_evaluated_again(tiny_run, tmp_path, monkeypatch):
    """A row of a user's folder is keyed by its images, not its path: files replaced in place make new rows."""
    from mimkit.eval import report as rmod

    root = tmp_path / "folder"
    write_pngs(root / "train", {c: 40 for c in (0, 1, 7)})
    write_pngs(root / "test", {c: 12 for c in (0, 1, 7)}, split_offset=40)
    calls = []
    real = rmod.evaluate_row
    monkeypatch.setattr(rmod, "evaluate_row", lambda *a, **k: calls.append(1) or real(*a, **k))
    opts = dict(labels_per_class=[], settings=QUICK, cache_dir=tmp_path / "rows", progress=False)
    build_report([str(tiny_run)], str(root), None, **opts)
    build_report([str(tiny_run)], str(root), None, **opts)
    assert len(calls) == 3  # the same images: all three rows reused
    write_pngs(root / "train", {0: 40}, split_offset=200)  # the class's images replaced, same file names
    build_report([str(tiny_run)], str(root), None, **opts)
    assert len(calls) == 6


def test_cli_report_chooses_flip_averaging_unless_told_not_to(monkeypatch, tmp_path):
    import mimkit.eval.report as report_module

    class Stop(Exception):
        pass

    seen = []
    monkeypatch.setattr(report_module, "build_report", lambda *a, **k: seen.append(k) or (_ for _ in ()).throw(Stop()))
    for extra in ([], ["--no-finetune-flip-choice"]):
        with pytest.raises(Stop):
            main(["report", "--checkpoint", "x", "--data", str(tmp_path), "--finetune-minutes", "1", *extra])
    assert [k["finetune_flip_choice"] for k in seen] == [True, False]
    assert report_module.ReportConfig().finetune_flip_choice is True
