"""The Lightning module that trains any mimkit model (anything whose forward returns a MIMOutput)."""
from __future__ import annotations

import math

import lightning as L
import torch

from ..files import jsonable
from ..registry import build_from_config
from ..schedules import warmup_cosine
from .budget import BudgetAware
from .loader import mix_seed


class NonFiniteLossError(FloatingPointError, ValueError):
    """The training loss became NaN or infinite; raised before the optimiser step, so the weights
    and the checkpoints on disk are the last good ones. (A ValueError too, so the CLI prints one line.)"""


def no_weight_decay_names(model: torch.nn.Module) -> set[str]:
    """Full parameter names that get no weight decay: every submodule's ``no_weight_decay()``
    (tokens, position embeddings) — biases and norms (ndim <= 1) are excluded by timm's grouping."""
    names: set[str] = set()
    for prefix, mod in model.named_modules():
        fn = getattr(mod, "no_weight_decay", None)
        if callable(fn):
            names |= {f"{prefix}.{n}" if prefix else n for n in fn()}
    return names


def no_decay_set(model: torch.nn.Module) -> set[str]:
    """Names of the parameters without weight decay: biases, norms and other 1-D tensors, plus every
    ``no_weight_decay()`` name (tokens, position embeddings) — timm's rule. Compute it on the plain
    model: after FSDP wraps it, parameters are flattened shards and their shapes no longer tell."""
    skip = {clean_param_name(n) for n in no_weight_decay_names(model)}
    names = ((clean_param_name(n), p) for n, p in model.named_parameters())
    return {n for n, p in names if p.ndim <= 1 or n.endswith(".bias") or n in skip}


_WRAPPER_PARTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def clean_param_name(name: str) -> str:
    """A parameter name without the segments that FSDP, activation checkpointing or compile insert."""
    for part in _WRAPPER_PARTS:
        name = name.replace(part, "")
    return name


def param_groups(model: torch.nn.Module, weight_decay: float, no_decay: set[str] | None = None):
    """AdamW groups: ``[{no decay}, {weight_decay}]``; a model's own ``param_groups(wd)`` wins.
    ``no_decay`` (names from :func:`no_decay_set` on the unwrapped model) makes it FSDP-safe."""
    if hasattr(model, "param_groups"):
        return model.param_groups(weight_decay)
    if no_decay is None:
        no_decay = no_decay_set(model)
    decay, skip = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (skip if clean_param_name(name) in no_decay else decay).append(p)
    return [{"params": skip, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def cosine_weight_decay(step: float, total: float, start: float, end: float) -> float:
    """The weight decay at optimiser step ``step`` (0-based, may be fractional) of ``total``: ``start`` ->
    ``end`` on a half-cosine over the whole run, no warm-up (``optim.weight_decay_end``; DINO's and iBOT's
    ``cosine_scheduler(weight_decay, weight_decay_end, epochs, niter_per_ep)``), then ``end``."""
    return end + (start - end) * warmup_cosine(step, 0, total)


def skip_step_if(optimizer, bad: torch.Tensor) -> bool:
    """Make the coming ``optimizer.step()`` a no-op when the 0-dim tensor ``bad`` is nonzero, without
    reading it on the host (no device synchronisation). Returns False when the optimiser cannot do it
    (then the caller must check on the host).

    It relies on this torch behaviour (checked by ``tests/test_train.py::test_fused_adamw_skips_on_found_inf``,
    which fails if torch changes it): ``torch.optim.Adam``/``AdamW`` pass their ``found_inf`` attribute
    (what ``torch.amp.GradScaler`` sets for inf/NaN gradients) to the fused kernel, which leaves the
    parameters and both moments untouched where it is nonzero and takes the step count back. Only the
    fused implementation reads it (the others refuse a ``found_inf``), so every group must be fused."""
    groups = getattr(optimizer, "param_groups", None)
    if not groups or not all(g.get("fused") for g in groups):
        return False
    optimizer.found_inf = bad.float()
    return True


class MIMModule(BudgetAware, L.LightningModule):
    def __init__(self, model_config: dict | None, optim: dict, batch_size: int, model: torch.nn.Module | None = None,
                 seed: int = 0):
        """``model_config`` builds the model ({"recipe": name, **overrides}); or pass a ready ``model``
        (e.g. a converted checkpoint, or a peer wrapped for a benchmark). ``seed`` drives the
        per-step random state (masks, drop path): see ``training_step``."""
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.model = model if model is not None else build_from_config(model_config)
        self.optim_cfg = optim
        self.batch_size = batch_size
        self.seed = int(seed)
        # capabilities the model declares (see mimkit.base.MIMModel): a schedule set before each step
        # (the dVAE's temperature), an update after each optimiser step (an EMA teacher)
        self._has_step_hook = callable(getattr(self.model, "on_train_step", None))
        self._has_after_step_hook = callable(getattr(self.model, "after_optimizer_step", None))
        self._has_before_step_hook = callable(getattr(self.model, "before_optimizer_step", None))
        self._last_stepped: int | None = None
        self._no_decay = no_decay_set(self.model)  # before any FSDP wrapping
        self._step_losses: list[torch.Tensor] = []  # detached losses since the last optimiser step
        # Total optimiser steps of the schedule, when the caller knows it (run_pretrain does). Otherwise
        # Lightning's estimated_stepping_batches is used, which loads the dataloader *before* a resumed
        # checkpoint is restored and so loses the saved dataloader position (exact resume needs this).
        self.total_steps_hint: int | None = None
        self.steps_per_epoch_hint: int | None = None

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
        if fused is None:  # runs configured before 0.2: fused on CUDA only
            fused = torch.cuda.is_available() and self.device.type == "cuda"
        elif fused and self.device.type not in ("cpu", "cuda"):
            fused = False  # the fused kernel exists for CPU and CUDA parameters
        opt = torch.optim.AdamW(param_groups(self.model, float(o["weight_decay"]), self._no_decay), lr=lr,
                                betas=tuple(o["betas"]), fused=bool(fused))
        total = max(1, int(self.total_steps_hint or self.trainer.estimated_stepping_batches))
        # warm-up in optimiser steps: warmup_epochs x steps per epoch (also when max_steps ends the run)
        per_epoch = self.steps_per_epoch_hint or total / max(1, self.trainer.max_epochs or 1)
        warmup = min(total, int(round(float(o.get("warmup_epochs", 0)) * per_epoch)))
        min_ratio = float(o.get("min_lr", 0.0)) / lr if lr > 0 else 0.0
        # read at every step: a budget run (trainer.max_minutes, mimkit.train.budget) fixes them once it
        # has timed its first steps
        self.total_steps, self.warmup_steps = total, warmup
        # the groups with weight decay (optim.weight_decay_end schedules them before every step)
        self._decay_groups = [i for i, g in enumerate(opt.param_groups) if g["weight_decay"] > 0]
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: warmup_cosine(*self.schedule_position(s), min_ratio=min_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    device_augment = None  # set by run_pretrain for data.decode_on_device
    tune_cpu_malloc = True  # trainer.tune_cpu_malloc: see mimkit.train.allocator

    def on_fit_start(self) -> None:
        if self.tune_cpu_malloc:
            from .allocator import tune_cpu_allocator

            tune_cpu_allocator(self.device)

    def on_before_batch_transfer(self, batch, dataloader_idx):
        """Encoded files (``data.decode_on_device``) are decoded and augmented straight onto the device."""
        if isinstance(batch, dict) and "encoded" in batch and self.device_augment is not None:
            return {"images": self.device_augment(batch["encoded"], batch["paths"], self.device)}
        return batch

    def training_step(self, batch, batch_idx):
        # a batch is (images, labels) from a classification dataset, or a dict of model inputs
        # (e.g. {"images", "mask", "labels"} when masks/targets are made in the data workers)
        inputs = batch if isinstance(batch, dict) else {"images": batch[0] if isinstance(batch, (list, tuple)) else batch}
        images = inputs["images"]
        if self._has_step_hook:
            pos, _, total = self.schedule_position(self.global_step)
            self.model.on_train_step(pos, total)
        # The random state of a step (mask noise, drop path) is a pure function of (seed, rank, epoch,
        # batch): nothing to save in checkpoints, a resumed run draws exactly what the uninterrupted
        # one drew, and ranks draw different masks. (Augmentations are seeded per sample by the loader.)
        torch.manual_seed(mix_seed(self.seed, self.global_rank, self.current_epoch, batch_idx))
        out = self._forward(inputs)
        loss = out.loss
        self._step_losses.append(loss.detach())  # checked once per optimiser step, before it
        bs = images.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs, sync_dist=self.trainer.world_size > 1)
        for k, v in out.extra.items():
            if torch.is_tensor(v) and v.ndim == 0:
                self.log(f"train/{k}", v, prog_bar=k in ("mask_acc",), batch_size=bs)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=bs)
        return loss

    # ---- validation loss (data.val_*): the pretraining loss on held-out images at each epoch end
    _VAL_STREAM = 0x56414C  # "VAL": a seed stream of its own, apart from the training steps'

    def on_validation_epoch_start(self) -> None:
        # validation leaves the global random state as it found it: a run with a validation set trains
        # exactly as the same run without one
        self._val_rng = (torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None)
        self._val_sum = torch.zeros((), dtype=torch.float64 if self.device.type != "mps" else torch.float32,
                                    device=self.device)
        self._val_count = torch.zeros_like(self._val_sum)

    def validation_step(self, batch, batch_idx):
        """The method's own loss on a batch of held-out images (evaluation transform, no augmentation).
        Masks and any other random draw come from a seed fixed by (seed, rank, batch), the same at every
        epoch, so the epochs' values compare; works for any method whose forward draws its masks."""
        inputs = batch if isinstance(batch, dict) else {"images": batch[0] if isinstance(batch, (list, tuple)) else batch}
        torch.manual_seed(mix_seed(self.seed, self._VAL_STREAM, self.global_rank, batch_idx))
        out = self.model(**inputs)
        n = inputs["images"].shape[0]
        self._val_sum += out.loss.detach().to(self._val_sum.dtype) * n
        self._val_count += n

    def on_validation_epoch_end(self) -> None:
        """``val/loss``: the mean over every held-out image (sums over all processes, so an uneven split
        between ranks weighs each image once)."""
        total = torch.stack([self._val_sum, self._val_count])
        if self.trainer.world_size > 1:
            total = self.trainer.strategy.reduce(total, reduce_op="sum")
        if float(total[1]) > 0:
            self.log("val/loss", (total[0] / total[1]).float(), prog_bar=True,
                     sync_dist=self.trainer.world_size > 1)  # equal on every rank already
        cpu, cuda = self._val_rng
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)

    def on_train_start(self) -> None:
        self._last_stepped = self.global_step  # restored by now when resuming

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        """After an optimiser step (not after an accumulation micro-batch), let the model update what
        follows the weights (an EMA teacher). A pure function of the step: nothing extra to checkpoint."""
        if self._has_after_step_hook and self.global_step != self._last_stepped:
            self._last_stepped = self.global_step
            pos, _, total = self.schedule_position(self.global_step)
            self.model.after_optimizer_step(pos, total)

    def on_before_optimizer_step(self, optimizer) -> None:
        """Never apply an update from a NaN/inf loss (on any rank): the weights and every checkpoint on
        disk stay the last good ones, and training stops with :class:`NonFiniteLossError`.

        With a plain optimiser the check reads the losses on the host (one sync per optimiser step).
        With a fused one (``optim.fused``, the default) it costs no sync: the finiteness flag
        goes to the fused kernel as ``found_inf`` (the step skips itself, as under a GradScaler) and is
        read on the host one step later, before any checkpoint is written and at the end of training."""
        if self._has_before_step_hook:  # the model's say on the gradients before clipping (iBOT's frozen prototypes)
            pos, _, total = self.schedule_position(self.global_step)
            self.model.before_optimizer_step(pos, total)
        self.schedule_weight_decay(optimizer)
        self.raise_if_non_finite()
        losses, self._step_losses = self._step_losses, []
        if not losses:
            return
        vals = torch.stack(losses)
        distributed = self.trainer.world_size > 1
        bad = (~torch.isfinite(vals).all()).float()
        fused = all(g.get("fused") for g in getattr(optimizer, "param_groups", None) or [{}])
        if fused and distributed and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
        if fused and skip_step_if(optimizer, bad):
            host = bad.to("cpu", non_blocking=True) if bad.is_cuda else bad
            event = None
            if bad.is_cuda:
                event = torch.cuda.Event()
                event.record()
            self._pending_check = (host, event, vals, self.global_step, self.current_epoch)
            return
        ok = bool(torch.isfinite(vals).all())  # one host sync per optimiser step
        if distributed:
            ok = self.trainer.strategy.reduce_boolean_decision(ok, all=True)
        if not ok:
            self._raise_non_finite(vals, self.global_step, self.current_epoch)

    def schedule_weight_decay(self, optimizer) -> None:
        """With ``optim.weight_decay_end``, set the weight decay of the groups that have one to
        :func:`cosine_weight_decay` at this step (read from the step, as the learning rate: nothing to
        checkpoint, exact on resume); without it the weight decay stays constant."""
        end = self.optim_cfg.get("weight_decay_end")
        if end is None or optimizer is None:
            return
        pos, _, total = self.schedule_position(self.global_step)
        wd = cosine_weight_decay(pos, total, float(self.optim_cfg["weight_decay"]), float(end))
        for i in self._decay_groups:
            optimizer.param_groups[i]["weight_decay"] = wd

    _pending_check = None

    def raise_if_non_finite(self) -> None:
        """Read the flag of the last deferred check (fused optimisers) and stop if it was set."""
        pending, self._pending_check = self._pending_check, None
        if pending is None:
            return
        host, event, vals, step, epoch = pending
        if event is not None:
            event.synchronize()  # waits for that step only; later steps stay queued on the device
        if float(host):
            self._raise_non_finite(vals, step, epoch)

    def _raise_non_finite(self, vals, step, epoch):
        bad = [float(v) for v in vals if not math.isfinite(float(v))]
        what = f"loss became {bad[0]}" if bad else "the loss became non-finite on another process"
        raise NonFiniteLossError(
            f"{what} at step {step} (epoch {epoch}): training stopped before the "
            "update, the last good checkpoint is kept. Lower optim.blr/optim.lr, set "
            "trainer.gradient_clip_val, or use trainer.precision=32-true; then resume with "
            "--resume <run>/checkpoints/last.ckpt.")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.raise_if_non_finite()  # no checkpoint after a skipped non-finite step

    def on_train_epoch_end(self) -> None:
        self.raise_if_non_finite()

    def on_train_end(self) -> None:
        self.raise_if_non_finite()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse a checkpoint of another model with a clear message (before Lightning loads weights)."""
        saved = (checkpoint.get("hyper_parameters") or {}).get("model_config")
        mine = self.hparams.get("model_config")
        if saved is None or mine is None:
            return
        saved, mine = jsonable(dict(saved)), jsonable(dict(mine))
        if saved != mine:
            diff = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
            detail = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs config {mine.get(k)!r}" for k in diff[:5])
            raise ValueError(f"the checkpoint holds another model than the config ({detail}); resume with the "
                             "run's own config (drop model.* overrides) or start a new run")

    def compile_model(self, device_type: str | None = None) -> None:
        """Use ``torch.compile`` for the training forward and its backward (state-dict keys stay
        unchanged). On the CPU, attention over short sequences (<= ``MATH_ATTENTION_MAX_TOKENS``)
        is written as matmul + softmax so that inductor fuses it with its neighbours (measured in
        ``docs/speed.md``); if compiling fails (no C++ compiler, an unsupported op), training goes
        on eagerly with one warning."""
        from .speed import Compiled, compile_methods

        parts = getattr(self.model, "compile_training", True)
        if isinstance(parts, (tuple, list)):  # only these methods (iBOT: its encoders' token passes)
            object.__setattr__(self, "_uncompile", compile_methods(self.model, parts, device_type or self.device.type))
        else:
            object.__setattr__(self, "_compiled", Compiled(self.model, device_type or self.device.type))

    def uncompile(self) -> None:
        """Back to the eager model (after training: the model may then be copied, saved or evaluated)."""
        object.__setattr__(self, "_compiled", None)
        restore = self.__dict__.pop("_uncompile", None)
        if restore is not None:
            restore()

    def _forward(self, inputs: dict):
        compiled = getattr(self, "_compiled", None)
        return compiled(**inputs) if compiled is not None else self.model(**inputs)
