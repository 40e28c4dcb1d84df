"""Model-only A/B timing: one forward + backward of mimkit and of its `transformers` peer (built
from the same weights with `from_hf`), interleaved step by step so both see the same machine load;
prints median milliseconds per step and the speed-up. No optimiser, no Lightning: use it beside
`benchmarks/throughput.py` to tell the model's cost from the training step's.

    python benchmarks/forward_backward_ab.py --method beit --threads 2
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> int:
    import torch
    from throughput import PeerAdapter, hf_model, make_batches

    from mimkit.interop.hf import from_hf

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", default="beit", choices=("mae", "simmim", "beit"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--no-malloc-tuning", action="store_true", help="leave glibc malloc untuned (mimkit pretrain tunes it)")
    args = ap.parse_args()
    if not args.no_malloc_tuning:
        from mimkit.train.allocator import tune_cpu_allocator

        tune_cpu_allocator()  # as `mimkit pretrain` does on CPU; the same for both models
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    hf = hf_model(args.method, "tiny")
    models = {"mimkit": from_hf(hf), "transformers": PeerAdapter.wrap(hf, args.method)}
    batch = make_batches(args.method, (32, 4, 3), args.batch, "cpu", 1)[0]
    times = {k: [] for k in models}
    for m in models.values():
        m.train()
        for _ in range(2):
            m(**batch).loss.backward()
    for i in range(args.steps):
        order = list(models.items()) if i % 2 else list(models.items())[::-1]
        for name, m in order:
            t = time.perf_counter()
            m(**batch).loss.backward()
            times[name].append(time.perf_counter() - t)
    a, b = statistics.median(times["mimkit"]), statistics.median(times["transformers"])
    print(f"{args.method}: forward+backward, batch {args.batch}, {args.threads} thread(s), median of {args.steps}: "
          f"mimkit {a * 1000:.0f} ms, transformers {b * 1000:.0f} ms, speed-up {b / a:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
