"""The training entry: config in, fitted model, checkpoints and metrics out."""
import logging
import re
from collections import Counter
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from .checkpoint import AtomicCheckpointIO
from .errors import CaptchaError
from .files import atomic_write_text
from .folders import labelled_items
from .hardware import training_precision
from .images import image_size
from .tasks import from_config, infer_task

log = logging.getLogger(__name__)


def resolve_task(cfg: DictConfig) -> None:
    """task=auto: fills the task's unset values from the labelled images in data.root, says so in
    one line, and writes them into the config (so the run's config.yaml and the checkpoint hold
    them)."""
    if OmegaConf.is_missing(cfg.data, "root"):
        raise CaptchaError("data=folder and data=mixed read a labelled folder: add data.root=PATH")
    if cfg.task.name != "auto":
        return
    root = cfg.data.get("root")
    if not root:
        raise CaptchaError("task=auto infers the task from labelled images: add data=folder (or data=mixed) "
                           "data.root=DIR")
    items, layout = labelled_items(root)
    sizes = Counter(image_size(path) for path, _, _ in items)
    given = {k: v for k, v in OmegaConf.to_container(cfg.task).items() if k != "name"}
    name = re.sub(r"[^\w.-]", "_", Path(root).resolve().name) or "captcha"
    task, line = infer_task([label for _, label, _ in items], sizes, name, given)
    print(f"{line} ({layout} layout)")
    with open_dict(cfg):
        cfg.task = task.config()


def check_config(cfg: DictConfig) -> None:
    """Catch the common mistakes in one line each, before any data is read."""
    from_config(cfg.task)  # a task with every value set and valid
    accelerator = cfg.trainer.accelerator
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise CaptchaError("trainer.accelerator=gpu, but no CUDA GPU is visible: use trainer=cpu (or trainer=default)")
    if cfg.data.batch_size is None or cfg.data.batch_size < 1:
        raise CaptchaError(f"data.batch_size={cfg.data.batch_size}: must be at least 1")
    root = cfg.data.get("root")
    if root is not None and not Path(root).is_dir():
        raise CaptchaError(f"data.root={root}: no such folder; point it at a folder of labelled images")


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
    resolve_task(cfg)
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
    callbacks = [build(c) for c in cfg.callbacks.values() if c is not None]  # callbacks.NAME=null removes one
    loggers = [build(c) for c in cfg.logger.values() if c is not None]
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
