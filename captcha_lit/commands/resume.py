"""resume=RUN: continuing an interrupted run from its folder, reading nothing there as code.

The run's config.yaml is read as plain data (YAML's safe loader), refused in one line if it holds
an interpolation, a resolver, an object tag, or a _target_ this project's configs never name; the
run continues from RUN/checkpoints/last.ckpt in RUN itself (a copied run folder resumes in the copy)."""
import re
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf, open_dict

from ..data.tasks import CONF_DIR
from ..errors import CaptchaError
from ..model.checkpoint import read_checkpoint

# what may change when a run is resumed: where and how long it runs, not what it trains
RESUMABLE = ("trainer.devices", "trainer.accelerator", "trainer.max_epochs", "int8")


def project_targets() -> set[str]:
    """Every _target_ this project's own configs can name."""
    return {m for path in CONF_DIR.rglob("*.yaml") for m in re.findall(r"_target_:\s*(\S+)", path.read_text())}


# Hydra's special keys a stored config may hold: the ones this project's configs use
SPECIAL_KEYS = {"_target_", "_partial_", "_convert_", "_recursive_"}


# where the classes a run names lived before the package was grouped into folders: those runs resume too
MOVED = {"captcha_lit.module.": "captcha_lit.model.module.", "captcha_lit.datamodule.": "captcha_lit.data.datamodule.",
         "captcha_lit.schedules.": "captcha_lit.model.schedules.", "captcha_lit.callbacks.": "captcha_lit.model.callbacks."}


def _moved_target(node):
    if isinstance(node, dict):
        return {k: (next((new + v[len(old):] for old, new in MOVED.items() if v.startswith(old)), v)
                    if k == "_target_" and isinstance(v, str) else _moved_target(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [_moved_target(v) for v in node]
    return node


def stored_config(path: Path) -> dict:
    """A run's config.yaml as plain data, refused in one line unless it is what train() writes: a
    mapping of plain values (YAML's safe loader: no objects), no interpolation or resolver anywhere
    (train() writes it resolved; OmegaConf would run `${oc.create:...}` and the like when read), and
    no _target_ that this project's configs never name."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as e:
        raise CaptchaError(f"{path}: not a readable run config ({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise CaptchaError(f"{path}: not a run config (a mapping of settings), but {type(data).__name__}")
    missing = [k for k in ("task", "data", "model", "optimizer", "trainer")
               if not isinstance(data.get(k), dict)]
    if missing:
        raise CaptchaError(f"{path}: not a run config that train.py wrote: no {', '.join(missing)} section")
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

    try:
        data = _moved_target(data)
        walk(data, "")
    except RecursionError:  # an alias that contains itself, or values nested thousands deep
        raise CaptchaError(f"{path}: refused: nested too deep to be a run config") from None
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
