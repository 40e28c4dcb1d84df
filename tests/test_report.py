"""`mimkit report`: encoders beside raw pixels and random init on a user's labelled folder of real images
(Fashion-MNIST written as PNG files; a colour folder of another size), its bad-input lines, the
`run.report` hook of pretraining, and `benchmarks/fmnist_quality.py` printing the same numbers."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mimkit
from mimkit.cli import main
from mimkit.data import load_fashion_mnist
from mimkit.eval.data import balanced_indices
from mimkit.eval.knn import knn_accuracy
from mimkit.eval.report import accuracy, build_report, load_report_data

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = {0: "tshirt", 1: "trouser", 7: "sneaker"}  # three Fashion-MNIST classes, named as a user would
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
    write_pngs(root / "train", {c: 80 for c in CLASSES})
    write_pngs(root / "test", {c: 30 for c in CLASSES}, split_offset=80)
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
                 "--probe-epochs", "5", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    rep = json.loads((out / "report.json").read_text())
    rows = rep["rows"]
    assert all({"encoder", "protocol", "labels_per_class", "accuracy"} <= set(r) for r in rows)
    # 3 encoders x 2 protocols x 3 label budgets (all, 5, 20), no fine-tuning unless asked
    assert len(rows) == 18
    assert {r["encoder"] for r in rows} == {"raw_pixels", "random_init", "tiny-run"}
    assert {r["protocol"] for r in rows} == {"knn", "linear"}
    assert {r["labels_per_class"] for r in rows} == {5, 20, None}
    assert all(0 <= r["accuracy"] <= 1 for r in rows)
    # raw pixels' 20-NN is the protocol on the flattened images as the encoder receives them, computed here
    xtr, ytr = read_folder(png_folder / "train")
    xte, yte = read_folder(png_folder / "test")
    assert accuracy(rep, "raw_pixels", "knn") == pytest.approx(knn_accuracy(xtr, ytr, xte, yte, k=20), abs=1e-6)
    # scarce labels come from outside the validation split (the last sixth of the training images, which
    # --pool auto chooses poolings on), for raw pixels and encoders alike
    fit = len(ytr) - len(ytr) // 6
    assert rep["val_size"] == len(ytr) // 6 == 40
    idx = balanced_indices(ytr[:fit], 5, seed=0)
    assert all(r.get("pool") in ("cls", "mean", "both", "last4") and "val" in r for r in rows if r["encoder"] != "raw_pixels")
    assert accuracy(rep, "raw_pixels", "knn", 5) == pytest.approx(
        knn_accuracy(xtr[idx], ytr[idx], xte, yte, k=15), abs=1e-6)
    # the data said as it is
    d = rep["data"]
    assert d["classes"] == ["sneaker", "trouser", "tshirt"] and d["train_images"] == 240 and d["test_images"] == 90
    assert d["train_per_class"] == {"sneaker": 80, "trouser": 80, "tshirt": 80} and d["encoder_input"] == "1x28x28"
    md = (out / "report.md").read_text()
    assert "| encoder" in md and "raw pixels" in md and "`tiny-run`" in md and "sneaker (80 / 30)" in md
    assert "Wall times" in md and "20-NN" in md and "linear probe, 5/class" in md
    for pic in ("report.png", "neighbours.png"):
        with Image.open(out / pic) as im:
            assert im.size[0] > 300 and im.size[1] > 200
    assert "raw pixels" in text and str(out / "report.md") in text


def test_colour_folder_of_another_size_split_by_test_fraction(tmp_path):
    """One folder of class sub-folders (no train/test), RGB 40x36 images, an RGB encoder at 28 px."""
    root = write_pngs(tmp_path / "colour", {0: 40, 1: 40, 7: 40}, size=(40, 36), colour=True)
    torch.manual_seed(2)
    model = mimkit.create("mae_vit_tiny_patch4_28", in_chans=3, **TINY)
    rep = build_report([model], str(root), tmp_path / "out", names=["rgb"], labels_per_class=[10], probe_epochs=3,
                       test_fraction=0.25, seed=3, progress=False)
    d = rep["data"]
    assert d["original_sizes"] == {"40x36": 120} and d["encoder_input"] == "3x28x28"
    assert d["test_images"] == 30 and d["train_images"] == 90  # round(0.25 * 40) per class held out
    assert set(d["test_per_class"].values()) == {10}
    assert "resized to 28" in d["preprocessing"] and "one folder split" in d["layout"]
    assert len(rep["rows"]) == 3 * 2 * 2
    # raw pixels: 3 * 28 * 28 values per image, exactly what the encoder is fed
    data = load_report_data(str(root), model, test_fraction=0.25, seed=3, progress=False)
    assert tuple(data.train.images.shape[1:]) == (3, 28, 28)
    xtr, xte = data.train.images.flatten(1), data.test.images.flatten(1)
    assert accuracy(rep, "raw_pixels", "knn") == pytest.approx(
        knn_accuracy(xtr, data.train.labels, xte, data.test.labels), abs=1e-6)
    # the split is fixed by the seed, and another seed gives another split
    again = load_report_data(str(root), model, test_fraction=0.25, seed=3, progress=False)
    assert torch.equal(again.test.images, data.test.images)
    other = load_report_data(str(root), model, test_fraction=0.25, seed=4, progress=False)
    assert not torch.equal(other.test.images, data.test.images)
    assert (tmp_path / "out" / "neighbours.png").exists() and (tmp_path / "out" / "report.png").exists()


def test_finetune_rows_with_the_equal_time_scratch_baseline(png_folder, tiny_run, tmp_path):
    rep = build_report([str(tiny_run)], str(png_folder), None, labels_per_class=[20], probe_epochs=2,
                       finetune_minutes=0.02, pretrain_minutes=0.01, finetune_batch_size=32, progress=False)
    ft = [r for r in rep["rows"] if r["protocol"] == "finetune"]
    assert {(r["encoder"], r["labels_per_class"]) for r in ft} == {
        ("tiny-run", None), ("tiny-run", 20), ("random_init", None), ("random_init", 20)}
    assert all(r["steps"] >= 1 and 0 <= r["accuracy"] <= 1 for r in ft)
    # scratch gets the fine-tuning minutes plus the pretraining minutes: more steps at the same step time
    steps = {(r["encoder"], r["labels_per_class"]): r["steps"] for r in ft}
    assert steps[("random_init", None)] > steps[("tiny-run", None)]
    assert rep["finetune"]["scratch_minutes"] == pytest.approx(0.03)


# ---- bad input: one clear line each ---------------------------------------------------------------
def run_cli(args, capsys):
    code = main(["report", "--no-progress", "--probe-epochs", "2", *args])
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
    assert code == 2 and "'sneaker' has 12" in err and "--labels-per-class 20" in err and "at most 12" in err


def test_unreadable_images_are_counted_and_skipped(tiny_run, tmp_path):
    root = write_pngs(tmp_path / "bad" / "train", {0: 25, 1: 25}).parent
    write_pngs(root / "test", {0: 5, 1: 5}, split_offset=25)
    (root / "train" / "tshirt" / "broken.png").write_bytes(b"not a png")
    (root / "test" / "trouser" / "zz_truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    with pytest.warns(UserWarning, match="skipped 2 unreadable"):
        rep = build_report([str(tiny_run)], str(root), tmp_path / "o", labels_per_class=[], probe_epochs=2,
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


# ---- pretraining with run.report, and the benchmark script ---------------------------------------
def test_pretrain_writes_the_report_into_the_run(png_folder, tmp_path, capsys):
    from mimkit.train import load_config, run_pretrain

    ov = [f"run.dir={tmp_path / 'run'}", f"run.report={png_folder}", "data.limit=128", "data.batch_size=64",
          "trainer.max_steps=2", "trainer.max_epochs=-1", "trainer.enable_progress_bar=false", "run.recon_images=0",
          *[f"model.{k}={v}" for k, v in TINY.items()]]
    run = run_pretrain(load_config(None, ov))
    rep = json.loads((Path(run) / "report" / "report.json").read_text())
    assert {r["encoder"] for r in rep["rows"]} == {"raw_pixels", "random_init", "run"}
    assert rep["labels_per_class"] == [10] and "left out" in rep["notes"][0]  # 80 train images per class
    assert (Path(run) / "report" / "neighbours.png").exists()
    assert "mimkit: report" in capsys.readouterr().out


def test_fmnist_quality_and_report_print_the_same_numbers(tiny_run, tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import fmnist_quality

    out = tmp_path / "q" / "q.json"
    assert fmnist_quality.main(["--checkpoint", str(tiny_run), "--limit", "1500", "--test-limit", "400",
                                "--probe-epochs", "3", "--skip", "finetune", "scratch", "curve",
                                "--low-labels", "20", "--no-progress", "--out", str(out)]) == 0
    q = json.loads(out.read_text())
    rep = build_report([str(tiny_run)], "fashion_mnist", None, labels_per_class=[20], probe_epochs=3, limit=1500,
                       test_limit=400, progress=False, pool="mean")  # --mode best: fixed mean pooling
    enc = q["methods"]["mae_vit_tiny_patch4_28"]
    pairs = [(q["raw_pixels"]["knn"], accuracy(rep, "raw_pixels", "knn")),
             (q["raw_pixels"]["logreg"], accuracy(rep, "raw_pixels", "linear")),
             (q["raw_pixels"]["low_label"]["20"]["knn"], accuracy(rep, "raw_pixels", "knn", 20)),
             (q["random_init"]["knn"], accuracy(rep, "random_init", "knn")),
             (q["random_init"]["linear"], accuracy(rep, "random_init", "linear")),
             (enc["knn"], accuracy(rep, "tiny-run", "knn")), (enc["linear"], accuracy(rep, "tiny-run", "linear")),
             (q["low_label"]["20"]["knn"], accuracy(rep, "tiny-run", "knn", 20)),
             (q["low_label"]["20"]["linear"], accuracy(rep, "tiny-run", "linear", 20))]
    for a, b in pairs:
        assert round(a, 4) == round(b, 4)
