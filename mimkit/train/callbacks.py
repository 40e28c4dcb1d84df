"""Callbacks and plugins: atomic checkpoint files, reconstruction grids, loss curve, final export."""
from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..checkpoint import save_model
from ..files import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file in the same directory, then renames it."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        """Read with clear errors: a truncated or foreign file, or a weights-only checkpoint, raises a
        ValueError naming the file instead of a trace from deep inside torch or Lightning. Read safely
        (``weights_only``, see :func:`mimkit.checkpoint.read_torch_checkpoint`) whatever Lightning asks
        for: a file that needs more is refused unless ``--trust-checkpoint`` is in effect."""
        from ..files import check_checkpoint_file, check_training_checkpoint, read_torch_checkpoint

        check_checkpoint_file(path)
        return check_training_checkpoint(read_torch_checkpoint(path), path, resume=True)


class ReconstructionGrid(L.Callback):
    """Every ``every`` epochs, a PNG of original | masked | prediction | pasted for fixed images
    and a fixed mask (same images and mask every epoch, so pictures are comparable)."""

    def __init__(self, images: torch.Tensor, out_dir, mean, std, every: int = 1, seed: int = 0):
        self.images, self.out_dir, self.mean, self.std, self.every = images, Path(out_dir), mean, std, every
        self.seed = seed

    @L.pytorch.utilities.rank_zero_only
    def on_train_epoch_end(self, trainer, pl_module):
        if not hasattr(pl_module.model, "reconstruct") or (trainer.current_epoch + 1) % self.every:
            return
        from ..viz import save_reconstruction_grid

        model = pl_module.model
        x = self.images.to(pl_module.device)
        grid = model.grid(x)
        kw = {}
        if getattr(model, "accepts_noise", False):  # the same mask every epoch, so pictures compare
            g = torch.Generator().manual_seed(self.seed)
            kw["noise"] = torch.rand(x.shape[0], grid[0] * grid[1], generator=g).to(x.device)
        with torch.no_grad():
            loss = float(model(x, **kw).loss) if kw else None
        title = f"epoch {trainer.current_epoch + 1}" + (f", loss {loss:.4f}" if loss is not None else "")
        with torch.autocast(x.device.type, enabled=False):
            p = save_reconstruction_grid(model, x.float(), self.out_dir / f"epoch_{trainer.current_epoch + 1:03d}.png",
                                         self.mean, self.std, title=title, **kw)
        (self.out_dir / "latest.png").write_bytes(p.read_bytes())


def read_metrics(csv_path) -> dict[str, tuple[list[float], list[float]]]:
    """Lightning CSVLogger metrics -> {name: (steps, values)}. Parts kept from before a resume
    (``metrics.partNNN.csv`` beside it, see :func:`archive_metrics`) come first."""
    csv_path = Path(csv_path)
    series: dict[str, tuple[list[float], list[float]]] = {}
    for path in [*sorted(csv_path.parent.glob("metrics.part*.csv")), csv_path]:
        if not path.exists():
            continue
        with open(path) as f:
            for row in csv.DictReader(f):
                step = row.get("step")
                for k, v in row.items():
                    if k in ("step", "epoch") or v in ("", None) or step in ("", None):
                        continue
                    xs, ys = series.setdefault(k, ([], []))
                    xs.append(float(step))
                    ys.append(float(v))
    return series


def archive_metrics(log_dir, resume_step: int) -> Path | None:
    """Before resuming: Lightning's CSVLogger deletes an existing ``metrics.csv``; keep its rows
    logged before ``resume_step`` (the later ones are trained again) as ``metrics.partNNN.csv``."""
    from ..files import atomic_write

    log_dir = Path(log_dir)
    cur = log_dir / "metrics.csv"
    if not cur.exists():
        return None
    with open(cur, newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        rows = [r for r in reader if r.get("step") not in (None, "") and float(r["step"]) < resume_step]
    out = log_dir / f"metrics.part{len(list(log_dir.glob('metrics.part*.csv'))) + 1:03d}.csv"

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)

    atomic_write(out, write)
    cur.unlink()
    return out


class FinalArtifacts(L.Callback):
    """At the end of training: a loss-curve PNG and the model in mimkit's safetensors format."""

    def __init__(self, run_dir):
        self.run_dir = Path(run_dir)

    def on_train_end(self, trainer, pl_module):
        check = getattr(pl_module, "raise_if_non_finite", None)
        if check is not None:  # a deferred NaN check (fused optimiser) of the last step: no model then
            check()
        # every process takes part: under FSDP, gathering the full state dict is a collective
        sd = trainer.strategy.lightning_module_state_dict()
        if not trainer.is_global_zero:
            return
        sd = {k[len("model."):]: v for k, v in sd.items() if k.startswith("model.")}
        save_model(pl_module.model, self.run_dir / "model", state_dict=sd)
        self.write_curve(trainer)

    def write_curve(self, trainer):
        from ..viz import save_curve, save_panels

        for lg in trainer.loggers:
            if isinstance(lg, L.pytorch.loggers.CSVLogger):
                lg.save()
                path = Path(lg.log_dir) / "metrics.csv"
                if path.exists():
                    m = read_metrics(path)
                    curves = {k.split("/", 1)[-1]: v for k, v in m.items() if k in ("train/loss",)}
                    if "val/loss" in m:  # the held-out loss (data.val_*), one point per epoch, beside it
                        curves = {"train loss": m["train/loss"], "validation loss": m["val/loss"]} \
                            if "train/loss" in m else {"validation loss": m["val/loss"]}
                    if curves:
                        save_curve(None, curves, self.run_dir / "loss_curve.png", title="pretraining loss",
                                   markers={"validation loss": "o"})
                    extra = {k.split("/", 1)[-1]: v for k, v in m.items()
                             if k.startswith("train/") and k not in ("train/loss", "train/lr")}
                    if extra:
                        save_panels(extra, self.run_dir / "metrics_curve.png", title="logged training metrics")


class Throughput(L.Callback):
    """Logs training images/s (``train/images_per_s``) every ``every`` steps and keeps the average
    after ``warmup`` steps in ``self.images_per_s``. Synchronises the GPU only at those points."""

    def __init__(self, every: int = 20, warmup: int = 5):
        self.every, self.warmup = every, warmup
        self.images_per_s: float | None = None
        self._t0 = self._n0 = None
        self._seen = 0

    def _now(self, pl_module):
        import time

        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        x = batch["images"] if isinstance(batch, dict) and "images" in batch else \
            batch[0] if isinstance(batch, (list, tuple)) else None
        self._seen += len(x) if x is not None else len(batch.get("encoded", ())) if isinstance(batch, dict) else 0
        step = trainer.global_step
        if step == self.warmup and self._t0 is None:
            self._t0, self._n0 = self._now(pl_module), self._seen
        elif self._t0 is not None and step % self.every == 0:
            dt = self._now(pl_module) - self._t0
            self.images_per_s = (self._seen - self._n0) * trainer.world_size / dt
            pl_module.log("train/images_per_s", self.images_per_s, rank_zero_only=True)

    def on_train_end(self, trainer, pl_module):
        if self._t0 is not None:
            dt = self._now(pl_module) - self._t0
            if dt > 0 and self._seen > self._n0:
                self.images_per_s = (self._seen - self._n0) * trainer.world_size / dt
