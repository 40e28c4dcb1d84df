"""`mimkit explore`: the explorer's functions on tiny models of every kind of prediction (pixels, visual
tokens, features), its bad-input lines, and the page end to end: a running server driven through
`gradio_client` (answers equal to `model.reconstruct`, `mimkit.viz.attention_maps` and the k-NN code on the
same inputs) and a real headless browser (Debian's chromium + chromium-driver through selenium) that runs
"mask and predict" once and saves a screenshot."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import mimkit
from mimkit.app.explorer import Explorer, enlarge, to_uint8
from mimkit.cli import main
from mimkit.viz import attention_maps, denormalize

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.embed_dim=32", "model.depth=2", "model.num_heads=2", "model.decoder_embed_dim=16",
        "model.decoder_depth=1", "model.decoder_num_heads=2", "trainer.enable_progress_bar=false",
        "trainer.accelerator=cpu", "run.recon_images=0", "trainer.log_every_n_steps=1", "data.limit=96",
        "data.val_fraction=0.25", "data.batch_size=24", "trainer.max_epochs=2", "trainer.compile=false"]
SMALL = dict(embed_dim=32, depth=2, num_heads=2)
LIMITS = dict(train_limit=300, test_limit=40)


def has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@pytest.fixture(scope="module")
def mae_run(tmp_path_factory):
    """A real (tiny) MAE run: config.yaml, logs/metrics.csv with train and val losses, model/, and its
    quality report (`mimkit report`'s library call on a few Fashion-MNIST images)."""
    from mimkit.eval.report import build_report
    from mimkit.train.config import load_config
    from mimkit.train.run import run_pretrain

    torch.manual_seed(0)
    run = run_pretrain(load_config(ROOT / "configs" / "mae_vit_tiny_patch4_28.yaml",
                                   [*TINY, f"run.dir={tmp_path_factory.mktemp('runs') / 'mae'}"]))
    from mimkit.eval.protocols import Settings

    build_report([str(run)], "fashion_mnist", run / "report", limit=300, test_limit=100, draws=1, neighbours=2,
                 settings=Settings(probe_epochs=2, max_probe_epochs=2, blrs=(0.1,), cs=(1.0,)), progress=False)
    return run


def save_tiny(tmp_path, recipe, **kw):
    torch.manual_seed(0)
    return mimkit.save(mimkit.create(recipe, **kw), tmp_path / recipe)


def write_image(path, size, mode):
    arr = (np.random.default_rng(0).uniform(0, 1, (size[1], size[0], 4)) * 255).astype(np.uint8)
    if mode == "I;16":
        Image.fromarray(arr[..., 0].astype(np.uint16) * 200).save(path)  # a uint16 array: mode I;16
    else:
        Image.fromarray(arr, "RGBA").convert(mode).save(path)
    return path


# ---- the explorer's functions (no server) ---------------------------------------------------------
def test_mask_and_predict_equals_model_reconstruct(mae_run):
    ex = Explorer(str(mae_run), **LIMITS)
    x, caption = ex.dataset_image(3)
    assert x.shape == (1, 1, 28, 28) and caption.startswith("test image 3 of 40")
    assert ex.maskings() == ["random", "simmim", "block", "center", "inverse_block", "patches"]
    assert ex.default_masking() == "random" and ex.default_ratio() == 0.75
    # the same seed, the same mask; another seed, another mask
    assert torch.equal(ex.mask("random", 0.75, 7), ex.mask("random", 0.75, 7))
    assert not torch.equal(ex.mask("random", 0.75, 7), ex.mask("random", 0.75, 8))
    r = ex.mask_and_predict(x, "random", 0.75, seed=7)
    mask = ex.mask("random", 0.75, 7)
    assert r["info"]["mask"] == mask[0].int().tolist() and r["info"]["hidden"] == int(0.75 * 49) + 1
    s = ex.scale
    assert s == 8 and all(p.shape == (224, 224, 3) and p.dtype == np.uint8 for p in r["panels"])
    with torch.no_grad():
        rec = ex.model.reconstruct(x, mask=mask)
    want = to_uint8(denormalize(rec, ex.mean, ex.std)[0])
    assert np.array_equal(r["panels"][2][::s, ::s], np.repeat(want, 3, axis=-1))
    assert np.array_equal(r["panels"][0], enlarge(denormalize(x, ex.mean, ex.std)[0], s))
    # prediction + visible: the original where visible, the prediction where hidden
    hidden_px = mask.view(7, 7).repeat_interleave(4, 0).repeat_interleave(4, 1).numpy()
    assert np.array_equal(r["panels"][3][::s, ::s][~hidden_px], r["panels"][0][::s, ::s][~hidden_px])
    assert np.array_equal(r["panels"][3][::s, ::s][hidden_px], r["panels"][2][::s, ::s][hidden_px])
    # chosen patches (a click adds one), every strategy the grid allows
    r = ex.mask_and_predict(x, "patches", 0.5, patches="0, 8 48")
    assert [i for i, v in enumerate(r["info"]["mask"]) if v] == [0, 8, 48]
    assert ex.patch_at(8 * 4 * 1 + 3, 8 * 4 * 2) == 2 * 7 + 1
    for strategy in ex.maskings()[:-1]:
        assert 0 < ex.mask_and_predict(x, strategy, 0.5, seed=1)["info"]["hidden"] < 49


def test_attention_neighbours_and_the_run(mae_run):
    from mimkit.eval.features import extract_features

    ex = Explorer(str(mae_run), **LIMITS)
    x, _ = ex.dataset_image(5)
    a = ex.attention(x, block=0, head="2")
    assert torch.allclose(torch.tensor(a["map"]), attention_maps(ex.model, x, 0)[0, 1], atol=1e-6)
    assert a["picture"].shape == (224, 224, 3) and "block 1 of 2, head 2" in a["note"]
    assert torch.allclose(torch.tensor(ex.attention(x, -1)["map"]), attention_maps(ex.model, x)[0].mean(0), atol=1e-6)
    # neighbours: the k-NN protocol's cosine neighbours of the same features, and of raw pixels
    nb = ex.neighbours(x, k=5, progress=False)
    ds, _ = ex.split("train")
    feats, _ = extract_features(ex.model, ds, "cls", progress=False)
    q = ex.model.encode(x)[:, 0]
    want = (F.normalize(q, dim=1) @ F.normalize(feats, dim=1).T).topk(5).indices[0].tolist()
    assert nb["info"]["encoder"]["indices"] == want and len(nb["encoder"]) == 5
    raw = torch.stack([ds[i][0] for i in range(len(ds))]).flatten(1)
    want = (F.normalize(x.flatten(1), dim=1) @ F.normalize(raw, dim=1).T).topk(5).indices[0].tolist()
    assert nb["info"]["pixels"]["indices"] == want
    assert ex.train_features() is ex.train_features()  # computed once, kept
    # the run: its config, its curves (train and val losses), its report
    run = ex.run_summary()
    assert run["config"] == (mae_run / "config.yaml").read_text()
    assert run["curves"].ndim == 3 and run["report"].startswith("#") and run["report_png"].endswith("report.png")
    assert {"train/loss", "val/loss"} <= {k for k in __import__("mimkit.train.callbacks", fromlist=["x"]).read_metrics(
        mae_run / "logs" / "metrics.csv")}


def test_uploads_of_any_size_and_mode(mae_run, tmp_path):
    ex = Explorer(str(mae_run / "model"), **LIMITS)  # the run's model/ directory: still the run
    assert ex.run_dir == mae_run
    for size, mode in (((50, 37), "RGBA"), ((28, 28), "L"), ((64, 64), "I;16"), ((20, 90), "P")):
        x, note = ex.file_image(write_image(tmp_path / f"im_{mode[0]}.png", size, mode))
        assert x.shape == (1, 1, 28, 28) and torch.isfinite(x).all()
        assert (f"from {size[0]}x{size[1]} to 28x28" in note) == (size != (28, 28))
        assert ("converted from" in note) == (mode != "L")
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(ValueError, match="cannot read the upload notes.png as an image"):
        ex.file_image(bad)
    with pytest.raises(ValueError, match="no patch chosen"):
        ex.mask("patches", 0.5, patches="")
    with pytest.raises(ValueError, match="patch 49 is outside the grid"):
        ex.mask("patches", 0.5, patches="3 49")


@pytest.mark.parametrize("recipe,kw", [
    ("beit_vit_tiny_patch4_28", dict(**SMALL, vocab_size=16)),
    ("maskfeat_vit_tiny_patch4_28", SMALL),
    ("data2vec2_vit_tiny_patch4_28", dict(**SMALL, decoder_dim=32, decoder_layers=1, top_k_layers=2, num_masks=2)),
    ("ijepa_vit_tiny_patch4_28", dict(**SMALL, predictor_embed_dim=16, predictor_depth=1, predictor_num_heads=2)),
    ("simmim_swin_tiny_window4_32", {}),
    ("ibot_vit_tiny_patch4_28", dict(**SMALL, out_dim=64, hidden_dim=32, bottleneck_dim=16)),
])
def test_what_each_method_predicts(recipe, kw, tmp_path):
    ex = Explorer(str(save_tiny(tmp_path, recipe, **kw)), **LIMITS)
    x, _ = ex.dataset_image(0)
    r = ex.mask_and_predict(x, "block", 0.4, seed=3)
    hidden = torch.tensor(r["info"]["mask"]).bool()
    assert len(r["panels"]) == 4 and hidden.any() and torch.equal(hidden, ex.mask("block", 0.4, 3)[0])
    if ex.kind == "tokens":  # BEiT: the predicted id of every hidden patch, argmax of its logits
        want = ex.model.token_logits(x, mask=hidden[None]).argmax(-1)[0]
        assert [v for v in r["info"]["pred_ids"] if v is not None] == want[hidden].tolist()
        assert "predicts visual-token ids" in r["note"]
    elif ex.kind == "features":  # an error per hidden patch, none at visible ones
        err = r["info"]["errors"]
        assert all((e is None) == (not h) for e, h in zip(err, hidden.tolist()))
        if ex.method in ("maskfeat", "ijepa"):  # their loss is the mean of the per-patch errors
            assert r["info"]["mean_error"] == pytest.approx(r["info"]["loss"], rel=1e-4)
        assert "not pixels" in r["note"]
        with pytest.raises(ValueError, match="not pixels: it has no pixel reconstruction"):
            ex.mask_and_predict(x, "block", 0.4, view="pixels")
    else:  # Swin SimMIM reconstructs pixels but has no global attention
        assert ex.kind == "pixels" and ex.size == 32
        with pytest.raises(ValueError, match="Swin attends within shifted windows"):
            ex.attention(x)
    if ex.method in ("beit", "maskfeat", "ijepa"):
        a = ex.attention(x, -1, "mean")
        assert np.isfinite(np.array(a["map"])).all() and a["picture"].shape[:2] == (ex.size * ex.scale,) * 2
        assert ("no cls token" in a["note"]) == (ex.method == "ijepa")


def test_ibot_shows_the_cross_entropy_to_the_teacher_per_hidden_patch(tmp_path, perturb):
    """iBOT: the masked input, and at each hidden patch the patch term of its loss -- the teacher's softmax on the
    unmasked image, centred and sharpened at the end-of-run patch temperature, against the student's log-softmax
    on the masked image (transcribed here); none at the visible patches."""
    torch.manual_seed(0)
    model = mimkit.create("ibot_vit_tiny_patch4_28", **SMALL, out_dim=64, hidden_dim=32, bottleneck_dim=16,
                          warmup_teacher_patch_temp=0.04, teacher_patch_temp=0.07)
    perturb(model.teacher)  # a teacher apart from the student, and a centre that matters
    model.criterion.center2.normal_()
    ex = Explorer(str(mimkit.save(model, tmp_path / "ibot")), **LIMITS)
    x, _ = ex.dataset_image(2)
    r = ex.mask_and_predict(x, "random", 0.5, seed=1)
    hidden = ex.mask("random", 0.5, 1)[0]
    m = ex.model
    with torch.no_grad():
        t = m.teacher_head.encoder
        t_logits = t.patch_logits(t.project(m.teacher(x).last_hidden_state[0, 1:]))
        s_logits = m.head.patch_logits(m.head.project(m.encoder(x, mask=hidden[None]).last_hidden_state[0, 1:]))
    want = -(F.softmax((t_logits - m.criterion.center2[0, 0]) / 0.07, -1) * F.log_softmax(s_logits / 0.1, -1)).sum(-1)
    err = r["info"]["errors"]
    assert [e is None for e in err] == (~hidden).tolist()
    assert torch.allclose(torch.tensor([e for e in err if e is not None]), want[hidden], rtol=1e-4)
    masked = r["panels"][1][::ex.scale, ::ex.scale, 0].reshape(7, 4, 7, 4)  # hidden patches grey
    assert (masked.transpose(0, 2, 1, 3).reshape(49, 16)[hidden.numpy()] == 128).all()
    assert "prototype distributions" in r["titles"][2] and "not pixels" in r["note"]


def test_a_transformers_directory(tmp_path):
    """`hf:DIR` goes through the same resolver as every command (from_hf, safe reads): a model, no run."""
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    cfg = ViTMAEConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=28, patch_size=4, num_channels=1, decoder_hidden_size=16,
                       decoder_num_hidden_layers=1, decoder_num_attention_heads=2, decoder_intermediate_size=32,
                       layer_norm_eps=1e-6, mask_ratio=0.5)
    ViTMAEForPreTraining(cfg).save_pretrained(tmp_path / "hf")
    ex = Explorer(f"hf:{tmp_path / 'hf'}", **LIMITS)
    assert ex.method == "mae" and ex.run_dir is None and "not a run directory" in ex.run_summary()["note"]
    x, _ = ex.dataset_image(1)
    r = ex.mask_and_predict(x, "random", 0.5, seed=2)
    with torch.no_grad():
        rec = ex.model.reconstruct(x, mask=ex.mask("random", 0.5, 2))
    assert np.array_equal(r["panels"][2][::ex.scale, ::ex.scale], np.repeat(to_uint8(denormalize(
        rec, ex.mean, ex.std)[0]), 3, axis=-1))


def test_not_a_mimkit_model(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="other.ckpt is not a mimkit model"):
        Explorer(str(tmp_path / "other.ckpt"))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    (tmp_path / "d" / "model.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(ValueError, match="is not a mimkit model"):
        Explorer(str(tmp_path / "d"))


def test_cli_names_the_extra_when_gradio_is_missing(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError
    assert main(["explore", "--checkpoint", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'mimkit[app]'" in err[0], err


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.1.1"])
def test_a_loopback_host_says_nothing(host, monkeypatch, capsys, tmp_path):
    from mimkit.commands.explore import host_warning

    assert host_warning(host) is None
    monkeypatch.setitem(sys.modules, "gradio", None)  # stops the command before any model or server
    assert main(["explore", "--checkpoint", str(tmp_path), "--host", host]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "warning" not in err[0] and "pip install 'mimkit[app]'" in err[0], err


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "my-machine.lan"])
def test_another_host_warns_that_the_page_has_no_authentication(host, monkeypatch, capsys, tmp_path):
    from mimkit.commands.explore import host_warning

    want = (f"mimkit explore: warning: --host {host} exposes the page to the network, and it has no "
            "authentication; anyone who can reach this port can use it")
    assert host_warning(host) == want
    monkeypatch.setitem(sys.modules, "gradio", None)  # stops the command before any model or server
    assert main(["explore", "--checkpoint", str(tmp_path), "--host", host]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == want and len(err) == 2 and "pip install 'mimkit[app]'" in err[1], err  # first, once


def test_the_page_shows_paths_under_the_current_directory_relative_to_it(tmp_path, monkeypatch):
    from mimkit.app.explorer import shown_path

    here = tmp_path / "project"
    assert shown_path(here / "runs" / "demo", cwd=here) == "runs/demo"
    assert shown_path(f"hf:{here / 'hf' / 'vitmae'}", cwd=here) == "hf:hf/vitmae"
    assert shown_path("runs/demo", cwd=here) == "runs/demo" and shown_path("recipe:mae_vit_tiny_patch4_28") == (
        "recipe:mae_vit_tiny_patch4_28")
    elsewhere = tmp_path / "elsewhere" / "model"
    assert shown_path(elsewhere, cwd=here) == str(elsewhere)  # not under it: as given
    # the page itself: a model given by its absolute path, from the directory above it
    model_dir = save_tiny(tmp_path, "mae_vit_tiny_patch4_28", **SMALL)
    monkeypatch.chdir(tmp_path)
    ex = Explorer(str(model_dir.resolve()), **LIMITS)
    about, note = ex.describe(), ex.run_summary()["note"]
    assert "from `mae_vit_tiny_patch4_28`:" in about and str(tmp_path) not in about, about
    assert note.startswith("`mae_vit_tiny_patch4_28` is a model") and str(tmp_path) not in note, note


@pytest.mark.skipif(not has("gradio"), reason="gradio is not installed (pip install 'mimkit[app]')")
def test_cli_bad_checkpoint_is_one_line(tmp_path, capsys):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.ckpt")
    assert main(["explore", "--checkpoint", str(tmp_path / "other.ckpt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a mimkit model" in err[0], err


# ---- the page, served -----------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(mae_run, tmp_path_factory):
    """`mimkit explore` in its own process on a free port; yields (url, seconds to start)."""
    if not (has("gradio") and has("gradio_client")):
        pytest.skip("gradio / gradio_client are not installed (pip install 'mimkit[test]')")
    port = free_port()
    log = tmp_path_factory.mktemp("explore") / "server.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mimkit.cli", "explore", "--checkpoint", str(mae_run),
                                 "--train-limit", "300", "--test-limit", "40", "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}/"
    try:
        while True:
            assert proc.poll() is None, f"mimkit explore exited:\n{log.read_text()[-3000:]}"
            assert time.perf_counter() - t0 < 120, f"the page did not start in 120 s:\n{log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        started = time.perf_counter() - t0
        print(f"\nmimkit explore: page up in {started:.1f} s", flush=True)
        yield url, started, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.slow
def test_page_through_gradio_client(server, mae_run, tmp_path):
    from gradio_client import Client, handle_file

    url, started, log = server
    client = Client(url, verbose=False)
    ex = Explorer(str(mae_run), **LIMITS)  # the same model in this process: what the page must answer
    x, caption = ex.dataset_image(4)
    t0 = time.perf_counter()
    out = client.predict("dataset", 4, None, "random", 0.75, 11, "", "auto", api_name="/mask_and_predict")
    took = time.perf_counter() - t0
    print(f"mimkit explore: one 'mask and predict' answered in {took:.2f} s", flush=True)
    note, pics, mp_note, info = out[0], out[1:5], out[5], out[6]
    assert note == caption and "error" not in mp_note, mp_note
    mask = ex.mask("random", 0.75, 11)
    assert info["mask"] == mask[0].int().tolist()
    with torch.no_grad():
        rec = to_uint8(denormalize(ex.model.reconstruct(x, mask=mask), ex.mean, ex.std)[0])[..., 0]
    got = [np.asarray(Image.open(p).convert("RGB")) for p in pics]
    s = ex.scale
    assert all(g.shape == (224, 224, 3) for g in got)
    # the page's prediction is model.reconstruct on the same image and mask (threads may move a rounding)
    assert np.abs(got[2][::s, ::s, 0].astype(int) - rec).max() <= 1
    assert np.array_equal(got[0], ex.show(x))
    # attention and neighbours: the same numbers as the library's code here
    out = client.predict("dataset", 4, None, 2, "1", api_name="/attention")
    assert torch.allclose(torch.tensor(out[3]["map"]), attention_maps(ex.model, x, 1)[0, 0], atol=1e-5)
    out = client.predict("dataset", 4, None, 6, api_name="/neighbours")
    assert out[3] and len(out[2]) == 6 and out[4]["encoder"]["indices"] == ex.neighbours(x, 6, False)["info"][
        "encoder"]["indices"]
    # an upload of another size and mode, then bad input: one line on the page and one in the log
    img = write_image(tmp_path / "colour.png", (60, 45), "RGB")
    out = client.predict("upload", 0, handle_file(str(img)), "center", 0.3, 0, "", "auto", api_name="/mask_and_predict")
    assert "resized" in out[0] and "converted from RGB to grayscale" in out[0] and out[6]["hidden"] > 0
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    out = client.predict("upload", 0, handle_file(str(bad)), "random", 0.75, 0, "", "auto", api_name="/mask_and_predict")
    assert out[5].startswith("**error:** cannot read the upload broken.png") and "\n" not in out[5]
    assert all(p is None for p in out[1:5])
    out = client.predict("dataset", 999, None, "random", 0.75, 0, "", "auto", api_name="/mask_and_predict")
    assert out[5] == "**error:** image index must be between 0 and 39 (the test split holds 40 images), got 999"
    time.sleep(0.5)
    lines = log.read_text().splitlines()
    assert any("cannot read the upload broken.png" in line for line in lines)
    assert not any("Traceback" in line for line in lines), log.read_text()[-3000:]


def browser_paths():
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    driver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    return chromium, driver


@pytest.mark.slow
def test_page_in_a_real_browser(server, tmp_path):
    chromium, driver_path = browser_paths()
    if not (os.access(chromium, os.X_OK) and os.access(driver_path, os.X_OK)):
        pytest.skip("no chromium + chromium-driver here (scripts/setup.sh installs them with apt-get when it can)")
    if not has("selenium"):
        pytest.skip("selenium is not installed (pip install 'mimkit[test]')")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    url, _, _ = server
    opts = Options()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,1400",
              "--hide-scrollbars"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    try:
        driver.get(url)
        wait = WebDriverWait(driver, 90)
        button = wait.until(EC.element_to_be_clickable((By.ID, "mask-and-predict")))
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#panel-0 img")))  # the page shows the image
        button.click()
        pred = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#panel-2 img")))
        wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", pred))
        wait.until(EC.text_to_be_present_in_element((By.ID, "mp-note"), "loss"))
        assert "error" not in driver.find_element(By.ID, "mp-note").text
        shot = Path(os.environ.get("MIMKIT_EXPLORE_SCREENSHOT") or tmp_path / "explore.png")
        shot.parent.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(shot))
    finally:
        driver.quit()
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[0] > 500 and img.shape[1] > 800
    colours = len(np.unique(img.reshape(-1, 3), axis=0))
    assert img.std() > 20 and colours > 64, f"the screenshot looks blank: std {img.std():.1f}, {colours} colours"
