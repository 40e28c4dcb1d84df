"""Safe by default: loading a checkpoint never runs code from it (issue 15, part 1).

Every entry point that reads a pickled checkpoint gets a malicious file (a pickle whose unpickling
would create ``PWNED`` beside it) and must refuse it with one clear line naming the file, what it
holds and the opt-in, without creating the file; with the opt-in (``--trust-checkpoint`` /
``trust_checkpoint=True``) the same file loads. mimkit's own checkpoints, old and new, still load
without it (tests/test_compat.py, tests/test_bad_input.py, tests/test_resume.py)."""
import argparse
import importlib.util
import pickle
import shutil
from pathlib import Path

import lightning  # noqa: F401  (import now: its log handler must not bind to a test's captured stderr)
import pytest
import torch

import mimkit
from mimkit.cli import main
from mimkit.files import UntrustedCheckpointError, read_torch_checkpoint, trusted_checkpoints

ROOT = Path(__file__).resolve().parents[1]
FIX = Path(__file__).parent / "fixtures" / "v0_1"

pytestmark = pytest.mark.usefixtures("one_thread")


class Payload:
    """What an attacker pickles: unpickling it runs code (here, it creates ``marker``)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def fixture_ckpt() -> dict:
    return torch.load(FIX / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


@pytest.fixture
def marker(tmp_path):
    return tmp_path / "PWNED"


@pytest.fixture
def evil_run(tmp_path, marker):
    """A copy of the mimkit 0.1 run whose last.ckpt also holds the payload (a real mimkit checkpoint
    otherwise, so the opt-in can load and resume it)."""
    run = tmp_path / "run"
    shutil.copytree(FIX / "run", run)
    torch.save({**fixture_ckpt(), "payload": Payload(marker)}, run / "checkpoints" / "last.ckpt")
    return run


@pytest.fixture
def evil_ckpt(evil_run):
    return evil_run / "checkpoints" / "last.ckpt"


@pytest.fixture
def evil_tokenizer_ckpt(evil_run, tmp_path):
    """The same poisoned checkpoint in a run directory of `mimkit tokenizer train` (its config names a
    tokenizer recipe)."""
    import yaml

    run = tmp_path / "tokenizer_run"
    shutil.copytree(evil_run, run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["model"] = {"name": "dvae_tiny_28"}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    return run / "checkpoints" / "last.ckpt"


def official_sd():
    from mimkit.interop.official import official_mae_state_dict

    return official_mae_state_dict(mimkit.load(FIX / "mae"))


@pytest.fixture
def evil_official(tmp_path, marker):
    path = tmp_path / "checkpoint-0.pth"
    torch.save({"model": official_sd(), "epoch": 0, "args": argparse.Namespace(blr=1e-3), "payload": Payload(marker)},
               path)
    return path


def dalle_sd():
    from mimkit.tokenizer import DALLEEncoder

    return DALLEEncoder(img_size=32, n_hid=8, vocab_size=16).state_dict()


@pytest.fixture
def evil_dalle(tmp_path, marker):
    path = tmp_path / "dalle_encoder.pt"
    torch.save({"state_dict": dalle_sd(), "payload": Payload(marker)}, path)
    return path


def dvae_sd():
    from mimkit.tokenizer import DallePytorchDVAE

    return DallePytorchDVAE(img_size=28, num_tokens=16, codebook_dim=8, num_layers=2, hidden_dim=8,
                            channels=1).state_dict()


@pytest.fixture
def evil_dvae(tmp_path, marker):
    path = tmp_path / "pytorch_model.bin"
    torch.save({"weights": dvae_sd(), "payload": Payload(marker)}, path)
    return path


@pytest.fixture
def evil_images(tmp_path, marker):
    path = tmp_path / "images.pt"
    torch.save({"images": torch.rand(2, 1, 28, 28), "payload": Payload(marker)}, path)
    return path


@pytest.fixture
def evil_hf(tmp_path, marker):
    """A transformers directory whose weights come as a pickled pytorch_model.bin."""
    from mimkit.interop.hf import to_hf

    d = tmp_path / "hf"
    to_hf(mimkit.load(FIX / "mae")).save_pretrained(d)
    (d / "model.safetensors").unlink()
    torch.save({**to_hf(mimkit.load(FIX / "mae")).state_dict(), "payload": Payload(marker)}, d / "pytorch_model.bin")
    return d


@pytest.fixture
def tokenizer_dir(tmp_path):
    tok = mimkit.create("dvae_tiny_28", hidden_dim=8, code_dim=8, vocab_size=16)
    return mimkit.save(tok, tmp_path / "tok")


def assert_refused(message: str, path, marker) -> None:
    """One line naming the file, what it holds (``exec``) and the opt-in; nothing ran."""
    assert "\n" not in message
    assert message.startswith(f"untrusted checkpoint {path}: it holds exec,"), message
    assert "could run code" in message and "--trust-checkpoint (trust_checkpoint=True in Python)" in message
    assert not Path(marker).exists(), "the checkpoint's code ran"


def cli_refuses(capsys, argv, path, marker) -> None:
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("mimkit ")]
    assert len(lines) == 1, err
    prefix = f"mimkit {argv[0]}: error: "
    assert lines[0].startswith(prefix), err
    assert_refused(lines[0][len(prefix):], path, marker)


# ---------------------------------------------------------------------------- the reader itself

@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4")
@pytest.mark.parametrize("layout", ["zip", "zip protocol 4", "legacy", "raw pickle"])
def test_every_pickle_layout_is_refused_without_running_it(tmp_path, marker, layout):
    obj = {**fixture_ckpt(), "payload": Payload(marker)}
    path = tmp_path / "model.ckpt"
    if layout == "raw pickle":
        path.write_bytes(pickle.dumps(obj, protocol=pickle.DEFAULT_PROTOCOL))
    else:
        torch.save(obj, path, pickle_protocol=4 if layout == "zip protocol 4" else 2,
                   _use_new_zipfile_serialization=layout != "legacy")
    with pytest.raises(UntrustedCheckpointError) as e:
        mimkit.load(path)
    assert_refused(str(e.value), path, marker)
    assert "exec" in e.value.names


def test_mimkit_checkpoints_need_no_trust(tmp_path):
    """What mimkit and Lightning write loads weights-only: the 0.1 run's checkpoint, and the
    allowlisted argparse options of an official MAE training checkpoint."""
    ckpt = read_torch_checkpoint(FIX / "run" / "checkpoints" / "last.ckpt")
    assert {"state_dict", "optimizer_states", "loops", "callbacks", "hyper_parameters"} <= set(ckpt)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(FIX / "run" / "checkpoints" / "last.ckpt") == []
    torch.save({"model": official_sd(), "epoch": 3, "args": argparse.Namespace(blr=1e-3, model="mae")},
               tmp_path / "checkpoint-3.pth")
    assert read_torch_checkpoint(tmp_path / "checkpoint-3.pth")["args"].model == "mae"
    from mimkit.interop.official import load_official_mae

    assert load_official_mae(tmp_path / "checkpoint-3.pth").encoder.embed_dim == 16


def test_damaged_files_are_not_called_untrusted(tmp_path):
    (tmp_path / "junk.ckpt").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ValueError, match="is not a readable PyTorch checkpoint") as e:
        read_torch_checkpoint(tmp_path / "junk.ckpt")
    assert not isinstance(e.value, UntrustedCheckpointError)


# ---------------------------------------------------------------------------- Python entry points

def test_mimkit_load_refuses_then_trusts(evil_run, evil_ckpt, marker):
    for target in (evil_ckpt, evil_run):  # a .ckpt, or a run directory (-> checkpoints/last.ckpt)
        with pytest.raises(UntrustedCheckpointError) as e:
            mimkit.load(target)
        assert_refused(str(e.value), evil_ckpt, marker)
    model = mimkit.load(evil_ckpt, trust_checkpoint=True)
    assert marker.exists()  # the opt-in really unpickles fully
    saved = mimkit.load(FIX / "run" / "model")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), saved.state_dict().values()))
    from mimkit.eval.data import load_model_spec

    marker.unlink()
    with pytest.raises(UntrustedCheckpointError):
        load_model_spec(str(evil_ckpt))
    assert not marker.exists()
    assert load_model_spec(str(evil_ckpt), trust_checkpoint=True) is not None and marker.exists()


def test_official_mae_refuses_then_trusts(evil_official, marker):
    from mimkit.interop.official import load_official_mae

    with pytest.raises(UntrustedCheckpointError) as e:
        load_official_mae(evil_official)
    assert_refused(str(e.value), evil_official, marker)
    model = load_official_mae(evil_official, trust_checkpoint=True)
    assert marker.exists()
    assert torch.equal(model.encoder.patch_embed.proj.weight, official_sd()["patch_embed.proj.weight"])


def test_resume_refuses_before_any_training(evil_run, evil_ckpt, marker):
    from mimkit.train.callbacks import AtomicCheckpointIO
    from mimkit.train.run import resume_point

    for read in (lambda: resume_point(evil_run, evil_ckpt), lambda: resume_point(evil_run, evil_run),
                 lambda: AtomicCheckpointIO().load_checkpoint(evil_ckpt)):
        with pytest.raises(UntrustedCheckpointError) as e:
            read()
        assert_refused(str(e.value), evil_ckpt, marker)
    with trusted_checkpoints():
        assert resume_point(evil_run, evil_ckpt) == (str(evil_ckpt), 4)
    assert marker.exists()


def test_tokenizer_files_refuse_then_trust(evil_dalle, evil_dvae, marker):
    from mimkit.tokenizer import load_dalle_encoder, load_dalle_pytorch_dvae, load_tokenizer

    for path, load in ((evil_dalle, lambda p, **kw: load_dalle_encoder(p, img_size=32, **kw)),
                       (evil_dvae, lambda p, **kw: load_dalle_pytorch_dvae(p, img_size=28, **kw)),
                       (evil_dalle, lambda p, **kw: load_tokenizer(p, img_size=32, **kw)),
                       (evil_dvae, lambda p, **kw: load_tokenizer(p, img_size=28, **kw))):
        with pytest.raises(UntrustedCheckpointError) as e:
            load(path)
        assert_refused(str(e.value), path, marker)
        assert load(path, trust_checkpoint=True).vocab_size == 16 and marker.exists()
        marker.unlink()


def test_beit_tokenizer_path_is_read_safely(evil_dvae, marker):
    with pytest.raises(UntrustedCheckpointError) as e:
        mimkit.create("beit_vit_tiny_patch4_28", embed_dim=16, depth=1, num_heads=2, vocab_size=None,
                      tokenizer_path=str(evil_dvae))
    assert_refused(str(e.value), evil_dvae, marker)
    with trusted_checkpoints():
        beit = mimkit.create("beit_vit_tiny_patch4_28", embed_dim=16, depth=1, num_heads=2, vocab_size=None,
                             tokenizer_path=str(evil_dvae))
    assert beit.vocab_size == 16 and marker.exists()


def test_transformers_directory_refuses_then_trusts(evil_hf, marker):
    from mimkit.interop.hf import from_hf

    with pytest.raises(UntrustedCheckpointError) as e:
        from_hf(evil_hf)
    assert_refused(str(e.value), evil_hf / "pytorch_model.bin", marker)
    with trusted_checkpoints():
        model = from_hf(evil_hf)
    assert marker.exists()
    ref = mimkit.load(FIX / "mae")
    assert torch.equal(model.encoder.patch_embed.proj.weight, ref.encoder.patch_embed.proj.weight)


def test_image_tensor_files_are_read_safely(evil_images, marker):
    from mimkit.tokenizer.io import load_images

    with pytest.raises(UntrustedCheckpointError) as e:
        load_images(str(evil_images), 28, 1, (0.0,), (1.0,))
    assert_refused(str(e.value), evil_images, marker)


def _benchmark():
    spec = importlib.util.spec_from_file_location("fmnist_quality", ROOT / "benchmarks" / "fmnist_quality.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_benchmark_reuses_runs_without_unpickling_and_the_report_refuses_them(evil_run, evil_ckpt, marker, tmp_path):
    """The quality benchmark decides whether a run can be reused from its schedule.json, config.yaml (safe
    YAML) and model/ (safetensors) only; a run directory whose weights are only in a poisoned .ckpt is
    not reused, and the report refuses to read it without the opt-in. Nothing of the payload runs."""
    import json as _json

    bench = _benchmark()
    args = bench.parse_args(["--curve", "1", "--work", str(tmp_path / "work")])
    run = tmp_path / "work" / "curve" / "mae_vit_tiny_patch4_28-1min"
    shutil.copytree(evil_run, run)
    (run / "schedule.json").write_text(_json.dumps({"max_minutes": 1.0, "total_steps": 4, "finished_at_step": 4}))
    shutil.rmtree(run / "model", ignore_errors=True)
    assert bench.why_not_reused(run, "mae_vit_tiny_patch4_28", 1.0, args) == "no finished run there"
    assert not marker.exists()
    from mimkit.eval.report import build_report

    with pytest.raises(ValueError) as e:
        build_report([str(run)], "fashion_mnist", None, limit=50, test_limit=20, progress=False)
    assert_refused(str(e.value), run / "checkpoints" / "last.ckpt", marker)


def test_val_loss_benchmark_refuses_a_reused_runs_checkpoint(evil_run, evil_ckpt, marker, tmp_path):
    spec = importlib.util.spec_from_file_location("val_loss_vs_knn", ROOT / "benchmarks" / "val_loss_vs_knn.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    periodic = evil_run / "checkpoints" / "epoch000-step0000004.ckpt"
    shutil.copy(evil_ckpt, periodic)
    with pytest.raises(SystemExit) as e:
        bench.main(["--out", str(tmp_path / "v.json"), "--run", str(evil_run)])
    assert_refused(str(e.value).removeprefix("val_loss_vs_knn: error: "), periodic, marker)


# ---------------------------------------------------------------------------- command line

def _cases(evil_ckpt, evil_tokenizer_ckpt, evil_official, evil_dalle, evil_dvae, evil_images, evil_hf, tokenizer_dir,
           out):
    """(argv, file named in the refusal) for every command option that reads a checkpoint."""
    beit = ["--config", str(ROOT / "configs" / "beit_vit_tiny_patch4_28.yaml"), f"model.tokenizer_path={evil_dvae}",
            "model.embed_dim=16", "model.depth=1", "model.num_heads=2", "data.limit=64", "data.batch_size=16",
            f"run.dir={out / 'beit'}", "trainer.enable_progress_bar=false"]
    return {
        "eval knn --checkpoint": (["eval", "knn", "--checkpoint", str(evil_ckpt)], evil_ckpt),
        "eval linear --checkpoint": (["eval", "linear", "--checkpoint", str(evil_ckpt)], evil_ckpt),
        "eval knn --checkpoint hf:": (["eval", "knn", "--checkpoint", f"hf:{evil_hf}"], evil_hf / "pytorch_model.bin"),
        "finetune --checkpoint": (["finetune", "--checkpoint", str(evil_ckpt)], evil_ckpt),
        "visualize --checkpoint": (["visualize", "--checkpoint", str(evil_ckpt), "--out", str(out / "v")], evil_ckpt),
        "export --checkpoint": (["export", "--checkpoint", str(evil_ckpt), "--format", "safetensors", "--out",
                                 str(out / "e")], evil_ckpt),
        "import --from official": (["import", "--from", "official", str(evil_official), "--out", str(out / "o")],
                                   evil_official),
        "import --from hf": (["import", "--from", "hf", str(evil_hf), "--out", str(out / "h")],
                             evil_hf / "pytorch_model.bin"),
        "pretrain --resume": (["pretrain", "--resume", str(evil_ckpt)], evil_ckpt),
        "pretrain model.tokenizer_path": (["pretrain", *beit], evil_dvae),
        "tokenizer train --resume": (["tokenizer", "train", "--resume", str(evil_tokenizer_ckpt)],
                                     evil_tokenizer_ckpt),
        "tokenizer encode --tokenizer": (["tokenizer", "encode", "--tokenizer", str(evil_ckpt), "--images",
                                          "fashion_mnist", "--out", str(out / "ids.pt")], evil_ckpt),
        "tokenizer stats --tokenizer": (["tokenizer", "stats", "--tokenizer", str(evil_dvae), "--images",
                                         "fashion_mnist"], evil_dvae),
        "tokenizer encode --images": (["tokenizer", "encode", "--tokenizer", str(tokenizer_dir), "--images",
                                       str(evil_images), "--out", str(out / "ids.pt")], evil_images),
        "tokenizer import-dalle --weights": (["tokenizer", "import-dalle", "--weights", str(evil_dalle), "--out",
                                              str(out / "d"), "--img-size", "32"], evil_dalle),
        "tokenizer import --format dalle": (["tokenizer", "import", "--format", "dalle", "--weights", str(evil_dalle),
                                             "--out", str(out / "d"), "--image-size", "32"], evil_dalle),
        "tokenizer import --format dalle-pytorch": (["tokenizer", "import", "--format", "dalle-pytorch", "--weights",
                                                     str(evil_dvae), "--out", str(out / "p"), "--image-size", "28"],
                                                    evil_dvae),
    }


CASES = list(_cases(*[Path("unused")] * 9))  # the case names


@pytest.mark.parametrize("case", CASES)
def test_cli_refuses_an_untrusted_checkpoint(capsys, tmp_path, marker, case, evil_ckpt, evil_tokenizer_ckpt,
                                             evil_official, evil_dalle, evil_dvae, evil_images, evil_hf, tokenizer_dir):
    argv, path = _cases(evil_ckpt, evil_tokenizer_ckpt, evil_official, evil_dalle, evil_dvae, evil_images, evil_hf,
                        tokenizer_dir, tmp_path / "out")[case]
    cli_refuses(capsys, argv, path, marker)


def test_cli_opt_in_loads_the_same_files(capsys, tmp_path, marker, evil_ckpt, evil_official, evil_dvae):
    out = tmp_path / "out"
    assert main(["export", "--checkpoint", str(evil_ckpt), "--format", "safetensors", "--out", str(out / "e"),
                 "--trust-checkpoint"]) == 0
    assert marker.exists()
    saved, exported = mimkit.load(FIX / "run" / "model"), mimkit.load(out / "e")
    assert all(torch.equal(a, b) for a, b in zip(saved.state_dict().values(), exported.state_dict().values()))
    marker.unlink()
    assert main(["import", "--from", "official", str(evil_official), "--out", str(out / "o"),
                 "--trust-checkpoint"]) == 0
    assert marker.exists() and (out / "o" / "model.safetensors").exists()
    marker.unlink()
    assert main(["tokenizer", "import", "--format", "dalle-pytorch", "--weights", str(evil_dvae), "--out",
                 str(out / "p"), "--image-size", "28", "--trust-checkpoint"]) == 0
    assert marker.exists() and mimkit.load(out / "p").vocab_size == 16


def test_cli_resume_with_the_opt_in_continues_the_run(capsys, evil_run, evil_ckpt, marker):
    assert main(["pretrain", "--resume", str(evil_ckpt), "--trust-checkpoint", "trainer.max_epochs=2",
                 "trainer.enable_progress_bar=false"]) == 0, capsys.readouterr().err[-2000:]
    assert marker.exists()
    last = read_torch_checkpoint(evil_ckpt)  # the new last.ckpt is mimkit's own again: no trust needed
    assert last["global_step"] == 8 and "payload" not in last
