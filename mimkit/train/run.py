"""``run_pretrain(cfg)``: build data, model and Lightning trainer from a config dict and train.

Multi-process training is Lightning's: ``trainer.strategy=ddp`` (or ``fsdp``) with
``trainer.devices`` / ``trainer.num_nodes``, started by ``torchrun``, SLURM ``srun``, or by
Lightning itself (it re-launches the command once per extra local device). The training data
order (``mimkit.train.loader``) is rank-aware and resumable, so Lightning's own sampler
replacement is switched off."""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch
import yaml

from .config import load_config, model_kwargs, validate


def _device_type(trainer) -> str:
    root = getattr(trainer.strategy, "root_device", None)
    return root.type if root is not None else "cpu"


def _default_precision() -> str:
    return "bf16-mixed" if torch.cuda.is_available() else "32-true"


def _check_compat(model, data_cfg: dict) -> None:
    size, chans = int(data_cfg["img_size"]), int(data_cfg.get("in_chans", 1))
    if chans != model.in_chans:
        raise ValueError(f"data.in_chans={chans} but the model takes {model.in_chans} channel(s); "
                         f"set model.in_chans={chans} or data.in_chans={model.in_chans}")
    if size % model.patch_size:
        raise ValueError(f"data.img_size={size} is not divisible by the model's patch size {model.patch_size}; "
                         f"use a multiple of {model.patch_size}")


def run_dir_for(cfg: dict, recipe: str) -> Path:
    """``run.dir``, else ``run.root/<recipe>-<tag>``; the tag is the same on every process of a
    multi-process job (SLURM job id, torchrun run id, or the directory rank 0 hands to the processes
    Lightning launches), else a timestamp."""
    if cfg["run"].get("dir"):
        return Path(cfg["run"]["dir"])
    if os.environ.get("MIMKIT_RUN_DIR"):
        return Path(os.environ["MIMKIT_RUN_DIR"])
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "")
    if os.environ.get("SLURM_JOB_ID"):
        tag = f"slurm{os.environ['SLURM_JOB_ID']}"
    elif run_id and run_id != "none":
        tag = run_id
    else:
        tag = time.strftime("%Y%m%d-%H%M%S")
    return Path(cfg["run"]["root"]) / f"{recipe}-{tag}"


def resolve_resume(path) -> Path:
    """``--resume`` accepts a checkpoint file or a run directory (-> its checkpoints/last.ckpt)."""
    p = Path(path)
    if p.is_dir():
        for cand in (p / "checkpoints" / "last.ckpt", p / "last.ckpt"):
            if cand.exists():
                return cand
        raise FileNotFoundError(f"{p} is a directory without checkpoints/last.ckpt; pass a .ckpt file")
    if not p.exists():
        raise FileNotFoundError(f"checkpoint {p} does not exist")
    return p


def config_from_checkpoint(ckpt_path, overrides=None) -> dict:
    """The resolved config of the run that wrote ``ckpt_path`` (run_dir/config.yaml) + overrides."""
    ckpt_path = resolve_resume(ckpt_path)
    run_dir = ckpt_path.resolve().parent.parent
    cfg_file = run_dir / "config.yaml"
    if not cfg_file.exists():
        raise FileNotFoundError(f"{cfg_file} not found: --resume needs a checkpoint inside a mimkit run directory "
                                "(run_dir/checkpoints/*.ckpt)")
    from .config import fill_legacy_defaults, parse_overrides

    saved = yaml.safe_load(cfg_file.read_text()) or {}
    # keys the run did not record keep what its code did (unless overridden now): exact resume
    given = parse_overrides(overrides)
    cfg = fill_legacy_defaults({s: {**(saved.get(s) or {}), **(given.get(s) or {})} for s in set(saved) | set(given)},
                               load_config(cfg_file, overrides))
    cfg["run"]["dir"] = str(run_dir)
    return cfg


def block_classes(model: torch.nn.Module) -> set[type]:
    """The transformer-block classes in ``model`` (timm ViT/BEiT blocks, Swin blocks, plus any class
    a model lists in ``fsdp_wrap_classes``): FSDP's wrapping and activation-checkpointing units."""
    from timm.models.beit import Block as BeitBlock
    from timm.models.swin_transformer import SwinTransformerBlock
    from timm.models.vision_transformer import Block as ViTBlock

    kinds = (ViTBlock, BeitBlock, SwinTransformerBlock, *getattr(model, "fsdp_wrap_classes", ()))
    return {type(m) for m in model.modules() if isinstance(m, kinds)}


def build_strategy(cfg: dict, model: torch.nn.Module):
    """``trainer.strategy`` as Lightning takes it: ``fsdp`` becomes an ``FSDPStrategy`` that shards
    every transformer block (its own FSDP unit), full state dicts in checkpoints (gathered on rank
    0, written by mimkit's atomic writer), optional activation checkpointing per block."""
    t = cfg["trainer"]
    name = t["strategy"]
    if isinstance(name, str) and name.lower() in ("fsdp", "fsdp_full_shard"):
        from lightning.pytorch.strategies import FSDPStrategy

        blocks = block_classes(model)
        if not blocks:
            raise ValueError("trainer.strategy=fsdp found no transformer blocks to wrap in this model")
        return FSDPStrategy(auto_wrap_policy=blocks, sharding_strategy=str(t.get("fsdp_sharding") or "FULL_SHARD"),
                            activation_checkpointing_policy=blocks if t.get("activation_checkpointing") else None,
                            state_dict_type="full")
    return name


def is_fsdp(strategy) -> bool:
    return "fsdp" in (strategy if isinstance(strategy, str) else type(strategy).__name__).lower()


def progress_bar():
    """Rich bar in a terminal; a plain tqdm bar (readable in log files) otherwise. The bar reads the
    logged loss only every few steps, so it adds no per-step host synchronisation on a GPU."""
    import sys

    from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

    if sys.stdout.isatty():
        return RichProgressBar(refresh_rate=10)
    return TQDMProgressBar(refresh_rate=50)


def build_trainer(cfg: dict, run_dir: Path, extra_callbacks=(), strategy=None):
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from .callbacks import AtomicCheckpointIO, FinalArtifacts

    t, r = cfg["trainer"], cfg["run"]
    ckpt_dir = run_dir / "checkpoints"
    # Every file below goes through AtomicCheckpointIO (temp file + fsync + rename): periodic files,
    # last.ckpt (a full copy, never a link: save_last=True, not "link") and the step checkpoints.
    callbacks = [
        ModelCheckpoint(dirpath=ckpt_dir, filename="epoch{epoch:03d}-step{step:07d}", auto_insert_metric_name=False,
                        every_n_epochs=int(r["checkpoint_every_n_epochs"] or 1), save_top_k=int(r["keep_periodic"]),
                        # keep the newest periodic checkpoints, or the best by validation loss
                        monitor=r.get("checkpoint_monitor") or "step",
                        mode="min" if r.get("checkpoint_monitor") == "val/loss" else "max",
                        save_last=True, enable_version_counter=False),
        FinalArtifacts(run_dir),
        *extra_callbacks,
    ]
    if t["enable_progress_bar"]:
        callbacks.append(progress_bar())
    if r.get("checkpoint_every_n_steps"):
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, filename="last", every_n_train_steps=int(r["checkpoint_every_n_steps"]),
                                         save_top_k=1, enable_version_counter=False))
    loggers = [CSVLogger(str(run_dir), name="logs", version=""),
               TensorBoardLogger(str(run_dir), name="tensorboard", version="")]
    budget = bool(t.get("max_minutes"))  # the budget callback sets max_steps once it has timed the steps
    kwargs = dict(
        default_root_dir=str(run_dir), max_epochs=-1 if budget else int(t["max_epochs"]),
        max_steps=-1 if budget else int(t["max_steps"]),
        accelerator=t["accelerator"], devices=t["devices"], num_nodes=int(t["num_nodes"]),
        strategy=strategy if strategy is not None else t["strategy"],
        precision=t["precision"] or _default_precision(), accumulate_grad_batches=int(t["accumulate_grad_batches"]),
        gradient_clip_val=t["gradient_clip_val"], log_every_n_steps=int(t["log_every_n_steps"]),
        deterministic=bool(t["deterministic"]), callbacks=callbacks, logger=loggers,
        plugins=[AtomicCheckpointIO()], enable_progress_bar=bool(t["enable_progress_bar"]),
        enable_model_summary=False, use_distributed_sampler=False,  # mimkit's loader shards by rank itself
        num_sanity_val_steps=0,  # the validation set (data.val_*) is checked when it is built
    )
    if t.get("limit_train_batches") is not None:
        kwargs["limit_train_batches"] = t["limit_train_batches"]
    if t.get("max_time") is not None:
        kwargs["max_time"] = t["max_time"]
    return L.Trainer(**kwargs)


def optimizer_steps_per_epoch(trainer, num_samples: int, batch_size: int) -> int:
    """Optimiser steps in one epoch (full global batches, ``limit_train_batches``, accumulation)."""
    import math

    per_epoch = num_samples // (batch_size * trainer.world_size)
    limit = trainer.limit_train_batches
    if isinstance(limit, int):
        per_epoch = min(per_epoch, limit)
    elif limit is not None:
        per_epoch = int(per_epoch * float(limit))
    return max(1, math.ceil(per_epoch / trainer.accumulate_grad_batches))


def stepping_batches(trainer, num_samples: int, batch_size: int) -> int | None:
    """Optimiser steps of the whole run, as Lightning's ``estimated_stepping_batches`` computes them,
    from the dataset size (without loading the dataloader early)."""
    if trainer.max_epochs in (None, -1):
        return trainer.max_steps if trainer.max_steps != -1 else None
    total = optimizer_steps_per_epoch(trainer, num_samples, batch_size) * max(trainer.max_epochs, 1)
    return min(total, trainer.max_steps) if trainer.max_steps != -1 else total


def _data_module(dataset, batch_size: int, num_workers: int, seed: int, collate_fn=None, val_dataset=None,
                 shard_window: int | None = None):
    """The training loader (and, with ``val_dataset``, the validation loader) for Lightning.
    Shard datasets (``mimkit.data.shards.ShardImages``) are shuffled within windows of ``shard_window``
    shards; validation images are split between ranks as ``rank::world_size`` (every image once, in
    a fixed order: the validation loss is a sum over all of them, see ``MIMModule.validation_step``)."""
    import lightning as L

    from .loader import ResumableLoader, ResumableSampler

    order_fn = None
    if hasattr(dataset, "shard_bounds"):
        from ..data.shards import ShardWindowOrder

        order_fn = ShardWindowOrder(dataset.shard_bounds(), shard_window)

    class PretrainData(L.LightningDataModule):
        """Builds the loader once the trainer knows this process's rank and the world size."""

        def train_dataloader(self):
            t = self.trainer
            sampler = ResumableSampler(len(dataset), batch_size, seed, shuffle=True,
                                       rank=t.global_rank, world_size=t.world_size, order_fn=order_fn)
            return ResumableLoader(dataset, sampler, num_workers=num_workers, collate_fn=collate_fn,
                                   pin_memory=torch.cuda.is_available(), persistent_workers=num_workers > 0)

    if val_dataset is not None:
        def val_dataloader(self):
            from torch.utils.data import DataLoader

            t = self.trainer
            return DataLoader(val_dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                              sampler=range(t.global_rank, len(val_dataset), t.world_size),
                              pin_memory=torch.cuda.is_available(), persistent_workers=num_workers > 0)

        PretrainData.val_dataloader = val_dataloader
    return PretrainData()


def _slurm_requeue_checkpoint(run_dir: Path) -> str | None:
    """Newest ``hpc_ckpt_N.ckpt`` Lightning wrote in ``run_dir`` before a SLURM requeue (same job id,
    so the same run directory), when running under SLURM."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    if not SLURMEnvironment.detect():
        return None
    found = sorted(run_dir.glob("hpc_ckpt_*.ckpt"), key=lambda p: int(p.stem.rsplit("_", 1)[-1]) if
                   p.stem.rsplit("_", 1)[-1].isdigit() else -1)
    if found:
        print(f"mimkit: SLURM requeue: resuming from {found[-1]}", flush=True)
    return str(found[-1]) if found else None


def _device_decoded_data(d: dict, module, seed: int):
    """``data.decode_on_device``: workers read file bytes; the module decodes and augments on its device."""
    from ..data import default_stats
    from ..data.device import DeviceAugment, EncodedImageFolder, collate_encoded

    if d["name"] in ("webdataset", "hf_dataset"):
        from ..data import limit_rows, source_dataset

        ds = limit_rows(source_dataset(d, "train", encoded=True), d.get("limit"))
    elif d["name"] != "image_folder":
        raise ValueError("data.decode_on_device works with data.name=image_folder, webdataset or hf_dataset "
                         f"(encoded image files); got data.name={d['name']}")
    else:
        root = Path(d.get("root") or "")
        ds = EncodedImageFolder(root / "train" if (root / "train").is_dir() else root)
    mean, std = default_stats(d["name"], int(d["in_chans"]))
    module.device_augment = DeviceAugment(int(d["img_size"]), d.get("mean") or mean, d.get("std") or std,
                                          int(d["in_chans"]), d.get("crop_scale", (0.2, 1.0)), hflip=d.get("hflip", True),
                                          on_error=d.get("on_error", "skip"), seed=seed)
    return ds, collate_encoded


def _quiet_known_warnings() -> None:
    """Silence library notices that say nothing about the user's run."""
    import warnings

    for msg in (r".*overridden `on_before_batch_transfer`.*", r".*isinstance\(treespec, LeafSpec\).*",
                r".*litlogger.*", r".*`validation_step` but have no `val_dataloader`.*",
                r".*module\(s\) in eval mode at the start of training.*"):  # frozen teachers / tokenizers
        warnings.filterwarnings("ignore", message=msg)
    os.environ.setdefault("LIGHTNING_DISABLE_TIPS", "1")
    import logging

    for handler in logging.getLogger("lightning.pytorch").handlers:  # Lightning's advert, logged as info
        if not any(isinstance(f, _NoTips) for f in handler.filters):
            handler.addFilter(_NoTips())


class _NoTips:
    def filter(self, record) -> bool:
        return "Tip:" not in str(record.msg)


def resume_point(run_dir: Path, resume) -> tuple[str | None, int]:
    """The checkpoint to continue from (``--resume``, or Lightning's SLURM requeue checkpoint in
    ``run_dir``) and its step; checked in a second, before any data is loaded (tensors are mapped,
    not read)."""
    from ..files import check_checkpoint_file, check_training_checkpoint, read_torch_checkpoint

    if resume is None:  # a SLURM job requeued after Lightning's SIGUSR1 checkpoint continues from it
        resume = _slurm_requeue_checkpoint(run_dir)
    if resume is None:
        return None, 0
    resume = str(resolve_resume(resume))
    check_checkpoint_file(resume)
    return resume, int(check_training_checkpoint(read_torch_checkpoint(resume, mmap=True), resume)["global_step"])


def training_data(d: dict, module, seed: int):
    """(dataset, collate_fn) for pretraining: the configured dataset with the MAE augmentation, or
    encoded files decoded on the device (``data.decode_on_device``)."""
    from ..data import build_dataset

    if getattr(module.model, "multi_crop", None):  # a multi-view method (iBOT): the data layer makes its crops
        from ..data.views import multi_crop_dataset

        ds, collate_fn = multi_crop_dataset(d, module.model.multi_crop), None
    elif d.get("decode_on_device"):
        ds, collate_fn = _device_decoded_data(d, module, seed)
    else:
        ds, collate_fn = build_dataset(d, "train", train_transform=True), None
    if d.get("val_fraction"):  # the held-out images (validation_data) are not trained on
        from ..data import held_out_rows, take_rows

        ds = take_rows(ds, held_out_rows(len(ds), d["val_fraction"], seed)[0])
    if len(ds) < int(d["batch_size"]):
        raise ValueError(f"the dataset has {len(ds)} images, fewer than data.batch_size={d['batch_size']}; "
                         "lower the batch size or add images")
    return ds, collate_fn


def validation_data(d: dict, seed: int):
    """The held-out images for the validation loss (``data.val_root`` / ``val_urls`` / ``val_split`` /
    ``val_fraction``), decoded on the CPU with the evaluation transform; None without one."""
    from ..data import build_val_dataset

    ds = build_val_dataset(d, seed)
    if ds is not None and len(ds) == 0:
        raise ValueError("the validation set is empty; check data.val_root / data.val_urls / data.val_split")
    return ds


def run_callbacks(cfg: dict, model, run_dir: Path, strategy, extra=()) -> list:
    """Throughput logging, the caller's callbacks, and reconstruction pictures of fixed images for
    models that reconstruct pixels (not under FSDP: the full model is not on one process)."""
    from ..data import build_dataset, default_stats
    from .callbacks import ReconstructionGrid, Throughput

    d = cfg["data"]
    callbacks = [Throughput(every=int(cfg["trainer"]["log_every_n_steps"])), *extra]
    n_rec = int(cfg["run"].get("recon_images") or 0)
    if n_rec and hasattr(model, "reconstruct") and not is_fsdp(strategy):
        eval_ds = build_dataset(d, "train", train_transform=False)
        imgs = torch.stack([eval_ds[i][0] for i in range(min(n_rec, len(eval_ds)))])
        mean, std = default_stats(d["name"], int(d["in_chans"]))
        callbacks.append(ReconstructionGrid(imgs, run_dir / "reconstructions", d.get("mean") or mean,
                                            d.get("std") or std, int(cfg["run"]["recon_every_n_epochs"] or 1)))
    return callbacks


def prepare_run_dir(cfg: dict, run_dir: Path, resume_step: int | None) -> None:
    """On rank 0: keep the loss history logged before a resumed checkpoint, write the resolved config."""
    if resume_step is not None:
        from .callbacks import archive_metrics

        archive_metrics(run_dir / "logs", resume_step)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    print(f"mimkit: run directory {run_dir}", flush=True)


def run_pretrain(cfg: dict, resume: str | None = None, callbacks=(), trust_checkpoint: bool = False) -> Path:
    """Train the model of ``cfg`` (see ``mimkit.train.config.DEFAULTS``); return the run directory.
    ``callbacks``: extra Lightning callbacks (e.g. :class:`~mimkit.train.callbacks.Throughput`).
    ``resume``: a checkpoint (or run directory) to continue from, exactly where it stopped.
    ``trust_checkpoint``: unpickle ``resume`` and tokenizer files fully (only files you trust)."""
    from ..files import is_trusted, trusted_checkpoints

    if trust_checkpoint and not is_trusted():
        with trusted_checkpoints():
            return run_pretrain(cfg, resume, callbacks)
    import lightning as L
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from . import budget
    from .module import MIMModule

    t_origin = budget.clock()  # a budget (trainer.max_minutes) counts from here: set-up and compiling included
    validate(cfg)
    _quiet_known_warnings()
    recipe, kw = model_kwargs(cfg)
    run_dir = run_dir_for(cfg, recipe)
    resume, resume_step = resume_point(run_dir, resume)
    seed = int(cfg["run"]["seed"])
    L.seed_everything(seed, workers=True, verbose=False)
    d = cfg["data"]
    module = MIMModule({"recipe": recipe, **kw}, cfg["optim"], int(d["batch_size"]), seed=seed)
    module.tune_cpu_malloc = bool(cfg["trainer"].get("tune_cpu_malloc", True))
    _check_compat(module.model, d)
    if cfg["run"].get("init") and resume is None:  # a resumed run's weights are in its checkpoint
        from .init import init_encoder

        done = init_encoder(module.model, cfg["run"]["init"], trust_checkpoint)
        print(f"mimkit: encoder initialised from {done['source']}"
              + (f" (resampled: {', '.join(done['resized'])})" if done["resized"] else ""), flush=True)
    strategy = build_strategy(cfg, module.model)
    train_ds, collate_fn = training_data(d, module, seed)
    val_ds = validation_data(d, seed)
    callbacks = run_callbacks(cfg, module.model, run_dir, strategy, callbacks)
    minutes = cfg["trainer"].get("max_minutes")
    if minutes:  # a budget that is a whole schedule (mimkit.train.budget)
        callbacks.append(budget.BudgetSchedule(float(minutes), t_origin, run_dir))
    try:
        trainer = build_trainer(cfg, run_dir, callbacks, strategy)
    except MisconfigurationException as e:
        raise ValueError(f"trainer settings: {e}") from None
    if len(train_ds) < int(d["batch_size"]) * trainer.world_size:
        raise ValueError(f"the dataset has {len(train_ds)} images, fewer than one global batch (data.batch_size="
                         f"{d['batch_size']} x {trainer.world_size} processes); lower the batch size or add images")
    shared_dir = trainer.world_size > 1 and not cfg["run"].get("dir") and "MIMKIT_RUN_DIR" not in os.environ
    if shared_dir:
        os.environ["MIMKIT_RUN_DIR"] = str(run_dir)  # processes Lightning starts itself inherit it
    if trainer.is_global_zero:
        prepare_run_dir(cfg, run_dir, resume_step if resume is not None else None)
    data = _data_module(train_ds, int(d["batch_size"]), int(d["num_workers"]), seed, collate_fn,
                        val_ds, d.get("shard_window"))
    module.total_steps_hint = stepping_batches(trainer, len(train_ds), int(d["batch_size"]))
    module.steps_per_epoch_hint = optimizer_steps_per_epoch(trainer, len(train_ds), int(d["batch_size"]))
    from .speed import COMPILE_MIN_MINUTES, COMPILE_MIN_STEPS, should_compile

    long_enough = module.total_steps_hint
    if minutes:  # open-ended until the budget callback fixes the steps; compile when the budget is long
        module.total_steps_hint = 10**9
        long_enough = COMPILE_MIN_STEPS if float(minutes) >= COMPILE_MIN_MINUTES else 0
    # a model may opt out (compile_training = False) or name the parts to compile (iBOT: its encoders' token
    # passes; its loss updates the teacher's centres in place and its masks change size, so it stays eager)
    if should_compile(cfg["trainer"].get("compile"), long_enough, _device_type(trainer)) and \
            getattr(module.model, "compile_training", True):
        module.compile_model(_device_type(trainer))
    try:
        trainer.fit(module, datamodule=data, ckpt_path=resume)
    except MisconfigurationException as e:
        raise ValueError(f"trainer settings: {e}") from None
    finally:
        module.uncompile()
        if shared_dir:
            os.environ.pop("MIMKIT_RUN_DIR", None)
    if trainer.is_global_zero:
        print(f"mimkit: finished; run directory {run_dir} (model/, checkpoints/, reconstructions/, loss_curve.png, "
              f"logs/metrics.csv, tensorboard/)", flush=True)
    return run_dir
