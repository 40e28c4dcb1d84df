"""``mimkit explore --checkpoint RUN|MODEL_DIR|hf:DIR``: a local web page that shows what a model learned.

Tabs: **Mask and predict** (a dataset image or an upload; any masking the model's grid allows, or the
patches clicked; original | masked | prediction | prediction + visible for pixel methods, the predicted
token map for BEiT, the predicted-feature error map for MaskFeat, data2vec 2.0 and I-JEPA), **Attention**
(one block and head), **Neighbours** (nearest training images under the encoder beside raw pixels) and
**The run** (config, loss and validation curves, quality report). Needs gradio: ``pip install 'mimkit[app]'``.
The checkpoint is read with the safe loader only (no ``--trust-checkpoint``). Binds to 127.0.0.1 unless
``--host`` says otherwise; the page has no authentication, so any other address is warned about on stderr.
"""
from __future__ import annotations

import ipaddress
import sys
import time


def register(sub) -> None:
    from mimkit.eval.data import CHECKPOINT_HELP, DATA_HELP

    p = sub.add_parser("explore", help="a local web page: mask and predict, attention, neighbours, the run (gradio)",
                       description="Start a local web page that shows what a mimkit model learned "
                                   "(needs the app extra: pip install 'mimkit[app]').")
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP + "; read with the safe loader only")
    p.add_argument("--data", default="fashion_mnist", help=DATA_HELP + " (images to pick: test split; neighbours: "
                                                                       "train split)")
    p.add_argument("--data-root", help="folder holding the Fashion-MNIST idx files (default: auto-detected)")
    p.add_argument("--train-limit", type=int, help="search neighbours among the first N training images only")
    p.add_argument("--test-limit", type=int, help="offer the first N test images only")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only; the "
                                                        "page has no authentication, so another address warns)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    p.set_defaults(func=run)


def is_loopback(host: str) -> bool:
    """Whether ``host`` binds to this machine only: ``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    host = host.strip().strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name (or "", every interface): it may reach the network


def host_warning(host: str) -> str | None:
    """The one line ``mimkit explore`` prints on stderr when ``--host`` is not loopback, else None."""
    if is_loopback(host):
        return None
    shown = host or "''"
    return (f"mimkit explore: warning: --host {shown} exposes the page to the network, and it has no "
            "authentication; anyone who can reach this port can use it")


def run(args) -> int:
    import logging

    t0 = time.perf_counter()
    warning = host_warning(args.host)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    from mimkit.app.page import require_gradio, serve

    require_gradio()  # before loading anything: one line naming the extra when it is missing
    from mimkit.app.explorer import Explorer

    log = logging.getLogger("mimkit.explore")  # one line per answer or bad input, on stderr
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("mimkit explore: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    for name, v in (("--train-limit", args.train_limit), ("--test-limit", args.test_limit), ("--port", args.port)):
        if v is not None and v < (0 if name == "--port" else 1):
            raise ValueError(f"{name} must be {'>= 0' if name == '--port' else '>= 1'}, got {v}")
    ex = Explorer(args.checkpoint, args.data, args.data_root, args.train_limit, args.test_limit)
    serve(ex, args.host, args.port, started=t0)
    return 0
