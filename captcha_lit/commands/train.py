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
from pytorch_lightning.plugins.io import TorchCheckpointIO

from ..data.folders import labelled_items, seen_characters
from ..data.images import image_size
from ..data.tasks import from_config, infer_task
from ..errors import CaptchaError, Terminated
from ..files import atomic_path, atomic_write_text
from ..hardware import training_precision
from ..model.checkpoint import read_checkpoint
from ..model.packaged import model_path, pretrained
from ..model.warm_start import start_from
from ..reading.export import write_int8_copy
from .resume import resume_config
from .settings import check_settings

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, but through a temporary file and a rename: a run killed
    while saving keeps its previous checkpoint intact."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


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
    init = cfg.get("init_from")
    if init == "pretrained" and not cfg.get("ckpt_path"):
        pretrained(cfg.task.name)  # one line naming the tasks that have one, if this one has none
    elif init is not None and not cfg.get("ckpt_path") and not model_path(init).is_file():  # a resumed run needs it no more
        raise CaptchaError(f"init_from={init}: no such file; give the path of a trained checkpoint (for example "
                           f"the checkpoints/last.ckpt of a python train.py run)")
    if cfg.get("ckpt_path"):  # continuing a run: its checkpoint must hold the model this config builds
        task = OmegaConf.to_container(cfg.task, resolve=True)
        read_checkpoint(cfg.ckpt_path, expect={"task": task["name"], "head": cfg.model.head,
                                               **{k: task[k] for k in ("alphabet", "length", "width", "height")}})
    if cfg.model.get("head") == "ctc" and cfg.model.get("label_smoothing"):  # else ignored without a word
        raise CaptchaError(f"model.label_smoothing={cfg.model.label_smoothing} with model.head=ctc: CTC's loss takes no "
                           f"label smoothing (it smooths the per-position heads' cross entropy); set it to 0")
    reloads = cfg.trainer.get("reload_dataloaders_every_n_epochs")
    if cfg.data.get("fresh_train") and (cfg.data.get("root") or reloads != 1):
        raise CaptchaError("data.fresh_train=true renders new training images every epoch: it needs "
                           "trainer.reload_dataloaders_every_n_epochs=1 and no data.root")
    if cfg.data.get("val_fraction") == 0 and not cfg.get("final"):  # final_training sets it, and a resume reads it back
        raise CaptchaError("data.val_fraction=0: must be a number above 0 and below 1 (final=true trains without it)")
    if cfg.trainer.get("max_epochs") == -1 and cfg.trainer.get("max_steps", -1) == -1:  # no end: nothing to lay out over
        scheduler = OmegaConf.select(cfg, "scheduler._target_")
        if scheduler:
            name = scheduler.rsplit(".")[-1].replace("_", "")  # one_cycle: scheduler=onecycle
            raise CaptchaError(f"trainer.max_epochs=-1 (no end) with scheduler={name}, whose schedule is laid out over "
                               f"the whole run: set trainer.max_epochs (or trainer.max_steps), or scheduler=none")
        if cfg.model.get("low_res", 1) < 1:
            raise CaptchaError(f"trainer.max_epochs=-1 (no end) with model.low_res={cfg.model.low_res}, which trains the "
                               f"first model.low_res_until of the run small: set trainer.max_epochs, or model.low_res=1")
    accelerator = cfg.trainer.accelerator
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise CaptchaError("trainer.accelerator=gpu, but no CUDA GPU is visible: use trainer=cpu (or trainer=default)")
    root = cfg.data.get("root")
    if root is not None and not Path(root).is_dir():
        raise CaptchaError(f"data.root={root}: no such folder; point it at a folder of labelled images")


def narrow_alphabet(cfg: DictConfig) -> None:
    """task.narrow_alphabet=true with a labelled folder: the model reads only the characters the
    folder's labels use (the competition's task2 and task3 use 28 of the 36), so it never answers
    with one no label has. Says so in one line and writes the alphabet into the config (its
    config.yaml and checkpoint hold it); a start of the full alphabet keeps its rows of them."""
    if not cfg.task.get("narrow_alphabet") or not cfg.data.get("root"):
        return
    task = from_config(cfg.task)
    used, n = seen_characters(cfg.data.root, task)
    dropped = "".join(c for c in task.alphabet if c not in used)
    print(f"task.narrow_alphabet=true: {task.name} reads the {len(used)} characters its {n} labels use"
          + (f", not {dropped!r}" if dropped else " (all of its alphabet)"))
    with open_dict(cfg):
        cfg.task.alphabet = used


def build(node, **kwargs):
    """instantiate(), but a CaptchaError raised by the target comes out as itself, not wrapped in
    Hydra's InstantiationException (which the entry points would print as a traceback)."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, CaptchaError):
            raise e.__cause__ from None
        raise


def refuse_used_run_folder(output_dir) -> None:
    """A new run never writes into a folder that holds another run's checkpoints (cli.py asks
    before Hydra writes its .hydra/ files there; train() again, for runs started from Python)."""
    folder = Path(output_dir) / "checkpoints"
    if folder.is_dir() and any(folder.glob("*.ckpt")):
        raise CaptchaError(f"{output_dir} already holds a run's checkpoints: continue it with "
                           f"resume={output_dir}, or train into another folder")


def final_training(cfg: DictConfig) -> None:
    """final=true: every labelled image that is not in the test split trains, for the recipe's
    epochs, and the last checkpoint is the model (nothing is held out to pick an epoch by)."""
    if not cfg.data.get("root"):
        raise CaptchaError("final=true trains on every labelled image of a folder: add data=folder (or data=mixed) "
                           "data.root=DIR")
    with open_dict(cfg):
        cfg.data.val_fraction = 0
        cfg.callbacks.model_checkpoint = None


def train(cfg: DictConfig, overrides=(), callbacks=()) -> float:
    """Fits the model, tests the best checkpoint, and returns the best val/exact_match
    (the value a Hydra sweeper optimises; with final=true, the test score). `overrides`: the
    command line's, which resume= checks; `callbacks`: Lightning callbacks added to the config's
    (for scripts such as bench/time_to_accuracy.py)."""
    if cfg.get("resume"):
        cfg = resume_config(cfg, overrides)
    else:
        if not cfg.get("ckpt_path"):
            refuse_used_run_folder(cfg.output_dir)
    precision, why = training_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    print(f"trainer.precision={cfg.trainer.precision}: {precision} ({why})")
    check_settings(cfg, "train")  # types first: task=auto reads task.* as it infers the rest
    resolve_task(cfg)
    check_config(cfg)
    narrow_alphabet(cfg)
    if cfg.get("final"):
        final_training(cfg)
    # the config with every interpolation resolved (Hydra's .hydra/config.yaml keeps them)
    atomic_write_text(Path(cfg.output_dir) / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = build(cfg.data)
    optimizer = build(cfg.optimizer)
    scheduler = build(cfg.scheduler) if cfg.get("scheduler") else None
    model = build(cfg.model, optimizer=optimizer, scheduler=scheduler, _convert_="all")
    if cfg.get("init_from") and not cfg.get("ckpt_path"):  # a resumed run has its own weights
        start_from(model, cfg.init_from)
    if cfg.get("compile"):
        model.net.compile()  # in place: the checkpoint's keys stay those of the plain network
    callbacks = [build(c) for c in cfg.callbacks.values() if c is not None] + list(callbacks)  # NAME=null removes one
    loggers = [build(c) for c in cfg.logger.values() if c is not None]
    trainer = build(cfg.trainer, precision=precision, callbacks=callbacks, logger=loggers,
                    plugins=[AtomicCheckpointIO()])
    log.info(f"training {cfg.task.name} on {trainer.accelerator.__class__.__name__} with precision {precision}")
    start = None  # a fine-tuning run's start, scored on the validation split: what the training must beat
    if cfg.get("init_from") and not cfg.get("ckpt_path") and not cfg.trainer.get("fast_dev_run") and not cfg.get("final"):
        with torch.random.fork_rng(devices=[]):  # scoring the start leaves the training's random draws as they were
            scored = trainer.validate(model, datamodule=datamodule, verbose=False)
        start = scored[0].get("val/exact_match") if scored else None
        model.val_metrics.reset()  # its states were made under inference mode, which training may not update
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    except SystemExit:  # Lightning ends a Ctrl-C'd fit with exit(1), after saving nothing half-written
        if trainer.interrupted:  # the entry point's one line and exit code 130 (143 for SIGTERM)
            raise (Terminated if getattr(trainer, "received_sigterm", False) else KeyboardInterrupt) from None
        raise

    checkpoint = trainer.checkpoint_callback
    best = checkpoint.best_model_score if checkpoint is not None else None
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if cfg.get("test") and not cfg.trainer.get("fast_dev_run"):
        tested = trainer.test(model, datamodule=datamodule, ckpt_path=checkpoint.best_model_path if best is not None else None,
                              verbose=False)
        metrics.update({k: float(v) for k, v in (tested[0] if tested else {}).items()})  # []: no split to test on
    if trainer.is_global_zero:  # one report, also under DDP
        print("final metrics: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())))
        after = float(best) if best is not None else metrics.get("val/exact_match")  # the model kept
        if start is not None and after is not None:
            print(f"validation exact match: {start:.4f} before training (init_from={cfg.init_from}), {after:.4f} after"
                  + (": the start read more of these images; label more of them, or read with the start itself "
                     f"(ckpt={'pretrained:' + cfg.task.name if cfg.init_from == 'pretrained' else cfg.init_from})"
                     if after < start else ""))
        if checkpoint is not None and checkpoint.best_model_path:
            print(f"best checkpoint: {checkpoint.best_model_path}")
            if cfg.get("int8", True):  # a run resumed from before the setting existed makes one too
                write_int8_copy(Path(checkpoint.best_model_path), datamodule)
    return float(best) if best is not None else metrics.get("val/exact_match", metrics.get("test/exact_match", 0.0))
