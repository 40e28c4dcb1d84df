"""WebDataset shards and Hugging Face datasets as training sources (issue 16): the shard writer's round
trip, the shard-window order, the DDP split and exact mid-epoch resume of both sources (loader level
here; `mimkit pretrain` killed with SIGKILL and resumed, and a 2-process gloo run, below), and bad input
(missing, truncated, compressed shards, corrupt members, empty patterns) as one clear line or a counted
skip."""
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import lightning  # noqa: F401  (import before any output capture)
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import sigkill_at_marker
from mimkit.cli import main
from mimkit.data import SafeImageFolder, load_fashion_mnist, pretrain_transform
from mimkit.data.shards import ShardImages, ShardWindowOrder, write_shards
from mimkit.train.loader import ResumableLoader, ResumableSampler

ROOT = Path(__file__).resolve().parents[1]
N_IMAGES = 160  # 4 shards of 40
TINY = ["model.embed_dim=32", "model.depth=1", "model.num_heads=2", "model.decoder_embed_dim=16",
        "model.decoder_depth=1", "model.decoder_num_heads=2", "trainer.enable_progress_bar=false",
        "trainer.accelerator=cpu", "run.recon_images=0", "trainer.log_every_n_steps=1"]

pytestmark = pytest.mark.usefixtures("one_thread")


def make_folder(root: Path, n: int = N_IMAGES, offset: int = 0) -> Path:
    """Fashion-MNIST test images as PNGs in class sub-folders."""
    imgs, labels = load_fashion_mnist("test", download=False)
    for i in range(offset, offset + n):
        d = root / f"class{int(labels[i])}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(imgs[i].numpy()).save(d / f"{i:05d}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("fmnist") / "images")


@pytest.fixture(scope="module")
def shards(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "train"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_shards(folder, out, per_shard=40, progress=False)
    return out


@pytest.fixture(scope="module")
def hf_dir(folder, tmp_path_factory):
    """The same images as a Hugging Face dataset (Image + ClassLabel features) saved with save_to_disk."""
    datasets = pytest.importorskip("datasets")
    root = tmp_path_factory.mktemp("hf")
    datasets.config.HF_DATASETS_CACHE = root / "cache"
    ref = SafeImageFolder(folder, None, in_chans=1)
    rows = {"image": [{"bytes": Path(p).read_bytes(), "path": None} for p, _ in ref.samples],
            "label": [int(ref.classes[c][len("class"):]) for _, c in ref.samples]}
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)})
    datasets.disable_progress_bars()
    datasets.Dataset.from_dict(rows, features=feats).save_to_disk(str(root / "saved"))
    return root / "saved"


def digest(img) -> str:
    return hashlib.sha1(np.asarray(img).tobytes()).hexdigest()


# ---------------------------------------------------------------- writer

def test_writer_round_trip(folder, tmp_path):
    """Every readable image comes back with the same pixels and class; the unreadable one is skipped
    and counted; the index lists shard names and counts; writing again gives identical bytes."""
    src = tmp_path / "src"
    shutil.copytree(folder, src)
    (src / "class0" / "broken.png").write_bytes(b"\x89PNG not really")
    ref = SafeImageFolder(folder, None, in_chans=1)
    expected = {digest(ref[i][0]): ref.classes[ref.samples[i][1]] for i in range(len(ref))}

    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        index = write_shards(src, tmp_path / "a", per_shard=40, progress=False)
    msgs = [str(w.message) for w in rec if "skipping unreadable image" in str(w.message)]
    assert len(msgs) == 1 and "broken.png" in msgs[0] and msgs[0].endswith(f"1 of {N_IMAGES + 1} images skipped so far")
    assert index["total"] == N_IMAGES and index["skipped"] == 1
    assert [(e["url"], e["nsamples"]) for e in index["shardlist"]] == [(f"train-{i:06d}.tar", 40) for i in range(4)]
    on_disk = json.loads((tmp_path / "a" / "train.index.json").read_text())
    assert on_disk["__kind__"] == "wids-shard-index-v1" and on_disk["classes"] == ref.classes
    assert [e["filesize"] for e in on_disk["shardlist"]] == [(tmp_path / "a" / e["url"]).stat().st_size
                                                               for e in on_disk["shardlist"]]

    ds = ShardImages(tmp_path / "a", in_chans=1)
    assert len(ds) == N_IMAGES
    got = {}
    for i in range(len(ds)):
        img, label = ds[i]
        got[digest(img)] = on_disk["classes"][label]
    assert got == expected  # same pixels, same classes, each image once
    labels_in_first_shard = {int(x) for x in ds.label[:40]}
    assert len(labels_in_first_shard) > 5  # shuffled before writing: a shard mixes classes

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_shards(src, tmp_path / "b", per_shard=40, progress=False)
    for e in index["shardlist"]:  # reproducible: same input, same bytes
        assert (tmp_path / "a" / e["url"]).read_bytes() == (tmp_path / "b" / e["url"]).read_bytes()


def test_writer_sizes_resize_and_cli(folder, tmp_path, capsys):
    assert main(["shard", "--images", str(folder), "--out", str(tmp_path / "s"), "--shard-size", "60KB",
                 "--resize", "14"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {N_IMAGES} images (0 unreadable skipped)" in out and "data.urls=" in out
    index = json.loads((tmp_path / "s" / "train.index.json").read_text())
    assert len(index["shardlist"]) > 1 and sum(e["nsamples"] for e in index["shardlist"]) == N_IMAGES
    assert all(e["filesize"] <= 60_000 for e in index["shardlist"])
    ds = ShardImages(tmp_path / "s", in_chans=1)
    assert {ds[i][0].size for i in range(0, N_IMAGES, 17)} == {(14, 14)}
    # a second run into the same folder refuses, unless told to overwrite
    assert main(["shard", "--images", str(folder), "--out", str(tmp_path / "s"), "--per-shard", "100"]) == 2
    assert "already holds" in capsys.readouterr().err
    assert main(["shard", "--images", str(folder), "--out", str(tmp_path / "s"), "--per-shard", "100",
                 "--overwrite"]) == 0
    assert len(json.loads((tmp_path / "s" / "train.index.json").read_text())["shardlist"]) == 2


def test_reading_without_an_index_scans_the_same_table(shards, tmp_path):
    """Shards made elsewhere (no index): the tar headers are scanned; `mimkit shard --reindex` writes
    the same table as the writer did; brace patterns, globs and lists name the same shards."""
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in shards.glob("*.tar"):
        shutil.copy(p, copy / p.name)
    a = ShardImages(shards, in_chans=1)
    for spec in (str(copy / "train-{000000..000003}.tar"), str(copy / "train-*.tar"), str(copy),
                 [str(p) for p in sorted(copy.glob("*.tar"))]):
        b = ShardImages(spec, in_chans=1)
        assert np.array_equal(a.offset, b.offset) and np.array_equal(a.label, b.label)
    assert main(["shard", "--reindex", str(copy)]) == 0
    written = json.loads((shards / "train.index.json").read_text())["shardlist"]
    scanned = json.loads((copy / "train.index.json").read_text())["shardlist"]
    assert [(e["url"], e["offsets"], e["labels"]) for e in written] == [(e["url"], e["offsets"], e["labels"])
                                                                         for e in scanned]


# ---------------------------------------------------------------- order, DDP split, resume (loader level)

def test_shard_window_order_is_pure_local_and_complete():
    bounds = [(0, 10), (10, 25), (25, 30), (30, 50), (50, 51), (51, 60)]
    order = ShardWindowOrder(bounds, window=2)
    a, b = order(3, 0, 60), order(3, 0, 60)
    assert torch.equal(a, b) and sorted(a.tolist()) == list(range(60))  # a pure function; every row once
    assert not torch.equal(a, order(3, 1, 60)) and not torch.equal(a, order(4, 0, 60))
    shard_of = np.repeat(np.arange(6), [e - s for s, e in bounds])
    first_seen = list(dict.fromkeys(int(shard_of[i]) for i in a.tolist()))
    pos = 0
    for w in range(0, 6, 2):  # windows of 2 shards: each read whole, one after the other
        window = set(first_seen[w:w + 2])
        size = sum(bounds[s][1] - bounds[s][0] for s in window)
        assert {int(shard_of[i]) for i in a[pos:pos + size].tolist()} == window
        pos += size
    assert pos == 60
    full = ShardWindowOrder(bounds, None)(3, 0, 60)  # no window: a shuffle over all shards
    assert sorted(full.tolist()) == list(range(60))


def _batches(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


@pytest.mark.parametrize("source", ["webdataset", "hf_dataset"])
def test_ranks_split_the_epoch_and_resume_mid_epoch(source, shards, hf_dir, tmp_path):
    """2 ranks x batch 8 hold exactly the images of 1 process x batch 16 at every step, with the same
    random crops (seeded per sample), data workers or not; a loader restored from a mid-epoch state
    continues with exactly the batches the uninterrupted one had next."""
    tf = pretrain_transform(28, (0.5,), (0.5,), (0.3, 1.0))
    if source == "webdataset":
        ds = ShardImages(shards, tf, in_chans=1)
        order = ShardWindowOrder(ds.shard_bounds(), 2)
    else:
        from mimkit.data.hf_dataset import HFImages

        ds = HFImages(hf_dir, transform=tf, in_chans=1)
        order = None

    def loader(batch, rank=0, world=1, workers=0):
        return ResumableLoader(ds, ResumableSampler(len(ds), batch, seed=5, rank=rank, world_size=world, order_fn=order),
                               num_workers=workers)

    one = loader(16)
    one.sampler.set_epoch(1)
    full = _batches(one)
    assert len(full) == N_IMAGES // 16
    ranks = [loader(8, r, 2, workers=2 if r == 0 else 0) for r in range(2)]
    for dl in ranks:
        dl.sampler.set_epoch(1)
    seen = []
    for (x, y), (x0, y0), (x1, y1) in zip(full, *[_batches(dl) for dl in ranks]):
        mine = sorted(digest(t) for t in torch.cat([x0, x1]))
        assert mine == sorted(digest(t) for t in x)  # the same images, identically augmented
        seen += mine
    assert len(set(seen)) == N_IMAGES  # one epoch: every image once across the processes

    it = iter(one)
    next(it), next(it), next(it)
    state = one.state_dict()
    assert state["position"] == 3 * 16
    resumed = loader(16)
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(1)
    rest = _batches(resumed)
    assert len(rest) == len(full) - 3
    for (x, y), (xr, yr) in zip(full[3:], rest):
        assert torch.equal(x, xr) and torch.equal(y, yr)


def test_remainder_is_dropped_per_epoch_and_differs_between_epochs(shards):
    """150 rows, global batch 32: 4 batches (128 images) an epoch; the 22 left over are the end of that
    epoch's order, so other images are left out in another epoch."""
    ds = ShardImages(shards, in_chans=1).subset(range(150))
    s = ResumableSampler(len(ds), 16, seed=0, world_size=2, rank=0, order_fn=ShardWindowOrder(ds.shard_bounds(), 2))
    used = s.num_batches * s.global_batch
    assert used == 128
    left = [set(s.order(e)[used:].tolist()) for e in range(3)]
    assert all(len(x) == 22 for x in left) and left[0] != left[1]


# ---------------------------------------------------------------- end to end: SIGKILL + resume, DDP

def _shard_args(shards, *extra):
    return [*TINY, "data.name=webdataset", f"data.urls={shards}", "data.shard_window=2", "data.in_chans=1",
            "data.crop_scale=[0.3,1.0]", *extra]


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_on_shards(shards, tmp_path):
    """tests/test_resume.py on shards, with a validation set held out of them: killed after step 13
    (last checkpoint at step 10 = epoch 1, batch 2 of 8), resumed, bit-identical weights and the same
    training and validation loss at every logged step."""

    from safetensors.torch import load_file
    from test_resume import _launch

    from mimkit.train.callbacks import read_metrics
    from mimkit.train.config import load_config
    from mimkit.train.run import run_pretrain

    args = _shard_args(shards, "data.val_fraction=0.2", "data.batch_size=16", "trainer.max_epochs=2",
                       "trainer.deterministic=true", "run.checkpoint_every_n_steps=5", "optim.blr=0.05")
    full_dir, cut_dir, marker = tmp_path / "full", tmp_path / "cut", tmp_path / "reached"
    cut = _launch([*args, f"run.dir={cut_dir}"], MIMKIT_TEST_HANG_AT="13", MIMKIT_TEST_MARKER=str(marker))
    try:
        det = torch.are_deterministic_algorithms_enabled()
        try:
            run_pretrain(load_config(None, [*args, f"run.dir={full_dir}"]))
        finally:
            torch.use_deterministic_algorithms(det)
    except BaseException:
        cut.kill()
        raise
    sigkill_at_marker(cut, marker, 13)
    last = cut_dir / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=False)["loops"]["fit_loop"]["state_dict"]
    loader_state = state["combined_loader"][0]
    assert (loader_state["epoch"], loader_state["position"], loader_state["num_samples"]) == (1, 32, 128)
    resumed = _launch(["--resume", str(last)])
    out = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, out[-3000:]

    a, b = load_file(full_dir / "model" / "model.safetensors"), load_file(cut_dir / "model" / "model.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    mf, mc = read_metrics(full_dir / "logs" / "metrics.csv"), read_metrics(cut_dir / "logs" / "metrics.csv")
    assert mf["train/loss"][0] == [float(i) for i in range(16)]
    assert mc["train/loss"] == mf["train/loss"]
    assert len(mf["val/loss"][1]) == 2 and mc["val/loss"] == mf["val/loss"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_on_shards_matches_one_process(shards, tmp_path):
    """As tests/test_ddp.py, reading shards: 2 ranks x batch 16 vs 1 process x batch 32, same losses at
    every step and the same validation loss: every held-out image counts once although the split
    between ranks is uneven (33 images: 17 on rank 0, 16 on rank 1; a mean of the ranks' means would
    differ). 127 training images make 3 global batches of 32 an epoch, the other 31 are left out."""
    from safetensors.torch import load_file

    from mimkit.train.callbacks import read_metrics
    from mimkit.train.config import load_config
    from mimkit.train.run import run_pretrain

    args = _shard_args(shards, "model.masking=center", f"data.val_fraction={33 / N_IMAGES}", "trainer.max_epochs=2",
                       "optim.blr=0.05", "optim.warmup_epochs=0.5")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("MIMKIT_RUN_DIR", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), "-m", "mimkit", "pretrain", *args, "data.batch_size=16",
           "trainer.strategy=ddp", "trainer.devices=2", f"run.dir={tmp_path / 'ddp'}"]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        run_pretrain(load_config(None, [*args, "data.batch_size=32", f"run.dir={tmp_path / 'one'}"]))
        out = proc.communicate(timeout=300)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-4000:]
    m1, m2 = read_metrics(tmp_path / "one" / "logs" / "metrics.csv"), read_metrics(tmp_path / "ddp" / "logs" / "metrics.csv")
    assert m1["train/loss"][0] == m2["train/loss"][0] == [float(i) for i in range(2 * 3)]
    assert m1["train/loss"][1] == pytest.approx(m2["train/loss"][1], rel=1e-5, abs=1e-6)
    assert len(m1["val/loss"][1]) == 2
    assert m1["val/loss"][1] == pytest.approx(m2["val/loss"][1], rel=1e-5, abs=1e-6)
    a, b = load_file(tmp_path / "one" / "model" / "model.safetensors"), load_file(tmp_path / "ddp" / "model" / "model.safetensors")
    worst = max((a[k] - b[k]).abs().max().item() for k in a if not k.endswith("attn.qkv.bias"))
    assert worst < 2e-5, worst


# ---------------------------------------------------------------- bad input

def cli_error(capsys, *args) -> str:
    capsys.readouterr()
    rc = main(["pretrain", *args])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("mimkit pretrain: error:")]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _copy_shards(shards, dest, index=True):
    dest.mkdir()
    for p in shards.iterdir():
        if p.suffix == ".tar" or (index and p.name.endswith(".index.json")):
            shutil.copy(p, dest / p.name)
    return dest


@pytest.mark.parametrize("case, expected", [
    ("missing", "shard {d}/train-000004.tar does not exist (1 of the 5 shards named by data.urls are missing)"),
    ("empty pattern", "matches no file"),
    ("empty dir", "no .tar shards in {d}"),
    ("truncated, indexed", "shard {d}/train-000002.tar has 30000 bytes but its index {d}/train.index.json says"),
    ("truncated, scanned", "shard {d}/train-000002.tar is"),
    ("compressed", "shard {d}/train-000001.tar is compressed"),
    ("url", "is a URL: mimkit reads shards from a file system path"),
    ("not a tar", "shard {d}/train-000003.tar is not a readable tar file"),
])
def test_bad_shards_are_one_clear_line(shards, tmp_path, capsys, case, expected):
    d = tmp_path / "s"
    urls = str(d)
    if case == "missing":
        _copy_shards(shards, d)
        urls = str(d / "train-{000000..000004}.tar")
    elif case == "empty pattern":
        _copy_shards(shards, d)
        urls = str(d / "val-*.tar")
    elif case == "empty dir":
        d.mkdir()
    elif case.startswith("truncated"):
        _copy_shards(shards, d, index=case.endswith("indexed"))
        p = d / "train-000002.tar"
        p.write_bytes(p.read_bytes()[:30000])
    elif case == "compressed":
        import gzip

        _copy_shards(shards, d, index=False)
        p = d / "train-000001.tar"
        p.write_bytes(gzip.compress(p.read_bytes()))
    elif case == "url":
        urls = "https://example.com/train-{000000..000003}.tar"
    elif case == "not a tar":
        _copy_shards(shards, d, index=False)
        (d / "train-000003.tar").write_bytes(b"hello, not a tar file" * 100)
    line = cli_error(capsys, *_shard_args(shards, "data.batch_size=16", "trainer.max_epochs=1",
                                          f"run.dir={tmp_path / 'run'}"), f"data.urls={urls}")
    assert expected.format(d=d) in line
    assert not (tmp_path / "run").exists()  # refused before the run directory was made


def test_corrupt_member_is_skipped_and_counted_or_raises(shards, tmp_path, capsys):
    """A damaged image inside an intact tar: replaced by the next readable sample with a counted
    warning naming shard and member, or `data.on_error=raise` stops with that name."""
    d = _copy_shards(shards, tmp_path / "s")
    ds = ShardImages(d, in_chans=1)
    p = Path(ds.paths[1])
    data = bytearray(p.read_bytes())
    rows = np.flatnonzero(ds.shard == 1)[:2]
    for r in rows:  # same length, so the tar and its index stay valid
        off, size = int(ds.offset[r]), int(ds.size[r])
        data[off:off + size] = b"\0" * size
    p.write_bytes(bytes(data))
    ds = ShardImages(d, in_chans=1)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        items = [ds[i] for i in range(len(ds))]
    msgs = [str(w.message) for w in rec if "skipping unreadable image" in str(w.message)]
    assert len(msgs) == 2 and all(f"{p}:" in m for m in msgs)
    assert [m.split("); ")[-1] for m in msgs] == [f"{k} of {N_IMAGES} images skipped so far" for k in (1, 2)]
    assert all(x.size == (28, 28) for x, _ in items)
    line = cli_error(capsys, *_shard_args(d, "data.batch_size=16", "trainer.max_epochs=1", "data.on_error=raise",
                                          "data.limit=80", f"run.dir={tmp_path / 'run'}"))
    assert "cannot read image" in line and f"{p}:" in line and "data.on_error=skip" in line


def test_hf_corrupt_rows_are_counted_and_bad_columns_named(hf_dir, tmp_path):
    datasets = pytest.importorskip("datasets")
    from mimkit.data.hf_dataset import HFImages

    ds = datasets.load_from_disk(str(hf_dir))
    rows = ds.cast_column("image", datasets.Image(decode=False)).to_dict()
    rows["image"][3] = {"bytes": b"not an image", "path": None}
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)})
    datasets.Dataset.from_dict(rows, features=feats).save_to_disk(str(tmp_path / "bad"))
    h = HFImages(tmp_path / "bad", in_chans=1)
    with pytest.warns(UserWarning, match=rf"skipping unreadable image .*bad\[train\]\[3\] .*1 of {N_IMAGES} images"):
        x, _ = h[3]
    assert x.size == (28, 28)
    with pytest.raises(ValueError, match="data.image_column=img is not a column of .* \\(columns: image, label\\)"):
        HFImages(tmp_path / "bad", image_column="img")
    with pytest.raises(ValueError, match="holds one dataset, not a split named .validation."):
        HFImages(tmp_path / "bad", split="validation")


@pytest.mark.parametrize("override, expected", [
    ("data.name=webdatset", "data.name must be one of fashion_mnist, image_folder, webdataset, hf_dataset, got "
                            "'webdatset'; did you mean webdataset?"),
    ("data.url=/x", "unknown config key 'data.url'; did you mean urls"),
    ("data.val_fractoin=0.1", "unknown config key 'data.val_fractoin'; did you mean val_fraction"),
    ("data.name=webdataset", "data.name=webdataset needs data.urls"),
    ("data.name=hf_dataset", "data.name=hf_dataset needs data.path"),
    ("data.val_fraction=1.5", "data.val_fraction must be a number between 0 and 1"),
    ("data.val_root=/x", "data.val_root is for data.name=image_folder; with data.name=fashion_mnist use data.val_split"),
    ("run.checkpoint_monitor=val/loss", "run.checkpoint_monitor=val/loss needs a validation set"),
    ("run.checkpoint_monitor=val_loss", "run.checkpoint_monitor must be 'step' (keep the newest) or 'val/loss' (keep "
                                        "the best), got 'val_loss'; did you mean val/loss?"),
    ("data.shard_window=0", "data.shard_window must be an integer >= 1 (or null), got 0"),
])
def test_config_errors_for_the_new_keys(tmp_path, capsys, override, expected):
    args = [*TINY, "data.limit=64", "data.batch_size=16", f"run.root={tmp_path}", override]
    assert expected in cli_error(capsys, *args)


def test_two_validation_sources_are_refused(tmp_path, capsys):
    line = cli_error(capsys, *TINY, f"run.root={tmp_path}", "data.val_split=test", "data.val_fraction=0.1")
    assert "set one validation source, not data.val_split and data.val_fraction" in line


def test_hf_dataset_trains_through_the_cli_with_decode_on_device(hf_dir, tmp_path):
    """data.name=hf_dataset end to end, with the images decoded by the device decoder (on the CPU here)
    from bytes a data worker sends."""
    assert main(["pretrain", *TINY, "data.name=hf_dataset", f"data.path={hf_dir}", "data.in_chans=1",
                 "data.batch_size=32", "trainer.max_epochs=1", "data.decode_on_device=true", "data.val_fraction=0.2",
                 "data.num_workers=1",
                 f"run.dir={tmp_path / 'run'}"]) == 0
    assert (tmp_path / "run" / "model" / "model.safetensors").exists()


# ---------------------------------------------------------------- validation loss

@pytest.fixture(scope="module")
def val_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("val")
    make_folder(root / "images", n=40, offset=N_IMAGES)
    write_shards(root / "images", root / "shards", prefix="val", progress=False)
    return root / "shards"


def test_validation_loss_fixed_masks_best_checkpoint_and_unchanged_training(shards, val_shards, tmp_path):
    """val/loss is logged every epoch; with the weights (nearly) frozen it is the same every epoch
    (masks fixed by seed, no augmentation); adding a validation set leaves the training losses
    bit-identical; run.checkpoint_monitor=val/loss keeps the best epoch's checkpoint."""
    import re

    from mimkit.train.callbacks import read_metrics
    from mimkit.train.config import load_config
    from mimkit.train.run import run_pretrain

    base = _shard_args(shards, "data.batch_size=32", "trainer.max_epochs=3", "optim.blr=0.05")
    val = [f"data.val_urls={val_shards}"]
    run_pretrain(load_config(None, [*base, f"run.dir={tmp_path / 'plain'}"]))
    run_pretrain(load_config(None, [*base, *val, "run.checkpoint_monitor=val/loss", "run.keep_periodic=1",
                                    f"run.dir={tmp_path / 'val'}"]))
    run_pretrain(load_config(None, [*base, *val, "optim.lr=1.0e-30", f"run.dir={tmp_path / 'frozen'}"]))
    plain, with_val = read_metrics(tmp_path / "plain" / "logs" / "metrics.csv"), read_metrics(tmp_path / "val" / "logs" / "metrics.csv")
    assert "val/loss" not in plain
    assert plain["train/loss"] == with_val["train/loss"]
    steps, losses = with_val["val/loss"]
    assert len(losses) == 3 and len(set(losses)) == 3  # one per epoch, and training moves it
    kept = [p.name for p in (tmp_path / "val" / "checkpoints").glob("epoch*.ckpt")]
    assert len(kept) == 1
    best_epoch = int(np.argmin(losses))
    assert int(re.match(r"epoch(\d+)", kept[0]).group(1)) == best_epoch
    frozen = read_metrics(tmp_path / "frozen" / "logs" / "metrics.csv")["val/loss"][1]
    assert len(frozen) == 3 and frozen[0] == pytest.approx(frozen[1], rel=1e-6) == pytest.approx(frozen[2], rel=1e-6)
    assert frozen[0] != pytest.approx(losses[0], rel=1e-3)  # (the frozen run really did not train)
    assert (tmp_path / "val" / "loss_curve.png").exists()
