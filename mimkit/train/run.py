"""``run_pretrain(cfg)``: build data, model and Lightning trainer from a config dict and train."""
from __future__ import annotations

import time
from pathlib import Path

import torch
import yaml

from .config import load_config, model_kwargs


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
    if cfg["run"].get("dir"):
        return Path(cfg["run"]["dir"])
    return Path(cfg["run"]["root"]) / f"{recipe}-{time.strftime('%Y%m%d-%H%M%S')}"


def config_from_checkpoint(ckpt_path, overrides=None) -> dict:
    """The resolved config of the run that wrote ``ckpt_path`` (run_dir/config.yaml) + overrides."""
    ckpt_path = Path(ckpt_path)
    if not ckpt_path.exists():
        raise FileNotFoundError(f"checkpoint {ckpt_path} does not exist")
    run_dir = ckpt_path.resolve().parent.parent
    cfg_file = run_dir / "config.yaml"
    if not cfg_file.exists():
        raise FileNotFoundError(f"{cfg_file} not found: --resume needs a checkpoint inside a mimkit run directory "
                                "(run_dir/checkpoints/*.ckpt)")
    cfg = load_config(cfg_file, overrides)
    cfg["run"]["dir"] = str(run_dir)
    return cfg


def build_trainer(cfg: dict, run_dir: Path, extra_callbacks=()):
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from .callbacks import AtomicCheckpointIO, FinalArtifacts

    t, r = cfg["trainer"], cfg["run"]
    ckpt_dir = run_dir / "checkpoints"
    callbacks = [
        ModelCheckpoint(dirpath=ckpt_dir, filename="epoch{epoch:03d}-step{step:07d}", auto_insert_metric_name=False,
                        every_n_epochs=int(r["checkpoint_every_n_epochs"] or 1), save_top_k=int(r["keep_periodic"]),
                        monitor="step", mode="max", save_last=True),
        FinalArtifacts(run_dir),
        *extra_callbacks,
    ]
    if r.get("checkpoint_every_n_steps"):
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, filename="last", every_n_train_steps=int(r["checkpoint_every_n_steps"]),
                                         save_top_k=1, enable_version_counter=False))
    loggers = [CSVLogger(str(run_dir), name="logs", version=""),
               TensorBoardLogger(str(run_dir), name="tensorboard", version="")]
    kwargs = dict(
        default_root_dir=str(run_dir), max_epochs=int(t["max_epochs"]), max_steps=int(t["max_steps"]),
        accelerator=t["accelerator"], devices=t["devices"], num_nodes=int(t["num_nodes"]), strategy=t["strategy"],
        precision=t["precision"] or _default_precision(), accumulate_grad_batches=int(t["accumulate_grad_batches"]),
        gradient_clip_val=t["gradient_clip_val"], log_every_n_steps=int(t["log_every_n_steps"]),
        deterministic=bool(t["deterministic"]), callbacks=callbacks, logger=loggers,
        plugins=[AtomicCheckpointIO()], enable_progress_bar=bool(t["enable_progress_bar"]),
        enable_model_summary=False,
    )
    if t.get("limit_train_batches") is not None:
        kwargs["limit_train_batches"] = t["limit_train_batches"]
    return L.Trainer(**kwargs)


def run_pretrain(cfg: dict, resume: str | None = None) -> Path:
    """Train the model of ``cfg`` (see ``mimkit.train.config.DEFAULTS``); return the run directory."""
    import lightning as L
    from torch.utils.data import DataLoader

    from ..data import build_dataset, default_stats
    from .callbacks import ReconstructionGrid
    from .module import MIMModule

    L.seed_everything(int(cfg["run"]["seed"]), workers=True, verbose=False)
    recipe, kw = model_kwargs(cfg)
    model_config = {"recipe": recipe, **kw}
    d = cfg["data"]
    module = MIMModule(model_config, cfg["optim"], int(d["batch_size"]))
    _check_compat(module.model, d)
    run_dir = run_dir_for(cfg, recipe)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    print(f"mimkit: run directory {run_dir}", flush=True)

    train_ds = build_dataset(d, "train", train_transform=True)
    if len(train_ds) < int(d["batch_size"]):
        raise ValueError(f"the dataset has {len(train_ds)} images, fewer than data.batch_size={d['batch_size']}; "
                         "lower the batch size or add images")
    loader = DataLoader(train_ds, batch_size=int(d["batch_size"]), shuffle=True, drop_last=True,
                        num_workers=int(d["num_workers"]), pin_memory=torch.cuda.is_available(),
                        persistent_workers=int(d["num_workers"]) > 0)
    callbacks = []
    n_rec = int(cfg["run"].get("recon_images") or 0)
    if n_rec and hasattr(module.model, "reconstruct"):
        eval_ds = build_dataset(d, "train", train_transform=False)
        imgs = torch.stack([eval_ds[i][0] for i in range(min(n_rec, len(eval_ds)))])
        mean, std = default_stats(d["name"], int(d["in_chans"]))
        callbacks.append(ReconstructionGrid(imgs, run_dir / "reconstructions", d.get("mean") or mean,
                                            d.get("std") or std, int(cfg["run"]["recon_every_n_epochs"] or 1)))
    if cfg["trainer"].get("compile"):
        module.compile_model()
    trainer = build_trainer(cfg, run_dir, callbacks)
    trainer.fit(module, loader, ckpt_path=resume)
    print(f"mimkit: finished; run directory {run_dir} (model/, checkpoints/, reconstructions/, loss_curve.png, "
          f"logs/metrics.csv, tensorboard/)", flush=True)
    return run_dir
