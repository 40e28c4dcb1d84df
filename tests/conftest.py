import os

import pytest
import torch

# Under pytest-xdist each worker gets one thread: two workers x two threads on two cores makes
# OpenMP spin-waits collide and tiny models run up to 100x slower.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture()
def one_thread():
    """Tiny models train several times faster on one thread on this shared 2-core machine (modules
    that train opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@torch.no_grad()
def perturb_weights(model, scale: float = 0.05, trainable_only: bool = False, skip: tuple[str, ...] = ()):
    """Random, non-default values in every tensor (biases, norms, tokens, tables, layer scale), so a
    parity test cannot pass on weights that merely kept their initial values. ``trainable_only`` keeps
    fixed sin-cos tables (requires_grad=False) as they are; ``skip`` leaves parameters whose name contains
    one of these strings alone. Returns the model."""
    for name, p in model.named_parameters():
        if (trainable_only and not p.requires_grad) or any(s in name for s in skip):
            continue
        p.add_(torch.randn_like(p) * scale)
    return model


def sigkill_at_marker(proc, marker, step, timeout: float = 240) -> None:
    """Wait until the child run ``proc`` writes ``marker`` (it finished optimiser step ``step`` and
    blocks there), then SIGKILL it: a crash at a known point, not a polite stop."""
    import signal
    import time

    deadline = time.time() + timeout
    while not marker.exists():
        assert proc.poll() is None, f"the run exited before step {step}:\n{proc.stdout.read()[-3000:]}"
        assert time.time() < deadline, "the run never reached the kill point"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


@pytest.fixture()
def perturb():
    """:func:`perturb_weights` as a fixture."""
    return perturb_weights
