"""benchmarks/device_suite.sh (the one call for a lent GPU) runs end to end: its --cpu-smoke mode is
the same code on tiny shapes, so a broken suite is found here, not on the day a device is lent."""
import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_device_suite_cpu_smoke(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "device_suite.sh"), "--cpu-smoke"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    table = json.loads((tmp_path / "throughput.json").read_text())["median"]
    methods = {row["method"] for row in table if row["mimkit_images_per_s"]}
    assert methods == {"mae", "simmim", "beit", "maskfeat", "data2vec2", "ijepa", "simmim_swin", "ibot"}
    assert all(row["transformers_images_per_s"] for row in table if row["method"] in ("mae", "simmim", "beit"))
    knn = json.loads((tmp_path / "knn.json").read_text())
    assert knn["test_images"] == 512 and set(knn["results"]) == {"cls", "mean"}
    assert all(0.1 < r["acc"] <= 1 for r in knn["results"].values())  # better than chance on 10 classes
    assert "| mae | eager |" in r.stdout and "pretraining:" in r.stdout
    assert (tmp_path / "fmnist_run" / "model" / "model.safetensors").exists()


def test_throughput_worker_subprocess_round_trip(tmp_path):
    """The device suite's smoke times every method in one process (--in-process); the device itself runs one
    subprocess per measurement, whose spec goes out as JSON and whose result comes back as a RESULT line.
    That round trip is checked here once, on the cheapest row."""
    out = tmp_path / "t.json"
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    r = subprocess.run([str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv").exists() else "python",
                        str(ROOT / "benchmarks" / "throughput.py"), "--device", "cpu", "--size", "tiny", "--batch", "8",
                        "--steps", "1", "--warmup", "1", "--repeats", "1", "--modes", "eager", "--methods", "mae",
                        "--impls", "mimkit", "--threads", "1", "--out", str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rows = json.loads(out.read_text())["median"]
    mae = next(row for row in rows if row["method"] == "mae")
    assert mae["mimkit_images_per_s"] > 0 and "failed" not in r.stdout


def test_throughput_keeps_finished_runs_when_cut(tmp_path, monkeypatch):
    """On the device each stage is capped by `timeout`, which kills throughput.py mid-table; the runs it
    finished must already be in its JSON (written after every run, marked incomplete), not lost."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("throughput_bench", ROOT / "benchmarks" / "throughput.py")
    tp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tp)
    calls = []

    def fake_worker(s):
        calls.append(s["method"])
        if len(calls) == 2:
            raise KeyboardInterrupt  # the cap's signal, mid-way through the second run
        return {**s, "images_per_s": 123.0}

    monkeypatch.setattr(tp, "worker", fake_worker)
    out = tmp_path / "t.json"
    monkeypatch.setattr(sys, "argv", ["throughput.py", "--device", "cpu", "--size", "tiny", "--modes", "eager",
                                      "--methods", "mae,simmim", "--impls", "mimkit", "--repeats", "1",
                                      "--in-process", "--out", str(out)])
    with pytest.raises(KeyboardInterrupt):
        tp.main()
    got = json.loads(out.read_text())
    assert got["complete"] is False and [r["method"] for r in got["results"]] == ["mae"]
    assert {row["method"]: row["mimkit_images_per_s"] for row in got["median"]} == {"mae": 123.0, "simmim": None}
