"""The CPU speed levers one by one, in one process (run alone): the measurements behind docs/speed.md's
lever table that are not a whole training loop.

    python benchmarks/cpu_levers.py            # ~3 min on 2 cores

* attention forward + backward: the CPU flash kernel (SDPA) vs matmul + softmax, at the tiny recipes'
  shapes and at ViT-B's;
* augmentation of 256 Fashion-MNIST images: torchvision v2 image by image vs ``BatchAugment``;
* feature extraction: encoder images/s by images per call (``extract_features``' ``CPU_CHUNK``);
* the MAE tiny model step (forward, backward, AdamW): eager, eager with attention written out,
  compiled, compiled with attention written out (``mimkit.train.speed``), interleaved, median.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def timed(fn, n: int = 10, warm: int = 3) -> float:
    for _ in range(warm):
        fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def attention_rows():
    import torch
    import torch.nn.functional as F

    print("\n| (B, H, L, d) | flash fwd+bwd ms | matmul + softmax ms |\n| --- | --- | --- |")
    for shape in ((256, 4, 13, 32), (256, 4, 50, 16), (256, 4, 65, 32), (64, 12, 197, 64)):
        q, k, v = (torch.randn(*shape, requires_grad=True) for _ in range(3))

        def flash():
            F.scaled_dot_product_attention(q, k, v).sum().backward()

        def written():
            ((q * shape[-1] ** -0.5) @ k.transpose(-2, -1)).softmax(-1).__matmul__(v).sum().backward()

        print(f"| {shape} | {timed(flash, 5) * 1e3:.1f} | {timed(written, 5) * 1e3:.1f} |", flush=True)


def augmentation_rows():
    import torch

    from mimkit.data import FMNIST_MEAN, FMNIST_STD, BatchAugment, load_fashion_mnist, pretrain_transform

    x = load_fashion_mnist("train")[0][:256].unsqueeze(1)
    tf = pretrain_transform(28, FMNIST_MEAN, FMNIST_STD, (0.35, 1.0))
    aug = BatchAugment(28, FMNIST_MEAN, FMNIST_STD, (0.35, 1.0))
    seeds = torch.arange(256)
    per_image = timed(lambda: torch.stack([tf(x[i]) for i in range(256)]), 3, 1)
    batch = timed(lambda: aug(x, seeds), 10)
    print(f"\naugmentation of 256 images: torchvision image by image {per_image * 1e3:.1f} ms, "
          f"BatchAugment {batch * 1e3:.1f} ms", flush=True)


def feature_rows():
    import torch

    import mimkit

    model = mimkit.create("mae_vit_tiny_patch4_28").eval()
    x = torch.randn(2048, 1, 28, 28)
    print("\n| images per encoder call | img/s |\n| --- | --- |")
    for chunk in (32, 64, 128, 256, 512):
        with torch.no_grad():
            dt = timed(lambda: [model.encode(x[i:i + chunk]) for i in range(0, 2048, chunk)], 2, 1)
        print(f"| {chunk} | {2048 / dt:.0f} |", flush=True)


def step_rows(steps: int = 8):
    import torch

    import mimkit
    from mimkit.train.allocator import tune_cpu_allocator
    from mimkit.train.speed import short_sequence_attention

    tune_cpu_allocator()
    arms = {}
    for name, written, compiled in (("eager", False, False), ("eager, attention written out", True, False),
                                    ("compiled", False, True), ("compiled, attention written out", True, True)):
        torch.manual_seed(0)
        model = mimkit.create("mae_vit_tiny_patch4_28", norm_pix_loss=True).train()
        short_sequence_attention(model, written)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
        arms[name] = (torch.compile(model) if compiled else model, opt)
    x = torch.randn(256, 1, 28, 28)

    def step(fwd, opt):
        fwd(x).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for fwd, opt in arms.values():
        for _ in range(3):
            step(fwd, opt)  # compiles the compiled arms
    times = {k: [] for k in arms}
    for _ in range(steps):
        for k, (fwd, opt) in arms.items():
            t = time.perf_counter()
            step(fwd, opt)
            times[k].append(time.perf_counter() - t)
    print("\n| MAE tiny model step (batch 256, fused AdamW) | img/s, median of interleaved steps |\n| --- | --- |")
    for k, v in times.items():
        print(f"| {k} | {256 / statistics.median(v):.0f} |")


def main() -> int:
    attention_rows()
    augmentation_rows()
    feature_rows()
    step_rows()
    return 0


if __name__ == "__main__":
    sys.exit(main())
