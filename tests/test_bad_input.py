"""Bad input gets a clear, one-line answer: broken image folders, config mistakes, a loss that turns
NaN/inf, truncated or foreign checkpoint files. CLI errors: `mimkit.cli.main` returns 2 and prints
one line `mimkit pretrain: error: ...` (no traceback)."""
import shutil
import warnings

import lightning  # noqa: F401  (import now: its log handler must not bind to a test's captured stderr)
import numpy as np
import pytest
import torch
from PIL import Image

import mimkit
from mimkit.cli import main
from mimkit.data import SafeImageFolder, eval_transform, pretrain_transform

TINY = ["model.embed_dim=32", "model.depth=1", "model.num_heads=2", "model.decoder_embed_dim=16",
        "model.decoder_depth=1", "model.decoder_num_heads=2", "trainer.enable_progress_bar=false",
        "trainer.accelerator=cpu", "run.recon_images=0", "trainer.log_every_n_steps=1"]
FMNIST = [*TINY, "data.limit=64", "data.batch_size=16", "trainer.max_epochs=1"]


pytestmark = pytest.mark.usefixtures("one_thread")


def cli(capsys, *args):
    """Run `mimkit pretrain ARGS`; return (exit code, stderr)."""
    capsys.readouterr()
    rc = main(["pretrain", *args])
    return rc, capsys.readouterr().err


def one_line_error(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("mimkit pretrain: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# ---------------------------------------------------------------- image folders

def _save(path, arr, mode=None, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode).save(path, **kw) if mode else Image.fromarray(arr).save(path, **kw)
    return path


@pytest.fixture
def messy_folder(tmp_path):
    """One class folder mixing every kind of file a real dataset contains."""
    root = tmp_path / "images"
    c = root / "cls_a"
    rng = np.random.default_rng(0)
    _save(c / "rgb.png", rng.integers(0, 256, (40, 36, 3), dtype=np.uint8))
    _save(c / "gray.png", np.full((30, 30), 100, np.uint8))
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:16, :, 3] = 255  # top half opaque red, bottom half fully transparent
    _save(c / "rgba.png", rgba)
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).convert("P").save(c / "palette.png")
    _save(c / "sixteen.png", np.full((30, 30), 65535, np.uint16))
    _save(c / "sixteen_dark.png", np.full((30, 30), 200, np.uint16))  # dark 16-bit, not 8-bit
    Image.fromarray(np.full((12, 12), 0.5, np.float32), "F").save(c / "float.tif")  # 32-bit float in [0, 1]
    _save(c / "tiny.png", rng.integers(0, 256, (3, 3, 3), dtype=np.uint8))  # smaller than the 28-px crop
    _save(c / "one.png", np.full((1, 1, 3), 7, np.uint8))
    data = (c / "rgb.png").read_bytes()
    (c / "truncated.png").write_bytes(data[: len(data) // 2])
    (c / "empty.png").write_bytes(b"")
    (c / "notes.jpg").write_text("not an image")
    (c / "readme.txt").write_text("ignored: not an image extension")
    return root


BAD = {"truncated.png", "empty.png", "notes.jpg"}


def test_messy_folder_skips_unreadable_files_with_a_counted_warning(messy_folder):
    ds = SafeImageFolder(messy_folder, pretrain_transform(28, (0.5,) * 3, (0.5,) * 3), in_chans=3)
    assert len(ds) == 12  # readme.txt is not an image file
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        items = [ds[i] for i in range(len(ds))]
    for x, label in items:
        assert x.shape == (3, 28, 28) and torch.isfinite(x).all() and label == 0
    msgs = [str(w.message) for w in rec if "skipping unreadable image" in str(w.message)]
    assert len(msgs) == 3
    assert {m.split("skipping unreadable image ")[1].split(" ")[0].rsplit("/", 1)[1] for m in msgs} == BAD
    assert [m.split("); ")[-1] for m in msgs] == [f"{k} of 12 images skipped so far" for k in (1, 2, 3)]
    assert {p.rsplit("/", 1)[1] for p in ds.bad} == BAD
    # a second pass warns no more (each file is reported once)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        [ds[i] for i in range(len(ds))]
    assert not [w for w in rec if "skipping" in str(w.message)]


def test_mixed_modes_are_converted_faithfully(messy_folder):
    ds = SafeImageFolder(messy_folder, None, in_chans=3)
    by_name = {p.rsplit("/", 1)[1]: i for i, (p, _) in enumerate(ds.samples)}

    def arr(name, d=ds):
        return np.asarray(d[by_name[name]][0])

    gray = arr("gray.png")
    assert gray.shape == (30, 30, 3) and (gray == 100).all()  # grayscale -> 3 equal channels
    rgba = arr("rgba.png")
    assert (rgba[:16] == [255, 0, 0]).all() and (rgba[16:] == 255).all()  # transparent -> white background
    assert (arr("sixteen.png") == 255).all()  # 16-bit full scale -> 255
    assert (arr("sixteen_dark.png") == 1).all()  # 200/65535*255 = 0.78 -> 1, not 200
    assert arr("palette.png").shape == (20, 20, 3)
    assert (arr("float.tif") == 128).all()  # 0.5 of full scale
    one = SafeImageFolder(messy_folder, None, in_chans=1)
    assert np.asarray(one[by_name["rgb.png"]][0]).ndim == 2  # in_chans=1 -> "L"
    # images smaller than the crop: both transforms upsample them
    tiny = Image.fromarray(np.zeros((3, 3, 3), np.uint8))
    assert eval_transform(28, (0.5,) * 3, (0.5,) * 3)(tiny).shape == (3, 28, 28)
    assert pretrain_transform(28, (0.5,) * 3, (0.5,) * 3)(tiny).shape == (3, 28, 28)


def test_on_error_raise_names_the_file(messy_folder):
    ds = SafeImageFolder(messy_folder, None, in_chans=3, on_error="raise")
    i = next(i for i, (p, _) in enumerate(ds.samples) if p.endswith("truncated.png"))
    with pytest.raises(ValueError, match=r"cannot read image .*truncated\.png.*data\.on_error=skip"):
        ds[i]


def test_folder_with_only_unreadable_files(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.png").write_bytes(b"\x89PNG broken")
    ds = SafeImageFolder(tmp_path, None)
    with pytest.warns(UserWarning, match="skipping"), pytest.raises(ValueError, match="none of the 1 images"):
        ds[0]


def test_training_on_the_messy_folder_through_the_cli(messy_folder, tmp_path, capsys):
    args = [*TINY, "data.name=image_folder", f"data.root={messy_folder}", "data.in_chans=3", "model.in_chans=3",
            "data.batch_size=4", "trainer.max_epochs=1", f"run.dir={tmp_path / 'run'}"]
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        assert main(["pretrain", *args]) == 0
    assert len([w for w in rec if "skipping unreadable image" in str(w.message)]) == 3
    assert (tmp_path / "run" / "model" / "model.safetensors").exists()
    rc, err = cli(capsys, *args, "data.on_error=raise", f"run.dir={tmp_path / 'run2'}")
    assert rc == 2
    line = one_line_error(err)
    assert "cannot read image" in line and str(messy_folder) in line and any(b in line for b in BAD)


@pytest.mark.parametrize("layout", ["no files", "empty class folders", "missing"])
def test_empty_or_missing_folder(tmp_path, capsys, layout):
    root = tmp_path / "data"
    if layout != "missing":
        root.mkdir()
    if layout == "empty class folders":
        (root / "a").mkdir()
        (root / "b").mkdir()
        (root / "b" / "x.txt").write_text("no images here")
    rc, err = cli(capsys, *FMNIST, "data.name=image_folder", f"data.root={root}", f"run.root={tmp_path}")
    assert rc == 2
    line = one_line_error(err)
    assert str(root) in line
    assert ("does not exist" in line) if layout == "missing" else ("no image files under" in line)


def test_flat_folder_of_images_is_one_class(tmp_path):
    for i in range(3):
        _save(tmp_path / f"{i}.png", np.full((8, 8), i, np.uint8))
    ds = SafeImageFolder(tmp_path, None, in_chans=1)
    assert len(ds) == 3 and ds.classes == [tmp_path.name]


# ---------------------------------------------------------------- configuration mistakes

@pytest.mark.parametrize("override, expected", [
    ("data.img_size=30", "data.img_size=30 is not divisible by the model's patch size 4"),
    ("model.img_size=30", "not divisible by patch size 4"),
    ("model.patch_size=5", "not divisible by patch size 5"),
    ("model.mask_ratio=1.5", "mask_ratio must be strictly between 0 and 1"),
    ("model.mask_ratio=0", "mask_ratio must be strictly between 0 and 1"),
    ("model.name=mae_vit_tiny_patch4_82", "unknown recipe 'mae_vit_tiny_patch4_82'. Did you mean mae_vit_tiny_patch4_28"),
    ("trainer.max_epoch=3", "unknown config key 'trainer.max_epoch'; did you mean max_epochs"),
    ("model.mask_ration=0.5", "unknown option 'mask_ration' for recipe 'mae_vit_tiny_patch4_28'; did you mean mask_ratio"),
    ("optimizer.lr=1", "unknown config section 'optimizer'; did you mean optim"),
    ("optim.lr=fast", "optim.lr must be a number > 0 (or null), got 'fast'"),
    ("data.batch_size=0", "data.batch_size must be an integer >= 1, got 0"),
    ("data.batch_size=1000", "fewer than data.batch_size=1000"),
    ("data.on_error=ignore", "data.on_error must be 'skip'"),
    ("trainer.precision=17", "Precision 17 is invalid"),
    ("max_epochs", "must look like section.key=value"),
])
def test_config_errors_are_one_clear_line(tmp_path, capsys, override, expected):
    rc, err = cli(capsys, *FMNIST, f"run.root={tmp_path}", override)
    assert rc == 2
    assert expected in one_line_error(err)


# ---------------------------------------------------------------- NaN / inf loss

@pytest.mark.parametrize("bad,fused", [(float("nan"), False), (float("inf"), False), (float("nan"), True)])
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch, bad, fused):
    """Plain AdamW checks each step's loss on the host; fused AdamW (the CUDA default) hands the flag to
    the kernel, which skips the update, and reads it a step later: the user sees the same outcome."""
    from mimkit.methods.mae import MAE

    calls = {"n": 0}
    forward = MAE.forward

    def poisoned(self, *a, **kw):  # the 6th training step's loss turns non-finite
        out = forward(self, *a, **kw)
        if self.training:
            calls["n"] += 1
            if calls["n"] == 6:
                out.loss = out.loss * bad
        return out

    monkeypatch.setattr(MAE, "forward", poisoned)
    run = tmp_path / "run"
    rc, err = cli(capsys, *FMNIST, "trainer.max_epochs=3", "run.checkpoint_every_n_steps=2", f"run.dir={run}",
                  f"optim.fused={str(fused).lower()}")
    assert rc == 2
    line = one_line_error(err)
    assert f"loss became {bad} at step 5 (epoch 1)" in line and "last good checkpoint is kept" in line
    assert "--resume" in line
    last = run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 4  # written before the bad step; nothing was written after it
    assert not (run / "model").exists()
    model = mimkit.load(last)  # the last good checkpoint loads, with finite weights
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert torch.isfinite(model(torch.rand(2, 1, 28, 28)).loss)
    if bad != bad:  # NaN: and training continues from it once the cause is gone
        monkeypatch.setattr(MAE, "forward", forward)
        assert main(["pretrain", "--resume", str(run)]) == 0  # a run directory means its last.ckpt
        assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 12


# ---------------------------------------------------------------- damaged checkpoints

@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from mimkit.train.config import load_config
    from mimkit.train.run import run_pretrain

    run = tmp_path_factory.mktemp("ckpt") / "run"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_pretrain(load_config(None, [*FMNIST, "trainer.max_epochs=1", f"run.dir={run}"]))
    finally:
        torch.set_num_threads(n)
    return run


def _damaged(trained_run, tmp_path, kind):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    last = run / "checkpoints" / "last.ckpt"
    data = last.read_bytes()
    if kind == "truncated":
        last.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        last.write_bytes(b"")
    elif kind == "text":
        last.write_text("this is not a checkpoint\n")
    elif kind == "foreign dict":
        torch.save({"weights": torch.zeros(3)}, last)
    elif kind == "foreign tensor":
        torch.save(torch.zeros(3), last)
    elif kind == "weights only":
        ck = torch.load(last, map_location="cpu", weights_only=False)
        torch.save({k: ck[k] for k in ("state_dict", "hyper_parameters", "global_step")}, last)
    return run, last


EXPECT = {
    "truncated": "is not a complete PyTorch checkpoint",
    "empty": "is empty (0 bytes)",
    "text": "is not a complete PyTorch checkpoint",
    "foreign dict": "is not a mimkit training checkpoint (it holds a dict with keys ['weights'])",
    "foreign tensor": "is not a mimkit training checkpoint (it holds a Tensor)",
    "weights only": "holds weights only (no optimizer_states, loops)",
}


@pytest.mark.parametrize("kind", list(EXPECT))
def test_resume_from_a_damaged_checkpoint_is_one_clear_line(trained_run, tmp_path, capsys, kind):
    run, last = _damaged(trained_run, tmp_path, kind)
    rc, err = cli(capsys, "--resume", str(last))
    assert rc == 2
    line = one_line_error(err)
    assert EXPECT[kind] in line and str(last) in line


@pytest.mark.parametrize("kind", ["truncated", "empty", "text", "foreign dict", "foreign tensor"])
def test_loading_a_damaged_checkpoint_is_a_clear_error(trained_run, tmp_path, kind):
    run, last = _damaged(trained_run, tmp_path, kind)
    msg = {"truncated": "not a readable PyTorch checkpoint", "empty": "not a readable PyTorch checkpoint",
           "text": "not a readable PyTorch checkpoint"}.get(kind, "not a mimkit training checkpoint")
    with pytest.raises(ValueError, match=msg):
        mimkit.load(last)


class _RunsCode:
    """Pickled into a checkpoint, unpickling it would create ``marker``: any code could run there."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def test_an_untrusted_checkpoint_is_refused_in_one_line(trained_run, tmp_path, capsys):
    run, last = _damaged(trained_run, tmp_path, None)
    ck = torch.load(last, map_location="cpu", weights_only=True)
    torch.save({**ck, "payload": _RunsCode(run / "PWNED")}, last)
    rc, err = cli(capsys, "--resume", str(last))
    assert rc == 2
    assert one_line_error(err) == (
        f"mimkit pretrain: error: untrusted checkpoint {last}: it holds exec, not only tensors and plain containers, "
        "and unpickling it could run code, so mimkit does not load it. If you trust this file, pass "
        "--trust-checkpoint (trust_checkpoint=True in Python).")
    with pytest.raises(ValueError, match="untrusted checkpoint"):
        mimkit.load(last)
    assert not (run / "PWNED").exists()


def test_resume_with_another_model_is_refused(trained_run, tmp_path, capsys):
    run, last = _damaged(trained_run, tmp_path, None)
    rc, err = cli(capsys, "--resume", str(last), "model.embed_dim=48")
    assert rc == 2
    assert "the checkpoint holds another model than the config (embed_dim: checkpoint 32 vs config 48)" in \
        one_line_error(err)


def test_resume_outside_a_run_directory(tmp_path, capsys):
    stray = tmp_path / "x.ckpt"
    stray.write_bytes(b"junk")
    rc, err = cli(capsys, "--resume", str(stray))
    assert rc == 2 and "needs a checkpoint inside a mimkit run directory" in one_line_error(err)
    rc, err = cli(capsys, "--resume", str(tmp_path / "missing.ckpt"))
    assert rc == 2 and "does not exist" in one_line_error(err)
