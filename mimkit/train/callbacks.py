"""Callbacks and plugins: atomic checkpoint files, reconstruction grids, loss curve, final export."""
from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..checkpoint import atomic_write, save_model


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file in the same directory, then renames it."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        from ..checkpoint import read_torch_checkpoint

        return read_torch_checkpoint(path)


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
        g = torch.Generator().manual_seed(self.seed)
        noise = torch.rand(x.shape[0], grid[0] * grid[1], generator=g).to(x.device)
        kw = {"noise": noise} if getattr(model, "method", "") == "mae" else {}
        with torch.no_grad():
            loss = float(model(x, **kw).loss) if kw else None
        title = f"epoch {trainer.current_epoch + 1}" + (f", loss {loss:.4f}" if loss is not None else "")
        with torch.autocast(x.device.type, enabled=False):
            p = save_reconstruction_grid(model, x.float(), self.out_dir / f"epoch_{trainer.current_epoch + 1:03d}.png",
                                         self.mean, self.std, title=title, **kw)
        (self.out_dir / "latest.png").write_bytes(p.read_bytes())


def read_metrics(csv_path) -> dict[str, tuple[list[float], list[float]]]:
    """Lightning CSVLogger metrics -> {name: (steps, values)}."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    with open(csv_path) as f:
        for row in csv.DictReader(f):
            step = row.get("step")
            for k, v in row.items():
                if k in ("step", "epoch") or v in ("", None):
                    continue
                xs, ys = series.setdefault(k, ([], []))
                xs.append(float(step))
                ys.append(float(v))
    return series


class FinalArtifacts(L.Callback):
    """At the end of training: a loss-curve PNG and the model in mimkit's safetensors format."""

    def __init__(self, run_dir):
        self.run_dir = Path(run_dir)

    @L.pytorch.utilities.rank_zero_only
    def on_train_end(self, trainer, pl_module):
        save_model(pl_module.model, self.run_dir / "model")
        self.write_curve(trainer)

    def write_curve(self, trainer):
        from ..viz import save_curve

        for lg in trainer.loggers:
            if isinstance(lg, L.pytorch.loggers.CSVLogger):
                lg.save()
                path = Path(lg.log_dir) / "metrics.csv"
                if path.exists():
                    m = read_metrics(path)
                    curves = {k.split("/", 1)[-1]: v for k, v in m.items() if k in ("train/loss",)}
                    if curves:
                        save_curve(None, curves, self.run_dir / "loss_curve.png", title="pretraining loss")
                    extra = {k.split("/", 1)[-1]: v for k, v in m.items()
                             if k.startswith("train/") and k not in ("train/loss", "train/lr")}
                    if extra:
                        save_curve(None, extra, self.run_dir / "metrics_curve.png", ylabel="value",
                                   title="logged metrics")
