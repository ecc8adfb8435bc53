"""The training entry: config in, fitted model, checkpoints and metrics out."""
import logging
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import yaml
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.plugins.io import TorchCheckpointIO

from .checkpoint import model_path, pretrained, read_checkpoint
from .datasets import ArrayDataset
from .errors import CaptchaError, Terminated
from .files import atomic_path, atomic_write_text
from .folders import labelled_items
from .hardware import training_precision
from .spec import ModelSpec
from .images import image_size
from .tasks import CONF_DIR, from_config, infer_task

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


def _whole(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# settings checked for type and range before any work: (key, test, what it must be). Absent keys
# (a group without that setting) are skipped
SETTINGS = [
    ("seed", _whole, "a whole number"),
    ("data.batch_size", lambda v: _whole(v) and v >= 1, "a whole number of at least 1"),
    ("data.num_train", lambda v: _whole(v) and v >= 1, "a whole number of at least 1"),
    ("data.num_val", lambda v: _whole(v) and v >= 1, "a whole number of at least 1"),
    ("data.epoch_size", lambda v: v is None or (_whole(v) and v >= 1), "a whole number of at least 1, or null"),
    ("data.epoch_pixels", lambda v: v is None or (_whole(v) and v >= 1), "a whole number of at least 1, or null"),
    ("data.synthetic_ratio", lambda v: _number(v) and v >= 0, "a number of at least 0"),
    ("data.val_fraction", lambda v: _number(v) and 0 < v < 1, "above 0 and below 1 (final=true trains without it)"),
    ("data.test_fraction", lambda v: _number(v) and 0 <= v < 1, "at least 0 and below 1"),
    ("data.num_workers", lambda v: v is None or (_whole(v) and v >= 0), "a whole number of at least 0, or null"),
    ("trainer.max_epochs", lambda v: v is None or (_whole(v) and (v >= 1 or v == -1)), "a whole number of at least 1"),
    ("optimizer.lr", lambda v: _number(v) and v > 0, "a number above 0"),
    ("model.augment", lambda v: _number(v) and v >= 0, "a number of at least 0"),
    ("model.label_smoothing", lambda v: _number(v) and 0 <= v < 1, "at least 0 and below 1"),
    ("model.ema", lambda v: _number(v) and 0 <= v < 1, "at least 0 and below 1 (0: no weight average)"),
]


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
    for key, ok, wanted in SETTINGS:
        node, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(cfg, node) if node else cfg
        if parent is not None and leaf in parent and not ok(parent[leaf]):
            raise CaptchaError(f"{key}={parent[leaf]!r}: must be {wanted}")
    accelerator = cfg.trainer.accelerator
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise CaptchaError("trainer.accelerator=gpu, but no CUDA GPU is visible: use trainer=cpu (or trainer=default)")
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


# what may change when a run is resumed: where and how long it runs, not what it trains
RESUMABLE = ("trainer.devices", "trainer.accelerator", "trainer.max_epochs", "int8")


def project_targets() -> set[str]:
    """Every _target_ this project's own configs can name."""
    return {m for path in CONF_DIR.rglob("*.yaml") for m in re.findall(r"_target_:\s*(\S+)", path.read_text())}


# Hydra's special keys a stored config may hold: the ones this project's configs use
SPECIAL_KEYS = {"_target_", "_partial_", "_convert_", "_recursive_"}


def stored_config(path: Path) -> dict:
    """A run's config.yaml as plain data, refused in one line unless it is what train() writes: a
    mapping of plain values (YAML's safe loader: no objects), no interpolation or resolver anywhere
    (train() writes it resolved; OmegaConf would run `${oc.create:...}` and the like when read), and
    no _target_ that this project's configs never name."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise CaptchaError(f"{path}: not a readable run config ({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise CaptchaError(f"{path}: not a run config (a mapping of settings), but {type(data).__name__}")
    targets, allowed = [], project_targets()

    def walk(node, where: str):
        if isinstance(node, dict):
            for key, value in node.items():
                name = f"{where}.{key}" if where else str(key)
                if not isinstance(key, str) or "${" in key or (key.startswith("_") and key.endswith("_")
                                                                and key not in SPECIAL_KEYS):
                    raise CaptchaError(f"{path}: refused: the key {name!r} is not one captcha-lit writes")
                if key == "_target_":
                    targets.append(str(value))
                walk(value, name)
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")
        elif isinstance(node, str) and "${" in node:
            raise CaptchaError(f"{path}: refused: {where} holds an interpolation ({node[:60]!r}); captcha-lit writes "
                               f"resolved values, and resolving it could run code")
        elif not (node is None or isinstance(node, (str, bool, int, float))):
            raise CaptchaError(f"{path}: refused: {where} is a {type(node).__name__}, not a plain value")

    walk(data, "")
    unknown = sorted(set(targets) - allowed)
    if unknown:
        raise CaptchaError(f"{path}: refused: it names {', '.join(unknown)}, which captcha-lit's configs never do, "
                           f"and resuming would run it")
    return data


def moved(node, old: str, new: str):
    """Every string path under folder `old` moved under `new` (a run folder copied elsewhere)."""
    if isinstance(node, dict):
        return {k: moved(v, old, new) for k, v in node.items()}
    if isinstance(node, list):
        return [moved(v, old, new) for v in node]
    if isinstance(node, str) and old and (node == old or node.startswith(old.rstrip("/") + "/")):
        return new + node[len(old.rstrip("/")):]
    return node


def resume_config(cfg: DictConfig, overrides=()) -> DictConfig:
    """The saved config of run folder `cfg.resume`, set to continue from its last checkpoint in that
    folder (a copied run resumes in the copy). Of the command line's other overrides only RESUMABLE
    ones apply; others are refused. The stored config is read as plain data (stored_config)."""
    run = Path(cfg.resume)
    saved, last = run / "config.yaml", run / "checkpoints" / "last.ckpt"
    if not saved.is_file() or not last.is_file():
        raise CaptchaError(f"resume={run}: expected {saved} and {last}")
    keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides]
    refused = [k for k in keys if k != "resume" and k not in RESUMABLE]
    if refused:
        raise CaptchaError(f"resume={run} continues that run as configured; {', '.join(refused)} cannot change "
                           f"(only {', '.join(RESUMABLE)} can): start a new run to change them")
    data = stored_config(saved)
    model = data.get("model")
    if isinstance(model, dict) and isinstance(model.get("task"), str):  # a run from before model.task held the task
        model["task"] = data.get("task")
        for key in ("length", "alphabet", "width", "height", "lowercase"):
            model.pop(key, None)
    old_dir = data.get("output_dir")
    data = moved(data, old_dir, str(run)) if isinstance(old_dir, str) else data
    old = OmegaConf.create(data)  # plain values only: nothing to resolve
    epochs = OmegaConf.select(cfg, "trainer.max_epochs")
    if ("trainer.max_epochs" in keys and epochs != OmegaConf.select(old, "trainer.max_epochs")
            and str(OmegaConf.select(old, "scheduler._target_")).endswith("one_cycle")):
        raise CaptchaError(f"resume={run} trainer.max_epochs={epochs}: this run's one-cycle schedule was laid out "
                           f"for {OmegaConf.select(old, 'trainer.max_epochs')} epochs and cannot be stretched; train "
                           f"on from its weights in a new run instead: init_from={last}")
    for tmp in last.parent.glob(".*.tmp"):  # a save cut short by the interruption; the previous file is intact
        tmp.unlink()
    read_checkpoint(last)  # a truncated or foreign last.ckpt: one line now, not Lightning's traceback later
    with open_dict(old):
        for key in keys:
            if key in RESUMABLE:
                OmegaConf.update(old, key, OmegaConf.select(cfg, key))
        old.output_dir, old.ckpt_path, old.resume = str(run), str(last), None
    return old


def refuse_used_run_folder(cfg: DictConfig) -> None:
    """A new run never writes into a folder that holds another run's checkpoints."""
    folder = Path(cfg.output_dir) / "checkpoints"
    if not cfg.get("ckpt_path") and folder.is_dir() and any(folder.glob("*.ckpt")):
        raise CaptchaError(f"{cfg.output_dir} already holds a run's checkpoints: continue it with "
                           f"resume={cfg.output_dir}, or train into another folder")


def final_training(cfg: DictConfig) -> None:
    """final=true: every labelled image that is not in the test split trains, for the recipe's
    epochs, and the last checkpoint is the model (nothing is held out to pick an epoch by)."""
    if not cfg.data.get("root"):
        raise CaptchaError("final=true trains on every labelled image of a folder: add data=folder (or data=mixed) "
                           "data.root=DIR")
    with open_dict(cfg):
        cfg.data.val_fraction = 0
        cfg.callbacks.model_checkpoint = None


def ctc_rows(old: str, new: str) -> list[int | None]:
    """For a CTC head of alphabet `new` started from one of alphabet `old`: the old row of each new
    row (row 0 is the blank, row i + 1 character i), None for a character the old head never read."""
    return [0] + [old.index(c) + 1 if c in old else None for c in new]


def start_from(model, path) -> None:
    """init_from=CKPT: the run starts from that checkpoint's weights wherever a name and shape
    match (a network pretrained on rendered images, or trained on another alphabet or length).
    A CTC head of another alphabet keeps the rows of the characters both read (a character the
    checkpoint never read starts fresh); per-position heads of another alphabet or length start
    fresh. init_from=pretrained: the reader captcha-lit ships for the task; pretrained:NAME: the
    packaged reader NAME (pretrained:general). The optimizer, schedule and epochs start anew."""
    path = pretrained(model.spec.task) if path == "pretrained" else model_path(path)
    hparams, state = read_checkpoint(path)
    theirs, ours = ModelSpec.read(hparams, str(path)), model.spec
    # the network the checkpoint predicts with (its weight average, if it kept one) starts both of
    # this run's copies, the trained one and (with model.ema) the average
    prefix = "ema_net." if any(k.startswith("ema_net.") for k in state) else "net."
    source = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    own = model.state_dict()
    head, old_head = ours.head, theirs.head
    # heads that read another alphabet, or the same characters in another order, would load by
    # shape alone and name every character wrongly
    same_heads = (theirs.alphabet, theirs.length, theirs.head) == (ours.alphabet, ours.length, ours.head)
    for key in ("mean", "std"):  # the weights expect inputs scaled as they were trained on
        if getattr(theirs, key) != getattr(ours, key):
            raise CaptchaError(f"init_from={path}: it was trained with model.{key}={list(getattr(theirs, key))}, this "
                               f"run sets {list(getattr(ours, key))}: set model.{key}={list(getattr(theirs, key))} "
                               f"(or init_from=null)")
    fits = {k: source[name] for k in own if (name := k.split(".", 1)[1]) in source and source[name].shape == own[k].shape
            and (same_heads or not name.startswith("heads."))}
    mapped = ""
    if head == old_head == "ctc" and not same_heads and all(f"heads.{p}" in source for p in ("weight", "bias")):
        rows = ctc_rows(theirs.alphabet, ours.alphabet)
        for p in ("weight", "bias"):
            key, old = f"net.heads.{p}", source[f"heads.{p}"]
            if old.shape[1:] != own[key].shape[1:]:
                break
            value = own[key].clone()
            for i, r in enumerate(rows):
                if r is not None and r < len(old):
                    value[i] = old[r]
            fits[key] = value
            if model.ema_net is not None:
                fits[f"ema_net.heads.{p}"] = value
        else:
            fresh_chars = "".join(c for c, r in zip(ours.alphabet, rows[1:]) if r is None)
            mapped = (f"; CTC head: {len(rows) - 1 - len(fresh_chars)} characters kept"
                      + (f", {fresh_chars!r} fresh" if fresh_chars else ""))
    if not fits.keys() & dict(model.named_parameters()).keys():
        raise CaptchaError(f"init_from={path}: none of its weights fit this model (init_from=null trains from scratch): "
                           f"it has widths={hparams.get('widths')}, "
                           f"strides={hparams.get('strides')}, blocks_per_stage={hparams.get('blocks_per_stage')}")
    model.load_state_dict(fits, strict=False)
    fresh = sorted({k.rsplit(".", 1)[0] for k in own if k not in fits})
    print(f"init_from={path}: {len(fits)} of {len(own)} weights loaded{mapped}"
          + (f"; starting fresh: {', '.join(fresh)}" if fresh else ""))


def _images(ds, idx) -> np.ndarray:
    """Images `idx` of a dataset as (N, H, W, 3) uint8."""
    if isinstance(ds, ArrayDataset):
        return np.asarray(ds.images[np.sort(idx)])
    return np.stack([np.asarray(ds[i][0]) for i in idx])  # files or renderings, decoded one by one


def spread(n: int, count: int) -> np.ndarray:
    """Up to `count` indices spread evenly over range(n)."""
    return np.unique(np.linspace(0, n - 1, min(n, count)).astype(int))


def write_int8_copy(ckpt: Path, datamodule) -> None:
    """The checkpoint's int8 copy (int8.py), calibrated on up to 256 training images (the real ones
    where the run has any: what it will read) and checked against fp32 on up to 1,024 validation
    images (test images without a validation split, other training images without either). A
    failure costs the copy, not the run."""
    from .export import export_int8
    from .int8 import AGREEMENT, again

    train_set = datamodule.train_set
    real = datamodule.real_train_size or len(train_set)  # real images come first in a mixed set
    held_out, what = next(((ds, name) for ds, name in ((datamodule.val_set, "validation"), (datamodule.test_set, "test"))
                           if ds is not None), (None, "training"))
    if held_out is not None:
        calibration, check = spread(real, 256), spread(len(held_out), 1024)
    else:
        both = spread(real, 1280)
        calibration, held_out = both[::5], train_set
        check = np.setdiff1d(both, calibration)
    if len(check) == 0:
        print(f"int8 copy: not written: no images to check it on; make one with: captcha-export {ckpt} --int8 IMAGES")
        return
    try:
        path, same, read_again = export_int8(ckpt, _images(train_set, calibration), _images(held_out, check))
    except Exception as e:  # the run's result stands without its copy
        log.warning(f"int8 copy not written ({type(e).__name__}: {e}); make one with: captcha-export {ckpt} --int8 IMAGES")
        return
    used = ("predict.py reads with it on CPUs with VNNI" if same >= AGREEMENT * len(check) else
            f"under {AGREEMENT:.1%}, so predict.py reads the checkpoint (precision=int8 forces the copy)")
    print(f"int8 copy: {path} reads as fp32 on {same} of {len(check)} {what} images{again(read_again)}: {used}")


def train(cfg: DictConfig, overrides=(), callbacks=()) -> float:
    """Fits the model, tests the best checkpoint, and returns the best val/exact_match
    (the value a Hydra sweeper optimises; with final=true, the test score). `overrides`: the
    command line's, which resume= checks; `callbacks`: Lightning callbacks added to the config's
    (for scripts such as bench/time_to_accuracy.py)."""
    if cfg.get("resume"):
        cfg = resume_config(cfg, overrides)
    else:
        refuse_used_run_folder(cfg)
    precision, why = training_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    print(f"trainer.precision={cfg.trainer.precision}: {precision} ({why})")
    resolve_task(cfg)
    check_config(cfg)
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
        if checkpoint is not None and checkpoint.best_model_path:
            print(f"best checkpoint: {checkpoint.best_model_path}")
            if cfg.get("int8", True):  # a run resumed from before the setting existed makes one too
                write_int8_copy(Path(checkpoint.best_model_path), datamodule)
    return float(best) if best is not None else metrics.get("val/exact_match", metrics.get("test/exact_match", 0.0))
