"""The Lightning module that trains any mimkit model (anything whose forward returns a MIMOutput)."""
from __future__ import annotations

import math

import lightning as L
import torch
from timm.optim import param_groups_weight_decay

from ..checkpoint import build_from_config


def no_weight_decay_names(model: torch.nn.Module) -> set[str]:
    """Full parameter names that get no weight decay: every submodule's ``no_weight_decay()``
    (tokens, position embeddings) — biases and norms (ndim <= 1) are excluded by timm's grouping."""
    names: set[str] = set()
    for prefix, mod in model.named_modules():
        fn = getattr(mod, "no_weight_decay", None)
        if callable(fn):
            names |= {f"{prefix}.{n}" if prefix else n for n in fn()}
    return names


def param_groups(model: torch.nn.Module, weight_decay: float):
    if hasattr(model, "param_groups"):
        return model.param_groups(weight_decay)
    return param_groups_weight_decay(model, weight_decay, no_weight_decay_names(model))


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up, then per-step half-cosine down to ``min_ratio`` (MAE's schedule)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class MIMModule(L.LightningModule):
    def __init__(self, model_config: dict | None, optim: dict, batch_size: int, model: torch.nn.Module | None = None):
        """``model_config`` builds the model ({"recipe": name, **overrides}); or pass a ready ``model``
        (e.g. a converted checkpoint, or a peer wrapped for a benchmark)."""
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.model = model if model is not None else build_from_config(model_config)
        self.optim_cfg = optim
        self.batch_size = batch_size
        self._has_step_hook = callable(getattr(self.model, "on_train_step", None))

    def forward(self, images, **kw):
        return self.model(images, **kw)

    def effective_lr(self) -> float:
        o = self.optim_cfg
        if o.get("lr") is not None:
            return float(o["lr"])
        t = self.trainer
        eff = self.batch_size * t.accumulate_grad_batches * t.world_size
        return float(o["blr"]) * eff / float(o["lr_batch_base"])

    def configure_optimizers(self):
        o = self.optim_cfg
        lr = self.effective_lr()
        fused = o.get("fused")
        if fused is None:
            fused = torch.cuda.is_available() and self.device.type == "cuda"
        opt = torch.optim.AdamW(param_groups(self.model, float(o["weight_decay"])), lr=lr,
                                betas=tuple(o["betas"]), fused=bool(fused))
        total = max(1, int(self.trainer.estimated_stepping_batches))
        epochs = max(1, self.trainer.max_epochs or 1)
        warmup = int(round(float(o.get("warmup_epochs", 0)) * total / epochs))
        min_ratio = float(o.get("min_lr", 0.0)) / lr if lr > 0 else 0.0
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: warmup_cosine(s, warmup, total, min_ratio))
        self.total_steps = total
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def training_step(self, batch, batch_idx):
        # a batch is (images, labels) from a classification dataset, or a dict of model inputs
        # (e.g. {"images", "mask", "labels"} when masks/targets are made in the data workers)
        inputs = batch if isinstance(batch, dict) else {"images": batch[0] if isinstance(batch, (list, tuple)) else batch}
        images = inputs["images"]
        if self._has_step_hook:
            self.model.on_train_step(self.global_step, getattr(self, "total_steps", 1))
        out = getattr(self, "_compiled", self.model)(**inputs)
        loss = out.loss
        if not torch.isfinite(loss.detach()):
            raise FloatingPointError(
                f"loss became {loss.item()} at step {self.global_step}: training stopped and the last good "
                "checkpoint was kept. Lower optim.blr/optim.lr, set trainer.gradient_clip_val, or use "
                "trainer.precision=32-true; then resume from checkpoints/last.ckpt.")
        bs = images.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        for k, v in out.extra.items():
            if torch.is_tensor(v) and v.ndim == 0:
                self.log(f"train/{k}", v, prog_bar=k in ("mask_acc",), batch_size=bs)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=bs)
        return loss

    def compile_model(self) -> None:
        """Use ``torch.compile`` for the training forward (state-dict keys stay unchanged)."""
        compiled = torch.compile(self.model)
        object.__setattr__(self, "_compiled", compiled)
