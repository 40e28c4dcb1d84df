"""Full fine-tuning of a pretrained encoder + linear head on Lightning (the MAE/BEiT protocol).

* layer-wise lr decay: ``lr_scale = layer_decay ** (depth + 1 - layer)`` with the embeddings at
  layer 0, block ``i`` at layer ``i + 1`` and the head at scale 1 (:mod:`mimkit.eval.classifier`,
  timm's ``param_groups_layer_decay``);
* stochastic depth (``drop_path``) set on the copied encoder's blocks;
* optional mixup / cutmix (timm ``Mixup``, soft targets with ``SoftTargetCrossEntropy``) and label
  smoothing;
* AdamW (0.9, 0.999), ``lr = blr * batch_size / 256``, linear warm-up then per-step half-cosine;
* optional EMA of the weights (timm ``ModelEmaV3`` with its warm-up, ``ema`` = the decay it rises to): the
  average is what validation scores, what is tested and what is saved.

The model passed in is not modified (its encoder is copied). The reported accuracy is the test
accuracy after the last epoch.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..schedules import warmup_cosine
from ..train.budget import BudgetAware
from . import FINETUNE_DEFAULTS  # noqa: F401  (re-exported)
from .classifier import Classifier, layer_decay_param_groups, set_drop_path
from .trials import best_of_trials


class FinetuneModule(BudgetAware, L.LightningModule):
    """Trains a :class:`Classifier`; logs ``train/loss``, ``train/lr``, ``val/loss`` and ``val/acc``."""

    def __init__(self, classifier: Classifier, lr: float, min_lr: float = 0.0, weight_decay: float = 0.05,
                 layer_decay: float = 0.75, warmup_epochs: float = 1.0, mixup: float = 0.0, cutmix: float = 0.0,
                 label_smoothing: float = 0.0, betas=(0.9, 0.999), ema: float = 0.0, flip_tta: bool = False,
                 score_flips: bool = False):
        super().__init__()
        self.flip_tta = bool(flip_tta)  # scoring averages the logits of each image and its mirror image
        self.score_flips = bool(score_flips)  # the final pass also scores the same weights the other way
        self.other_correct: list = []  # ... its hits: flip averaging off where it is on, on where it is off
        if not 0.0 <= ema < 1.0:
            raise ValueError(f"ema is the decay of the weights' moving average, in [0, 1) (0 = off), got {ema}")
        self.test_correct: list = []  # filled by the final pass over the test set (finetune(keep_correct=True))
        self.classifier = classifier
        self.lr, self.min_lr, self.weight_decay, self.layer_decay = lr, min_lr, weight_decay, layer_decay
        self.warmup_epochs, self.betas = warmup_epochs, tuple(betas)
        self.mixup_fn = None
        if mixup > 0 or cutmix > 0:
            from timm.data import Mixup
            from timm.loss import SoftTargetCrossEntropy

            self.mixup_fn = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=label_smoothing,
                                  num_classes=classifier.num_classes)
            self.train_loss = SoftTargetCrossEntropy()
        else:
            self.train_loss = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.eval_loss = nn.CrossEntropyLoss()
        self.loss_history: list[float] = []
        self.steps_per_epoch_hint: int | None = None  # set by finetune(): the training loader's length
        self._compiled = None  # set by finetune(compile=...): mimkit.train.speed.Compiled
        self.ema = None
        if ema > 0:  # decay 1 - (1 + step)^(-2/3), capped at `ema`: a short run is averaged over its late steps
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(classifier, decay=ema, use_warmup=True)

    def scored(self) -> Classifier:
        """The weights validation scores and the test reads: the moving average when there is one."""
        return self.ema.module if self.ema is not None else self.classifier

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.ema is not None:
            self.ema.update(self.classifier, step=self.global_step)

    def adopt_average(self) -> None:
        """After training: the classifier takes the moving average's weights (and the average is dropped)."""
        if self.ema is not None:
            self.classifier.load_state_dict(self.ema.module.state_dict())
            self.ema = None

    def compile_classifier(self, device_type: str) -> None:
        from ..train.speed import Compiled

        object.__setattr__(self, "_compiled", Compiled(self.classifier, device_type))

    def forward(self, images):
        return self.classifier(images)

    def on_fit_start(self) -> None:
        from ..train.allocator import tune_cpu_allocator

        tune_cpu_allocator(self.device)  # CPU: activation memory reused, not page-faulted in every step

    def configure_optimizers(self):
        groups = layer_decay_param_groups(self.classifier, self.weight_decay, self.layer_decay)
        for g in groups:
            g["lr"] = self.lr * g["lr_scale"]
        fused = self.device.type in ("cpu", "cuda")  # the fused AdamW kernel (docs/speed.md)
        opt = torch.optim.AdamW(groups, lr=self.lr, betas=self.betas, fused=fused)
        est = self.trainer.estimated_stepping_batches
        total = 10**9 if not math.isfinite(est) else max(1, int(est))  # a budget (minutes) fixes it later
        per_epoch = self.trainer.num_training_batches  # an epoch may be cut short by max_steps (fractional epochs)
        if not math.isfinite(per_epoch):  # open-ended (a budget in minutes): the loader's length
            per_epoch = self.steps_per_epoch_hint or 1
        warmup = min(total, int(round(self.warmup_epochs * per_epoch)))
        min_ratio = self.min_lr / self.lr if self.lr > 0 else 0.0
        self.total_steps, self.warmup_steps = total, warmup
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: warmup_cosine(*self.schedule_position(s), min_ratio=min_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.mixup_fn is not None:
            if x.shape[0] % 2:
                raise ValueError(f"mixup/cutmix need an even batch size, got {x.shape[0]}")
            x, y = self.mixup_fn(x, y)
        loss = self.train_loss((self._compiled or self.classifier)(x), y)
        if not torch.isfinite(loss.detach()):
            raise FloatingPointError(f"fine-tuning loss became {loss.item()} at step {self.global_step}; lower the "
                                     "learning rate (--blr/--lr)")
        self.loss_history.append(float(loss.detach()))
        self.log("train/loss", loss, prog_bar=True, batch_size=x.shape[0])
        self.log("train/lr", self.trainer.optimizers[0].param_groups[-1]["lr"], batch_size=x.shape[0])
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        model = self.scored()
        final = self.trainer.state.fn == "validate"  # the one pass over the test set after training
        both = final and self.score_flips
        plain = model(x)
        averaged = (plain + model(x.flip(-1))) / 2 if self.flip_tta or both else None
        logits = averaged if self.flip_tta else plain  # flip averaging: the same for validation and the test read
        bs = x.shape[0]
        self.log("val/loss", self.eval_loss(logits.float(), y), batch_size=bs, on_epoch=True)
        hit = logits.argmax(1) == y
        self.log("val/acc", hit.float().mean(), batch_size=bs, on_epoch=True, prog_bar=True)
        if final:
            self.test_correct.append(hit.cpu())
        if both:  # the same weights scored the other way
            self.other_correct.append(((plain if self.flip_tta else averaged).argmax(1) == y).cpu())


class KeepBest(L.Callback):
    """Early stopping during fine-tuning: after each validation pass (on held-out images), keep a copy
    of the classifier's weights when ``val/acc`` is the best so far; with ``patience``, stop after that
    many passes without a gain. Only the passes inside ``fit`` count (not a later test)."""

    def __init__(self, patience: int | None = None):
        self.patience, self.state, self.score, self.epoch, self.scores = patience, None, -1.0, None, []

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.state.fn != "fit" or trainer.sanity_checking:
            return
        acc = float(trainer.callback_metrics["val/acc"])
        self.scores.append(round(acc, 5))
        if acc > self.score:
            self.score, self.epoch = acc, trainer.current_epoch + 1
            self.state = {k: v.detach().clone() for k, v in pl_module.scored().state_dict().items()}
        elif self.patience is not None and len(self.scores) - self.scores.index(max(self.scores)) > self.patience:
            trainer.should_stop = True


def _logits(classifier, x: torch.Tensor, flip_tta: bool) -> torch.Tensor:
    logits = classifier(x)
    return (logits + classifier(x.flip(-1))) / 2 if flip_tta else logits


@torch.no_grad()
def classifier_predictions(classifier, dataset, batch_size: int = 256, flip_tta: bool = False) -> torch.Tensor:
    """Class predictions (N,) of a fine-tuned classifier on a dataset (evaluation transform); ``flip_tta``
    averages the logits of each image and its mirror, as a classifier fine-tuned with it was scored."""
    from .features import batches

    was = classifier.training
    classifier.eval()
    preds = [_logits(classifier, x, flip_tta).argmax(1) for x, _ in batches(dataset, batch_size)]
    classifier.train(was)
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)


@torch.no_grad()
def classifier_accuracy(classifier, dataset, batch_size: int = 256, flip_tta: bool = False) -> float:
    """Top-1 accuracy of a fine-tuned classifier on a labelled dataset (evaluation transform; ``flip_tta`` as
    :func:`classifier_predictions`)."""
    from .features import batches

    was = classifier.training
    classifier.eval()
    right = total = 0
    for x, y in batches(dataset, batch_size):
        right += int((_logits(classifier, x, flip_tta).argmax(1) == torch.as_tensor(y)).sum())
        total += len(y)
    classifier.train(was)
    return right / max(1, total)


def scarce_label_schedule(n_train: int) -> dict:
    """A fine-tuning schedule sized to ``n_train`` labelled images (60 or 600 per class, say), instead of
    one step count for every size: about 30k images seen (10 to 100 epochs), batches of 32 below 2k images
    (64 above), a wider crop range for small sets, early stopping on a held-out labelled set of the same
    size with a patience of a quarter of the epochs."""
    epochs = int(min(100, max(10, round(30000 / max(1, n_train)))))
    return {"epochs": epochs, "batch_size": 32 if n_train < 2000 else 64, "crop_scale": (0.5, 1.0) if n_train < 2000 else (0.65, 1.0),
            "warmup_epochs": max(1.0, 0.1 * epochs), "patience": max(3, epochs // 4)}


@contextlib.contextmanager
def _quiet_lightning():
    """Hide Lightning's informational banner lines (GPU available, tips) and the warning about a
    validation_step without a validation loader (we validate once, at the end)."""
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*no `val_dataloader`.*")
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*LeafSpec.*")
            yield
    finally:
        log.setLevel(level)


def _precision(device_type: str) -> str:
    return "bf16-mixed" if device_type == "cuda" else "32-true"


def finetune(model, train_dataset, test_dataset, num_classes: int, *, pool: str = "mean", epochs: float = 10,
             batch_size: int = 128, blr: float = 1e-3, lr: float | None = None, min_lr: float = 1e-6,
             layer_decay: float = 0.75, weight_decay: float = 0.05, drop_path: float = 0.1, mixup: float = 0.0,
             cutmix: float = 0.0, label_smoothing: float = 0.1, warmup_epochs: float = 1.0, seed: int = 0,
             out_dir=None, progress: bool = True, num_workers: int = 0, eval_every: int = 0,
             accelerator: str = "auto", precision: str | None = None, trainer_kwargs: dict | None = None,
             compile=False, val_dataset=None, patience: int | None = None, minutes: float | None = None,
             keep_correct: bool = False, ema: float = 0.0, flip_tta: bool = False, score_flips: bool = False):
    """Fine-tune ``model.encoder`` (any mimkit model, or an encoder) with a new head on
    ``train_dataset`` and evaluate on ``test_dataset`` (both yield (image, label)).

    ``lr`` is absolute; when None it is ``blr * batch_size / 256``. ``eval_every`` > 0 also
    evaluates every that many epochs (logged as ``val/acc``). ``out_dir`` receives
    ``classifier.safetensors``, ``finetune.json`` and the Lightning CSV logs. ``compile``: true, false
    or auto (``torch.compile`` for runs of >= 600 steps, as ``trainer.compile`` in pretraining); off by
    default: on the tiny CPU recipes (all 50 tokens, FLOP-bound) it measured no gain (docs/speed.md).
    ``val_dataset`` (labelled images held out of ``train_dataset``): early stopping. The classifier is
    scored on it every ``eval_every`` epochs (default every epoch), the weights of the best epoch are
    kept and tested, and with ``patience`` training stops after that many scores without a gain.
    The test set is then read once, by the kept weights. ``minutes``: a wall-clock budget that is a whole
    schedule, as ``mimkit pretrain --minutes`` (:mod:`mimkit.train.budget`: warm-up, then a cosine timed
    to end at the budget and re-fitted when the machine's speed changes); ``epochs`` is then ignored.
    ``ema`` > 0: an exponential moving average of the weights (timm ``ModelEmaV3``, with warm-up, decay
    capped at ``ema``) is what is scored, tested and returned. ``flip_tta``: every score (validation and the
    test read) averages the logits of each image and its horizontal mirror, as training saw both.
    ``score_flips``: the final pass also scores the same weights the other way, so that flip averaging can be
    chosen without a second training (``results["acc_by_flip"]``: ``{"plain": ..., "flip": ...}``); for a
    validation set passed as ``test_dataset``, never for a test set that is read once per configuration.
    Returns ``(classifier, results)`` with ``results["acc"]`` the final test accuracy (and, with
    ``val_dataset``, ``val_acc`` and ``best_epoch``; with ``keep_correct``, ``correct``: a bool per test
    image, from the same single pass over the test set)."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if len(train_dataset) < batch_size:
        raise ValueError(f"the training set has {len(train_dataset)} images, fewer than batch_size={batch_size}; "
                         "lower --batch-size")
    L.seed_everything(seed, workers=True, verbose=False)
    encoder = getattr(model, "encoder", model)
    classifier = Classifier(encoder, num_classes, pool)
    dpr = set_drop_path(classifier.encoder, drop_path)
    lr = float(lr) if lr is not None else blr * batch_size / 256
    module = FinetuneModule(classifier, lr, min_lr, weight_decay, layer_decay, warmup_epochs, mixup, cutmix,
                            label_smoothing, ema=ema, flip_tta=flip_tta, score_flips=score_flips)
    pin = torch.cuda.is_available()
    from ..data import BatchedSamples, collate

    batched = getattr(train_dataset, "batch_transform", None) is not None  # whole batches in one call
    train_loader = DataLoader(BatchedSamples(train_dataset) if batched else train_dataset, batch_size=batch_size,
                              shuffle=True, drop_last=True, num_workers=num_workers, pin_memory=pin,
                              persistent_workers=num_workers > 0, collate_fn=collate)
    test_loader = DataLoader(test_dataset, batch_size=max(256, batch_size), shuffle=False, num_workers=num_workers,
                             pin_memory=pin)
    best = None
    if val_dataset is not None:  # early stopping on held-out labelled images, never on the test set
        eval_every = eval_every if eval_every and eval_every > 0 else 1
        best = KeepBest(patience)
        val_loader = DataLoader(val_dataset, batch_size=max(256, batch_size), shuffle=False, num_workers=num_workers,
                                pin_memory=pin)
    during_fit = val_loader if val_dataset is not None else test_loader
    module.steps_per_epoch_hint = len(train_loader)
    out_dir = Path(out_dir) if out_dir else None
    logger = False
    if out_dir is not None:
        from lightning.pytorch.loggers import CSVLogger

        logger = CSVLogger(str(out_dir), name="logs", version="")
    device_type = "cuda" if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available() else "cpu"
    # fractional epochs (an equal-time baseline): the last epoch stops after its share of the steps
    steps = -1 if float(epochs).is_integer() else max(1, round(epochs * len(train_loader)))
    callbacks = [best] if best is not None else []
    if minutes is not None:
        from ..train import budget

        callbacks.append(budget.BudgetSchedule(float(minutes), budget.clock()))
        epochs, steps = 10**6, -1
    kw = dict(max_epochs=-1 if minutes is not None else math.ceil(epochs), max_steps=steps, accelerator=accelerator, devices=1 if accelerator != "auto" or device_type == "cpu"
              else "auto", precision=precision or _precision(device_type), logger=logger,
              enable_checkpointing=False, enable_progress_bar=progress, enable_model_summary=False,
              num_sanity_val_steps=0, log_every_n_steps=max(1, min(10, len(train_loader))),
              check_val_every_n_epoch=eval_every if eval_every and eval_every > 0 else 1,
              default_root_dir=str(out_dir) if out_dir else None, callbacks=callbacks or None)
    if not (eval_every and eval_every > 0):
        kw["limit_val_batches"] = 0
    kw.update(trainer_kwargs or {})
    from ..train.speed import should_compile

    if should_compile(compile, (steps if steps > 0 else math.ceil(epochs) * len(train_loader)), device_type):
        module.compile_classifier(device_type)
    with _quiet_lightning():
        trainer = L.Trainer(**kw)
        t0 = time.time()
        module.train()  # a loaded model arrives in eval mode; Lightning keeps submodule modes as found
        trainer.fit(module, train_loader, during_fit if eval_every and eval_every > 0 else None)
        t_fit = time.time() - t0
        module.adopt_average()
        if best is not None and best.state is not None:
            module.classifier.load_state_dict(best.state)
        trainer.limit_val_batches = 1.0
        t1 = time.time()
        module.test_correct, module.other_correct = [], []
        metrics = trainer.validate(module, test_loader, verbose=False)[0]
    hist = module.loss_history
    steps_per_epoch = max(1, len(train_loader))
    results = {
        "acc": float(metrics["val/acc"]), "test_loss": float(metrics["val/loss"]),
        "train_loss_first_epoch": float(sum(hist[:steps_per_epoch]) / max(1, len(hist[:steps_per_epoch]))),
        "train_loss_last_epoch": float(sum(hist[-steps_per_epoch:]) / max(1, len(hist[-steps_per_epoch:]))),
        "epochs": epochs if minutes is None else round(len(hist) / steps_per_epoch, 2), "steps": len(hist),
        "budget_minutes": minutes, "batch_size": batch_size, "lr": lr, "min_lr": min_lr,
        "layer_decay": layer_decay, "weight_decay": weight_decay, "drop_path": drop_path, "mixup": mixup,
        "cutmix": cutmix, "label_smoothing": label_smoothing, "warmup_epochs": warmup_epochs, "pool": pool, "ema": ema, "flip_tta": bool(flip_tta),
        "seed": seed, "train_images": len(train_dataset), "test_images": len(test_dataset),
        "fit_seconds": round(t_fit, 1), "eval_seconds": round(time.time() - t1, 1),
        "train_images_per_second": round(len(hist) * batch_size / max(t_fit, 1e-9), 1),
        "drop_path_per_block": [round(p, 4) for p in dpr],
    }
    if score_flips:
        other = float(torch.cat(module.other_correct).float().mean())
        results["acc_by_flip"] = {"plain": other if flip_tta else results["acc"],
                                  "flip": results["acc"] if flip_tta else other}
    if best is not None:
        results.update(val_acc=best.score, best_epoch=best.epoch, val_scores=best.scores, val_images=len(val_dataset),
                       stopped_early=minutes is None and len(best.scores) < math.ceil(epochs) // eval_every)
    classifier = module.classifier.cpu().eval()
    if out_dir is not None:
        save_classifier(classifier, out_dir, model, results)
    if keep_correct:  # which test images it got right (in order), for paired intervals; not in finetune.json
        results["correct"] = torch.cat(module.test_correct)
    return classifier, results


def save_classifier(classifier: Classifier, out_dir, source_model=None, results: dict | None = None) -> Path:
    """``out_dir/classifier.safetensors`` + ``out_dir/finetune.json`` (results, pool, classes and
    the source model's mimkit config, so :func:`load_classifier` can rebuild it)."""
    from safetensors.torch import save_file

    from ..files import atomic_write, jsonable

    out_dir = Path(out_dir)
    sd = {k: v.detach().contiguous().cpu() for k, v in classifier.state_dict().items()}
    atomic_write(out_dir / "classifier.safetensors", lambda p: save_file(sd, p, metadata={"format": "pt"}))
    meta = {"pool": classifier.pool, "num_classes": classifier.num_classes,
            "source_model": jsonable(getattr(source_model, "mimkit_config", None) or None),
            "results": results or {}}
    atomic_write(out_dir / "finetune.json", lambda p: Path(p).write_text(json.dumps(meta, indent=2, default=str)))
    return out_dir


def load_classifier(out_dir) -> Classifier:
    """Rebuild a classifier written by :func:`save_classifier` (needs the source model's config)."""
    from ..files import read_safetensors
    from ..registry import build_from_config

    out_dir = Path(out_dir)
    meta_path = out_dir / "finetune.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path} not found; `mimkit finetune --out DIR` writes it")
    meta = json.loads(meta_path.read_text())
    if not meta.get("source_model"):
        raise ValueError(f"{meta_path} does not record the source model's mimkit config; rebuild the Classifier "
                         "yourself and load classifier.safetensors")
    src = build_from_config(meta["source_model"])
    clf = Classifier(src.encoder, meta["num_classes"], meta["pool"], copy_encoder=False)
    clf.load_state_dict(read_safetensors(out_dir / "classifier.safetensors"))
    return clf.eval()


def finetune_augmented(data, crop_scale=(0.8, 1.0), hflip: bool = True):
    """The training images with fine-tuning augmentation (random resized crop + flip) on the
    already-normalised tensors."""
    from torchvision.transforms import InterpolationMode, v2

    from ..data import TensorImages

    size = data.train.images.shape[-1]
    t = [v2.RandomResizedCrop(size, scale=tuple(crop_scale), interpolation=InterpolationMode.BICUBIC, antialias=True)]
    if hflip:
        t.append(v2.RandomHorizontalFlip())
    return TensorImages(data.train.images, data.train.labels, v2.Compose(t))


#: The equal-trial search of fine-tuning recipes (:func:`tune_finetune`): (name, changes to the base recipe) per
#: side, as many trials for the ViT from scratch as for a pretrained encoder. The first is the untuned recipe
#: (blr 2e-3, drop path 0.1, label smoothing 0.1, no mixup; layer decay 0.75 pretrained, none from scratch);
#: layer decay is searched on the pretrained side only, drop path on the scratch side in its place.
FINETUNE_TRIALS = {
    "pretrained": (("base", {}), ("blr4e-3", {"blr": 4e-3}), ("ld0.9", {"layer_decay": 0.9}),
                   ("mixup", {"mixup": 0.8, "cutmix": 1.0})),
    "scratch": (("base", {}), ("blr4e-3", {"blr": 4e-3}), ("dp0", {"drop_path": 0.0}),
                ("mixup", {"mixup": 0.8, "cutmix": 1.0})),
}
BASE_LAYER_DECAY = {"pretrained": 0.75, "scratch": 1.0}


def choice_sets(data, fit_rows, val_rows, crop_scale=(0.8, 1.0)):
    """(augmented fit set, validation set) of the labelled training rows of ``data`` that choose a
    fine-tuning recipe (:func:`tune_finetune`); the rows come from :func:`mimkit.eval.splits.validation_split`.
    The fit set is a view of the training images (augmented item by item, as the whole set is); only the
    validation rows are gathered, so that scoring them reads whole batches."""
    from torch.utils.data import Subset

    from ..data import TensorImages

    val_rows = torch.as_tensor(val_rows).long()
    return (Subset(finetune_augmented(data, crop_scale), torch.as_tensor(fit_rows).long().tolist()),
            TensorImages(data.train.images[val_rows], data.train.labels[val_rows]))


def tune_finetune(model, side: str, fit_aug, val_set, num_classes: int, minutes: float, *, trials=None,
                  done: dict | None = None, on_trial=None, batch_size: int = 128, seed: int = 0,
                  progress: bool = False, score_flips: bool = False, choose_flip: bool = False) -> dict:
    """Choose a fine-tuning recipe for ``model`` on a validation split: every trial of ``side``
    (``"pretrained"`` or ``"scratch"``, :data:`FINETUNE_TRIALS`, or ``trials``) is fine-tuned for ``minutes``
    (budget-true) on ``fit_aug`` and scored on ``val_set``; no test image is read. ``done`` ({trial name:
    trial} kept from an earlier run) is not run again; ``on_trial(trial)`` is called after each new one (to
    keep it). Returns ``{"chosen": {"trial", "recipe", "val_acc"}, "trials": [...]}``: the recipe to
    fine-tune with, layer decay included. ``score_flips``: each trial's weights are also scored the other way
    (flip averaging, :func:`finetune`), kept as the trial's ``val_acc_by_flip``; the choice is unchanged.
    ``choose_flip`` (implies ``score_flips``): then flip averaging is chosen on the chosen trial's own weights,
    kept in its recipe only where it scores higher on validation (a tie: without); no trial is added."""
    if side not in BASE_LAYER_DECAY:
        raise ValueError(f"side must be one of {sorted(BASE_LAYER_DECAY)}, got {side!r}")

    score_flips = score_flips or choose_flip

    def run(name, over):
        recipe = {"layer_decay": BASE_LAYER_DECAY[side], **over}
        r = finetune_for_minutes(model, fit_aug, val_set, num_classes, minutes, batch_size=batch_size, seed=seed,
                                 progress=progress, score_flips=score_flips, **recipe)
        by_flip = {"val_acc_by_flip": {k: round(v, 4) for k, v in r["acc_by_flip"].items()}} if score_flips else {}
        return {"side": side, "trial": name, "recipe": recipe, "minutes": round(minutes, 2),
                "measured_minutes": r["minutes"], "steps": r.get("steps"), "val_acc": round(float(r["acc"]), 4),
                **by_flip, "fit_images": len(fit_aug), "val_images": len(val_set)}

    best, out = best_of_trials((trials or FINETUNE_TRIALS)[side], run, "val_acc", done=done, on_trial=on_trial)
    chosen = {"trial": best["trial"], "recipe": best["recipe"], "val_acc": best["val_acc"]}
    if choose_flip:
        chosen = flip_chosen(chosen, best)
    return {"chosen": chosen, "trials": out}


def flip_chosen(chosen: dict, trial: dict) -> dict:
    """``chosen`` (trial, recipe, val_acc) with flip averaging kept in its recipe only where ``trial`` (scored both
    ways on the same weights: ``val_acc_by_flip``) read higher with it than without (a tie: without)."""
    by = trial.get("val_acc_by_flip")
    if by is None:
        raise ValueError(f"trial {trial.get('trial')!r} was not scored both ways (score_flips); run it again")
    flip = by["flip"] > by["plain"]
    recipe = {k: v for k, v in chosen["recipe"].items() if k != "flip_tta"}
    return {**chosen, "recipe": {**recipe, **({"flip_tta": 1.0} if flip else {})},
            "val_acc": by["flip" if flip else "plain"], "val_acc_by_flip": by}


def finetune_for_minutes(model, train_aug, test, num_classes: int, minutes: float, *, batch_size: int = 128,
                         layer_decay: float = 0.75, blr: float = 2e-3, drop_path: float = 0.1,
                         label_smoothing: float = 0.1, pool: str = "mean", seed: int = 0, progress: bool = True,
                         keep_classifier: bool = False, **kw) -> dict:
    """Fine-tune (:func:`finetune`) for ``minutes`` of wall time with a budget-true schedule (warm-up of a
    tenth of an epoch, then a cosine timed to end at the budget: :mod:`mimkit.train.budget`). Returns
    finetune's results with ``minutes`` (measured) and ``correct`` (bool per test image, for paired
    intervals), and the fine-tuned ``classifier`` with ``keep_classifier``."""
    batch_size = max(2, min(int(batch_size), len(train_aug)))
    clf, res = finetune(model, train_aug, test, num_classes, pool=pool, epochs=1, batch_size=batch_size, blr=blr,
                        layer_decay=layer_decay, drop_path=drop_path, label_smoothing=label_smoothing,
                        warmup_epochs=0.1, seed=seed, progress=progress, minutes=minutes, keep_correct=True, **kw)
    return {**res, "minutes": round(res["fit_seconds"] / 60, 2),
            **({"classifier": clf} if keep_classifier else {})}
