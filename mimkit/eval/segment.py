"""Semantic segmentation on a mimkit encoder: ``transformers``' dense heads on the exported backbone.

* The encoder leaves as a ``transformers`` backbone (:mod:`mimkit.interop.hf_backbone`); the head is
  ``UperNetForSemanticSegmentation`` (any backbone: ViT, BEiT, Swin) or ``DPTForSemanticSegmentation``
  (plain ViTs with a class token: DPT builds its own ViT, into which the backbone's weights are copied).
  No head is written here.
* Training is :class:`SegmentModule` on Lightning: AdamW with layer-wise lr decay over the backbone's
  blocks (timm's ``param_groups_layer_decay``; the head at scale 1), a warm-up then cosine, a budget in
  minutes (:mod:`mimkit.train.budget`, as pretraining and classification fine-tuning), random flips.
* Scores: mIoU over the classes (the background a class like the others, 255 ignored), with per-image
  intersections and unions kept so two models read on the same images get a paired bootstrap interval
  (:func:`mimkit.eval.stats.paired_miou_difference`).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from ..schedules import warmup_cosine
from ..train.budget import BudgetAware
from .trials import best_of_trials

IGNORE = 255
HEADS = ("upernet", "dpt")


class Segmenter(nn.Module):
    """A ``transformers`` segmentation model with the block map layer decay needs (``group_matcher``)."""

    def __init__(self, hf: nn.Module):
        super().__init__()
        self.hf = hf

    def forward(self, pixel_values, labels=None):
        return self.hf(pixel_values=pixel_values, labels=labels)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^hf\.(?:backbone\.(?:beit\.|swin\.)?|dpt\.)embeddings",
                    blocks=[(r"^hf\.(?:backbone\.(?:beit\.|swin\.encoder\.)?(?:encoder\.)?|dpt\.encoder\.)layers?\.(\d+)",
                             None)])

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        out = self.hf(pixel_values=images).logits
        return F.interpolate(out, size=images.shape[-2:], mode="bilinear", align_corners=False)


def _dpt_from_backbone(bb, num_labels: int, channels: int):
    from transformers import DPTConfig, DPTForSemanticSegmentation

    c = bb.config
    if type(bb).__name__ != "Dinov2Backbone":
        raise ValueError(f"DPTForSemanticSegmentation builds a plain ViT with a class token; a {type(bb).__name__} "
                         "does not fit it: use --head upernet")
    idx = list(c.out_indices)
    if len(idx) != 4:
        raise ValueError(f"DPT reassembles 4 feature maps; this backbone returns {len(idx)} (export with 4 --out-indices)")
    sd = bb.state_dict()
    if any(not torch.equal(v, torch.ones_like(v)) for k, v in sd.items() if k.endswith("lambda1")):
        raise ValueError("DPT's ViT has no layer scale; this encoder's is not 1: use --head upernet")
    cfg = DPTConfig(hidden_size=c.hidden_size, num_hidden_layers=c.num_hidden_layers,
                    num_attention_heads=c.num_attention_heads, intermediate_size=int(c.hidden_size * c.mlp_ratio),
                    image_size=c.image_size, patch_size=c.patch_size, num_channels=c.num_channels,
                    layer_norm_eps=c.layer_norm_eps, qkv_bias=True, hidden_act="gelu",
                    backbone_out_indices=[i - 1 for i in idx], neck_hidden_sizes=[channels // 2, channels, channels,
                                                                                   channels],
                    fusion_hidden_size=channels, num_labels=num_labels,
                    use_auxiliary_head=True,  # transformers 5.x computes the loss only with it (modeling_dpt.py)
                    semantic_loss_ignore_index=IGNORE)
    hf = DPTForSemanticSegmentation(cfg)
    names = {"norm1": "layernorm_before", "norm2": "layernorm_after", "attention.q_proj": "attention.attention.query",
             "attention.k_proj": "attention.attention.key", "attention.v_proj": "attention.attention.value",
             "attention.o_proj": "attention.output.dense", "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}
    out = {}
    for k, v in sd.items():
        if k.startswith("embeddings.") and "mask_token" not in k:
            out[f"dpt.{k}"] = v
        elif k.startswith("layernorm."):
            out[f"dpt.{k}"] = v
        elif k.startswith("encoder.layer.") and not k.endswith("lambda1"):
            pre, rest = k.split(".", 3)[:3], k.split(".", 3)[3]
            part, w = rest.rsplit(".", 1)
            out[f"dpt.{'.'.join(pre)}.{names[part]}.{w}"] = v
    own = hf.state_dict()
    missing = [k for k in own if k.startswith("dpt.") and k not in out]
    if missing:
        raise ValueError(f"backbone -> DPT: no weights for {missing[:4]}")
    hf.load_state_dict({**own, **out})
    return hf


def build_segmenter(backbone, num_labels: int, head: str = "upernet", channels: int = 64) -> Segmenter:
    """A dense head on ``backbone`` (a backbone directory from ``mimkit export --format hf-backbone`` or the
    module): ``upernet`` (UperNet, with its auxiliary FCN head) or ``dpt``; ``channels`` sizes the head."""
    from ..interop.hf_backbone import load_hf_backbone

    if head not in HEADS:
        raise ValueError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
    bb = load_hf_backbone(backbone) if isinstance(backbone, (str, Path)) else backbone
    if head == "dpt":
        return Segmenter(_dpt_from_backbone(bb, num_labels, channels))
    from transformers import UperNetConfig, UperNetForSemanticSegmentation

    cfg = UperNetConfig(backbone_config=bb.config, num_labels=num_labels, hidden_size=channels,
                        auxiliary_channels=max(8, channels // 2), auxiliary_in_channels=None,
                        use_auxiliary_head=len(bb.config.out_indices) >= 3,  # it reads the third map
                        pool_scales=[1, 2, 3, 6], loss_ignore_index=IGNORE)
    hf = UperNetForSemanticSegmentation(cfg)
    hf.backbone.load_state_dict(bb.state_dict())
    return Segmenter(hf)


class SegmentModule(BudgetAware, L.LightningModule):
    """Trains a :class:`Segmenter`; logs ``train/loss`` and (validation) ``val/miou``."""

    def __init__(self, seg: Segmenter, num_labels: int, lr: float, layer_decay: float = 0.75,
                 weight_decay: float = 0.05, warmup_steps: int = 50, min_lr: float = 1e-6):
        super().__init__()
        self.seg, self.num_labels = seg, int(num_labels)
        self.lr, self.layer_decay, self.weight_decay = lr, layer_decay, weight_decay
        self.warmup, self.min_lr = int(warmup_steps), min_lr
        self.loss_history: list[float] = []
        self.confusion = torch.zeros(self.num_labels, self.num_labels, dtype=torch.long)

    def configure_optimizers(self):
        from timm.optim import param_groups_layer_decay

        groups = param_groups_layer_decay(self.seg, weight_decay=self.weight_decay, layer_decay=self.layer_decay,
                                          no_weight_decay_list=["cls_token", "mask_token", "position_embeddings"])
        for g in groups:
            g["lr"] = self.lr * g["lr_scale"]
        opt = torch.optim.AdamW(groups, lr=self.lr, betas=(0.9, 0.999))
        est = self.trainer.estimated_stepping_batches
        self.total_steps = 10**9 if not math.isfinite(est) else max(1, int(est))
        self.warmup_steps = min(self.total_steps, self.warmup)
        ratio = self.min_lr / self.lr if self.lr > 0 else 0.0
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(*self.schedule_position(s),
                                                                                min_ratio=ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def training_step(self, batch, batch_idx):
        x, y = batch
        flip = torch.rand(x.shape[0], device=x.device) < 0.5  # the same flip for an image and its labels
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        y = torch.where(flip[:, None, None], y.flip(-1), y)
        loss = self.seg(x, labels=y).loss
        if not torch.isfinite(loss.detach()):
            raise FloatingPointError(f"segmentation loss became {loss.item()} at step {self.global_step}; lower "
                                     "the learning rate (--blr)")
        self.loss_history.append(float(loss.detach()))
        self.log("train/loss", loss, prog_bar=True, batch_size=x.shape[0])
        return loss

    def on_validation_epoch_start(self) -> None:
        self.confusion.zero_()

    def validation_step(self, batch, batch_idx):
        x, y = batch
        pred = self.seg.logits(x).argmax(1)
        keep = y != IGNORE
        self.confusion += torch.bincount(y[keep] * self.num_labels + pred[keep],
                                         minlength=self.num_labels**2).reshape(self.num_labels, -1).cpu()

    def on_validation_epoch_end(self) -> None:
        self.log("val/miou", miou_from_confusion(self.confusion), prog_bar=True)


def miou_from_confusion(conf: torch.Tensor) -> float:
    inter = conf.diag().double()
    union = conf.sum(0).double() + conf.sum(1).double() - inter
    seen = union > 0
    return float((inter[seen] / union[seen]).mean()) if seen.any() else 0.0


@torch.no_grad()
def predict(seg: Segmenter, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Per-pixel classes (N, H, W) of normalised ``images``."""
    seg.eval()
    return torch.cat([seg.logits(images[i:i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)])


def iou_counts(pred: torch.Tensor, truth: torch.Tensor, num_labels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image intersections and unions (N, K) of every class (pixels labelled 255 ignored)."""
    keep = truth != IGNORE
    k = num_labels
    p = torch.where(keep, pred, k)  # an ignored pixel counts for no class
    t = torch.where(keep, truth, k)
    n = len(pred)
    oh_p = F.one_hot(p.reshape(n, -1), k + 1)[..., :k].sum(1)
    oh_t = F.one_hot(t.reshape(n, -1), k + 1)[..., :k].sum(1)
    inter = F.one_hot(torch.where(p == t, t, k).reshape(n, -1), k + 1)[..., :k].sum(1)
    return inter, oh_p + oh_t - inter


def finetune_segmentation(backbone, train, val, test, num_labels: int, *, minutes: float, head: str = "upernet",
                          channels: int = 64, batch_size: int = 32, blr: float = 1e-3, layer_decay: float = 0.75,
                          weight_decay: float = 0.05, seed: int = 0, progress: bool = True, mean=None, std=None,
                          eval_every_minutes: float | None = None, out_dir=None) -> dict:
    """Train a dense head on ``backbone`` for ``minutes`` (budget-true) on ``train`` = (uint8 images, labels);
    score mIoU on ``val`` during training (kept only as a record: no choice reads the test set) and read
    ``test`` once at the end. Returns the results with ``inter`` / ``union`` per test image (paired
    intervals), ``pred`` (test predictions) and the ``segmenter``."""
    from torch.utils.data import DataLoader, TensorDataset

    from ..train import budget

    L.seed_everything(seed, workers=True, verbose=False)
    xtr, ytr = train
    mean = float(xtr.float().mean() / 255) if mean is None else mean
    std = float(xtr.float().std() / 255) if std is None else std

    def norm(x):
        return (x.float() / 255 - mean) / std

    seg = build_segmenter(backbone, num_labels, head, channels)
    lr = blr * batch_size / 256
    module = SegmentModule(seg, num_labels, lr, layer_decay, weight_decay)
    bs = min(batch_size, len(xtr))
    loader = DataLoader(TensorDataset(norm(xtr), ytr), batch_size=bs, shuffle=True, drop_last=True)
    val_loader = DataLoader(TensorDataset(norm(val[0]), val[1]), batch_size=64) if val is not None else None
    t0, wall0 = budget.clock(), time.time()
    trainer = L.Trainer(max_epochs=-1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=progress, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[budget.BudgetSchedule(float(minutes), t0)],
                        limit_val_batches=1.0 if val_loader is not None else 0,
                        check_val_every_n_epoch=1, log_every_n_steps=10)
    seg.train()
    trainer.fit(module, loader, val_loader)
    fit_s = time.time() - wall0
    seg.eval()
    pred = predict(seg, norm(test[0]))
    inter, union = iou_counts(pred, test[1], num_labels)
    res = {"head": head, "channels": channels, "minutes_budget": minutes, "steps": len(module.loss_history),
           "batch_size": bs, "lr": lr, "layer_decay": layer_decay, "weight_decay": weight_decay, "seed": seed,
           "mean": mean, "std": std, "loss_first": module.loss_history[0] if module.loss_history else None,
           "loss_last": sum(module.loss_history[-20:]) / max(1, len(module.loss_history[-20:])),
           "val_miou": float(trainer.callback_metrics["val/miou"]) if "val/miou" in trainer.callback_metrics else None,
           "test_miou": miou_from_confusion(_confusion(pred, test[1], num_labels)),
           "fit_seconds": round(fit_s, 1), "minutes": round(fit_s / 60, 2),
           "train_images": len(xtr), "test_images": len(test[0])}
    if out_dir is not None:
        seg.hf.save_pretrained(Path(out_dir))
    return {**res, "inter": inter, "union": union, "pred": pred, "segmenter": seg}


#: The learning rates an equal-trial search tries for a dense head (:func:`tune_segmentation`), per arm.
SEGMENTATION_BLRS = (1e-3, 4e-3, 1.6e-2, 6.4e-2)


def tune_segmentation(backbone, train, val, num_labels: int, *, minutes: float, blrs=SEGMENTATION_BLRS,
                      done: dict | None = None, on_trial=None, layer_decay: float = 0.75, **kw) -> dict:
    """Choose a dense head's learning rate on a validation split: one budget-true trial of ``minutes`` per
    base lr in ``blrs`` (the same count for every backbone compared), trained on ``train`` and scored (mIoU)
    on ``val``, which takes the test set's place, so that no test image is read. ``done`` ({blr: trial}
    from an earlier run) is kept; ``on_trial(trial)`` follows each new trial. ``kw`` goes to
    :func:`finetune_segmentation` (head, seed, mean, std...). Returns ``{"chosen": {"blr", "val_miou"},
    "trials": [...]}``; the first of equal scores wins. (:func:`tune_segmentation_options` with one option.)"""
    only = {"name": "default", "backbone": lambda: backbone, "minutes": minutes, "layer_decay": layer_decay}
    got = tune_segmentation_options([only], train, val, num_labels, fraction=1.0, blrs=blrs, on_trial=on_trial,
                                    done={("default", b): t for b, t in (done or {}).items()}, **kw)
    return {"chosen": {k: got["chosen"][k] for k in ("blr", "val_miou")}, "trials": got["trials"]}


def tune_segmentation_options(options: list[dict], train, val, num_labels: int, *, fraction: float,
                              blrs=SEGMENTATION_BLRS, done: dict | None = None, on_trial=None, **kw) -> dict:
    """Choose a dense head's learning rate *and* one of an arm's ``options`` on a validation split, with
    ``len(blrs) + len(options) - 1`` trials (the same count for every arm with as many options): first every
    base lr on ``options[0]`` (the default, as :func:`tune_segmentation`), then each other option at the lr
    chosen there. An option is ``{"name", "backbone": a callable that builds its backbone (called only when
    one of its trials runs), "minutes": the head's budget under it, "layer_decay"}``; each trial trains
    ``fraction`` of its option's minutes on ``train`` and is scored (mIoU) on ``val``. ``done`` (``{(name,
    blr): trial}``) is kept; ``on_trial(trial)`` follows each new trial. Returns ``{"chosen": {"option",
    "blr", "val_miou"}, "trials": [...]}``; the first of equal scores wins (the default option, then the
    smaller lr)."""
    if not options:
        raise ValueError("tune_segmentation_options needs at least one option")
    by_name, built = {o["name"]: o for o in options}, {}
    if len(by_name) != len(options):
        raise ValueError(f"option names must differ, got {[o['name'] for o in options]}")

    def run(key, _):
        name, blr = key
        opt = by_name[name]
        if name not in built:
            built[name] = opt["backbone"]()
        minutes = fraction * opt["minutes"]
        r = finetune_segmentation(built[name], train, None, val, num_labels, minutes=minutes, blr=blr,
                                  layer_decay=opt["layer_decay"], **kw)
        return {"option": name, "blr": blr, "val_miou": round(r["test_miou"], 4), "steps": r["steps"],
                "minutes": r["minutes"], "minutes_budget": minutes}

    done = {(str(k[0]), float(k[1])): {"option": str(k[0]), **v} for k, v in (done or {}).items()}
    first, trials = best_of_trials((((options[0]["name"], float(b)), None) for b in blrs), run, "val_miou",
                                   done=done, on_trial=on_trial)
    rest = [((o["name"], first["blr"]), None) for o in options[1:]]
    best, more = best_of_trials(rest, run, "val_miou", done=done, on_trial=on_trial) if rest else (first, [])
    best = first if first["val_miou"] >= best["val_miou"] else best
    return {"chosen": {"option": best["option"], "blr": best["blr"], "val_miou": best["val_miou"]},
            "trials": trials + more}


def _confusion(pred, truth, k: int) -> torch.Tensor:
    keep = truth != IGNORE
    return torch.bincount(truth[keep] * k + pred[keep], minlength=k * k).reshape(k, k)


def plot_segmentation(images: torch.Tensor, truth: torch.Tensor, preds: dict, path, num_labels: int) -> Path:
    """A picture: each row an image, its true label map and each model's prediction (class 0 black)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    colours = ListedColormap([(0, 0, 0)] + [plt.get_cmap("tab10")(i % 10) for i in range(max(1, num_labels - 1))])
    cols = 2 + len(preds)
    fig, axes = plt.subplots(len(images), cols, figsize=(1.6 * cols, 1.6 * len(images)), squeeze=False)
    for r, x in enumerate(images):
        panels = [("image", x.float().mean(0), "gray", None), ("truth", truth[r], colours, num_labels - 1)]
        panels += [(name, p[r], colours, num_labels - 1) for name, p in preds.items()]
        for ax, (title, im, cmap, vmax) in zip(axes[r], panels):
            ax.imshow(im.numpy(), cmap=cmap, vmin=0, vmax=vmax, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
