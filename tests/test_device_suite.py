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
