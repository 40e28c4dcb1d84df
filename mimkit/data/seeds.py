"""Seeds: :func:`mix_seed` combines integers (seed, epoch, rank, step...) into one well-mixed seed, the
same on every process; the data order, the held-out rows and the training loop draw from it."""

from __future__ import annotations

_MASK64 = (1 << 64) - 1


def mix_seed(*parts: int) -> int:
    """Combine integers into one well-mixed 63-bit seed (splitmix64 finaliser per part)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h & ((1 << 63) - 1)
