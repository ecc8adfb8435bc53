"""The training entry: config in, fitted model, checkpoints and metrics out."""
import logging
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from .checkpoint import AtomicCheckpointIO
from .errors import CaptchaError
from .hardware import training_precision
from .io import atomic_write_text

log = logging.getLogger(__name__)


def check_config(cfg: DictConfig) -> None:
    """Catch the common mistakes in one line each, before any data is read."""
    if cfg.task.name not in ("task1", "task2", "task3"):
        raise CaptchaError(f"task.name={cfg.task.name!r}: choose task1, task2 or task3")
    accelerator = cfg.trainer.accelerator
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise CaptchaError("trainer.accelerator=gpu, but no CUDA GPU is visible: use trainer=cpu (or trainer=default)")
    if cfg.data.batch_size is None or cfg.data.batch_size < 1:
        raise CaptchaError(f"batch size {cfg.data.batch_size}: must be at least 1 (task.batch_size=...)")
    if cfg.data.source != "synthetic":
        root = None if OmegaConf.is_missing(cfg.data, "root") else cfg.data.root
        if not root:
            raise CaptchaError(f"data={cfg.data.source} needs the folder: add data.root=PATH")
        if not Path(root).is_dir():
            raise CaptchaError(f"data.root={root}: no such folder; point it at the folder holding annotations.csv")


def build(node, **kwargs):
    """instantiate(), but a CaptchaError raised by the target comes out as itself, not wrapped in
    Hydra's InstantiationException (which the entry points would print as a traceback)."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, CaptchaError):
            raise e.__cause__ from None
        raise


def resume_config(cfg: DictConfig) -> DictConfig:
    """The saved config of run folder `cfg.resume`, set to continue from its last checkpoint."""
    run = Path(cfg.resume)
    saved, last = run / ".hydra" / "config.yaml", run / "checkpoints" / "last.ckpt"
    if not saved.is_file() or not last.is_file():
        raise CaptchaError(f"resume={run}: expected {saved} and {last}")
    for tmp in last.parent.glob(".*.tmp"):  # a save cut short by the interruption; the previous file is intact
        tmp.unlink()
    old = OmegaConf.load(saved)
    with open_dict(old):
        old.output_dir, old.ckpt_path, old.resume = str(run), str(last), None
    return old


def train(cfg: DictConfig) -> float:
    """Fits the model, tests the best checkpoint, and returns the best val/exact_match
    (the value a Hydra sweeper optimises)."""
    if cfg.get("resume"):
        cfg = resume_config(cfg)
    check_config(cfg)
    # the config with every interpolation resolved (Hydra's .hydra/config.yaml keeps them)
    atomic_write_text(Path(cfg.output_dir) / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = build(cfg.data)
    optimizer = build(cfg.optimizer)
    scheduler = build(cfg.scheduler) if cfg.get("scheduler") else None
    model = build(cfg.model, optimizer=optimizer, scheduler=scheduler, _convert_="all")
    if cfg.get("compile"):
        model.net.compile()  # in place: the checkpoint's keys stay those of the plain network
    callbacks = [build(c) for c in cfg.callbacks.values()]
    loggers = [build(c) for c in cfg.logger.values()]
    precision = training_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    trainer = build(cfg.trainer, precision=precision, callbacks=callbacks, logger=loggers,
                    plugins=[AtomicCheckpointIO()])
    log.info(f"training {cfg.task.name} on {trainer.accelerator.__class__.__name__} with precision {precision}")
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))

    checkpoint = trainer.checkpoint_callback
    best = checkpoint.best_model_score if checkpoint is not None else None
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if cfg.get("test") and not cfg.trainer.get("fast_dev_run"):
        tested = trainer.test(model, datamodule=datamodule, ckpt_path=checkpoint.best_model_path if best is not None else None,
                              verbose=False)
        metrics.update({k: float(v) for k, v in tested[0].items()})
    if trainer.is_global_zero:  # one report, also under DDP
        print("final metrics: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())))
        if checkpoint is not None and checkpoint.best_model_path:
            print(f"best checkpoint: {checkpoint.best_model_path}")
    return float(best) if best is not None else metrics.get("val/exact_match", 0.0)
