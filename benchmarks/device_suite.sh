#!/usr/bin/env bash
# One call that measures mimkit on a lent accelerator (an H200), in under 10 minutes (one device command):
#   1. the ViT-B/16 training throughput table, bf16 autocast, fused AdamW, batch 256 at 224 px, eager,
#      every method, beside transformers where it has the method's class (benchmarks/throughput.py;
#      mimkit-only rows for MaskFeat, data2vec 2.0, I-JEPA, SimMIM Swin, iBOT) -> throughput.json;
#   2. a short (MINUTES, default 2) Fashion-MNIST pretraining of the best CPU recipe (MAE tiny) and its
#      20-NN on the full 10k test set (raw pixels' 20-NN is in results/fmnist_quality.json).
# STAGES picks them (default "eager,pretrain"); "compiled" adds the three methods with a transformers
# peer under torch.compile (throughput_compiled.json), a second call's worth: measured on an H200
# (results/device_h200/), each eager run takes 21-54 s (a fresh process, the model built, 28 steps), all
# eleven about 350 s; each compiled run about 70 s. Every stage is capped (*_TIMEOUT) and throughput.py
# writes its JSON after every run, so a cut stage keeps what it measured.
# On the device no package can be installed: without .venv it runs the machine's python3 when that has
# torch, timm and lightning, with the repo on PYTHONPATH; MIMKIT_DATA names carried Fashion-MNIST files.
# Tables go to stdout and, as JSON and logs, to $OUT (the device tool's folder) or ./device_results.
#
#   bash benchmarks/device_suite.sh               # on the device (make setup first, or let it run setup)
#   bash benchmarks/device_suite.sh --cpu-smoke   # the same code on tiny shapes on a CPU (seconds, for CI)
set -euo pipefail
cd "$(dirname "$0")/.."
SMOKE=0
[ "${1:-}" = "--cpu-smoke" ] && SMOKE=1
OUTDIR=${OUT:-device_results}
mkdir -p "$OUTDIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-.venv/bin/python}
if [ ! -x "$PY" ] && ! command -v "$PY" >/dev/null; then
  if python3 -c 'import torch, timm, lightning' 2>/dev/null; then PY=python3
  else bash scripts/setup.sh >/dev/null && PY=.venv/bin/python; fi
fi
bash scripts/get_data.sh >/dev/null 2>&1 || true
start=$(date +%s)

if [ "$SMOKE" = 1 ]; then
  THROUGHPUT=(--device cpu --size tiny --batch 8 --steps 2 --warmup 1 --repeats 1 --modes eager --in-process)
  PRETRAIN=(trainer.accelerator=cpu trainer.max_steps=6 data.limit=2048 data.batch_size=64 trainer.log_every_n_steps=2)
  KNN=(--limit 2048 --test-limit 512 --device cpu)
  MINUTES=0.2
  COMPILED=()
  STAGES=${STAGES:-eager,pretrain}
else
  THROUGHPUT=(--device cuda --size base --batch 256 --steps 20 --warmup 8 --repeats 1 --modes eager)
  COMPILED=(--device cuda --size base --batch 256 --steps 20 --warmup 8 --repeats 1 --modes compiled)
  PRETRAIN=(data.batch_size=1024 data.num_workers=0 trainer.max_epochs=1000)
  KNN=()
  MINUTES=${MINUTES:-2}
  STAGES=${STAGES:-eager,pretrain}
fi
has() { [[ ",$STAGES," == *",$1,"* ]]; }

if has eager; then
  echo "== training throughput, eager (benchmarks/throughput.py)"
  timeout ${THROUGHPUT_TIMEOUT:-380} "$PY" benchmarks/throughput.py "${THROUGHPUT[@]}" \
    --methods mae,simmim,beit,maskfeat,data2vec2,ijepa,simmim_swin,ibot --out "$OUTDIR/throughput.json" \
    2>&1 | tee "$OUTDIR/throughput.log" | grep -E '^\||^Training|failed' || echo "throughput: see $OUTDIR/throughput.log"
fi
if has compiled; then
  echo "== training throughput, compiled (benchmarks/throughput.py)"
  timeout ${COMPILED_TIMEOUT:-450} "$PY" benchmarks/throughput.py "${COMPILED[@]}" \
    --methods mae,simmim,beit --out "$OUTDIR/throughput_compiled.json" \
    2>&1 | tee "$OUTDIR/throughput_compiled.log" | grep -E '^\||^Training|failed' \
    || echo "compiled throughput: see $OUTDIR/throughput_compiled.log"
fi
has pretrain || { echo "device suite finished in $(( $(date +%s) - start )) s; results in $OUTDIR"; exit 0; }
echo "== ${MINUTES}-minute Fashion-MNIST pretraining (mae_vit_tiny_patch4_28) and its 20-NN"
RUN="${RUN_DIR:-$OUTDIR/fmnist_run}"  # RUN_DIR: elsewhere, to bring back only the tables
rm -rf "$RUN"
secs=$("$PY" -c "print(int(float('$MINUTES') * 60))")
timeout $((secs + ${PRETRAIN_EXTRA:-70})) "$PY" -m mimkit.cli pretrain --config configs/mae_vit_tiny_patch4_28.yaml run.dir="$RUN" \
  run.recon_images=0 trainer.enable_progress_bar=false trainer.log_every_n_steps=20 \
  "trainer.max_time={seconds: $secs}" "${PRETRAIN[@]}" > "$OUTDIR/pretrain.log" 2>&1 || { tail -5 "$OUTDIR/pretrain.log"; exit 1; }
"$PY" - "$RUN" <<'EOF'
import csv, sys
from pathlib import Path
f = Path(sys.argv[1]) / "logs" / "metrics.csv"
rows = list(csv.DictReader(f.open())) if f.exists() else []
ips = [float(r["train/images_per_s"]) for r in rows if r.get("train/images_per_s")]
steps = [int(r["step"]) for r in rows if r.get("step")]
print(f"pretraining: {ips[-1]:.0f} images/s" if ips else "pretraining: no images/s logged",
      f"up to step {max(steps) + 1}" if steps else "")
EOF
timeout ${KNN_TIMEOUT:-90} "$PY" -m mimkit.cli eval knn --checkpoint "$RUN" --data fashion_mnist --pool both --no-progress \
  --out "$OUTDIR/knn.json" "${KNN[@]}" 2>&1 | tail -6
echo "device suite finished in $(( $(date +%s) - start )) s; results in $OUTDIR"
