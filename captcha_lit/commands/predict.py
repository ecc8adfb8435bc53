"""The prediction entry: checkpoints + a folder of captchas -> a submission CSV (and, for
labelled folders, an accuracy report)."""
import json
import logging
import os
import re
import stat
from pathlib import Path

from omegaconf import DictConfig, ListConfig

from ..errors import CaptchaError
from ..files import atomic_path, atomic_write_text, write_labels_csv
from ..data.folders import COMPETITION_TASKS, inside, read_csv_rows
from ..data.images import IMAGE_SUFFIXES
from ..model.packaged import model_path
from ..reading.reader import CaptchaReader
from ..reading.report import accuracy, confusion_picture, mistakes_picture
from .settings import check_settings

log = logging.getLogger(__name__)


def run_checkpoint(run: Path) -> Path | None:
    """A training run's model: its best checkpoint (by the validation score in its name), or
    last.ckpt for a run without validation (final=true)."""
    def score(path):
        found = re.search(r"exact([0-9.]+)\.ckpt$", path.name)
        return float(found[1]) if found else -1.0
    best = max((run / "checkpoints").glob("best-*.ckpt"), key=score, default=None)
    last = run / "checkpoints" / "last.ckpt"
    return best or (last if last.is_file() else None)


def sweep_checkpoints(folder: Path) -> list[Path]:
    """The model of a run folder, or of each run in a Hydra multirun folder (its numbered subfolders)."""
    runs = [folder] if (folder / "checkpoints").is_dir() else sorted(
        (d for d in folder.iterdir() if (d / "checkpoints").is_dir()), key=lambda d: (len(d.name), d.name))
    found = [c for c in map(run_checkpoint, runs) if c is not None]
    if not found:
        raise CaptchaError(f"ckpt={folder}: no run with a checkpoint in it or in its subfolders (expected "
                           f"RUN/checkpoints/best-*.ckpt or last.ckpt)")
    return found


def load_readers(ckpts, device="auto", precision="auto", **kwargs) -> dict[str, CaptchaReader]:
    """One reader per task (and a line saying how each computes), from .ckpt checkpoints, exported .onnx models (run by onnxruntime on the
    CPU), run folders or multirun folders (each run's best checkpoint); each model knows its own
    task. Several models of one task are averaged (an ensemble); a multirun folder must hold one
    run per task."""
    models: dict[str, list[CaptchaReader]] = {}
    for entry in map(model_path, ckpts):
        from_folder = {}
        for path in sweep_checkpoints(entry) if entry.is_dir() else [entry]:
            if path.suffix == ".onnx":
                reader = CaptchaReader.from_onnx(path, **kwargs)
            else:
                reader = CaptchaReader.from_checkpoint(path, device=device, precision=precision, **kwargs)
            if entry.is_dir():
                if reader.spec.task in from_folder:
                    raise CaptchaError(f"ckpt={entry}: {from_folder[reader.spec.task]} and {path} both trained "
                                       f"{reader.spec.task}; name the checkpoints to use in ckpt=[...] (several of one "
                                       f"task are averaged)")
                from_folder[reader.spec.task] = path
                print(f"ckpt={entry}: {reader.spec.task} from {path}")
            models.setdefault(reader.spec.task, []).append(reader)
    readers = {task: rs[0] if len(rs) == 1 else CaptchaReader.ensemble(rs) for task, rs in models.items()}
    for task, reader in readers.items():
        print(f"{task}: {reader.precision}")
    return readers


def written_files(output: Path, labelled: bool, tasks) -> list[Path]:
    """Every file a prediction writes: the CSV and, for a labelled folder, its report beside it."""
    if not labelled:
        return [output]
    stem = output.with_suffix("")
    return [output, Path(f"{stem}.metrics.json"), Path(f"{stem}.confusion.png"),
            *(Path(f"{stem}.mistakes_{t}.png") for t in sorted(tasks))]


def model_files(path: Path) -> list[Path]:
    """A model file and the files read with it (contracts, int8 copies and their fp32 originals)."""
    from ..reading.int8 import copy_path, original_path
    copy = copy_path(path)
    return [path, Path(f"{path}.json"), copy, Path(f"{copy}.json"), original_path(copy)]


def check_output(output: Path, data_dir: Path, names: list[str], ckpts, labelled: bool = False, tasks=()) -> None:
    """Refuse, before any work, any file the run would write that is one of its inputs (also through
    a link), that is not a regular file, or that cannot be written."""
    inputs = [data_dir / "annotations.csv", data_dir / "sample_submission.csv", *(data_dir / n for n in names)]
    for c in map(model_path, ckpts):
        inputs += [f for p in (sweep_checkpoints(c) if c.is_dir() else [c]) for f in model_files(p)]
    taken = {os.path.realpath(p) for p in inputs}
    for path in written_files(output, labelled, tasks):
        if os.path.realpath(path) in taken:
            raise CaptchaError(f"output={output}: it would write {path}, one of the inputs; choose another file name")
        if path.is_dir():
            raise CaptchaError(f"output={output}: {path} is a folder; give the CSV file's name")
        if path.exists() and not stat.S_ISREG(os.stat(path).st_mode):
            raise CaptchaError(f"output={output}: {path} is not a regular file; choose another file name")
    folder = next(p for p in output.absolute().parents if p.exists())  # missing folders are made
    if not folder.is_dir() or not os.access(folder, os.W_OK) or (output.exists() and not os.access(output, os.W_OK)):
        raise CaptchaError(f"output={output}: not writable (check {folder})")


def list_inputs(data_dir: Path) -> tuple[list[str], list[str] | None, str]:
    """(filenames relative to data_dir, labels or None, kind of folder)."""
    if not data_dir.is_dir():
        raise CaptchaError(f"data_dir={data_dir}: no such folder")
    for name, kind in (("sample_submission.csv", "submission"), ("annotations.csv", "labelled")):
        if (data_dir / name).is_file():
            rows = read_csv_rows(data_dir / name)
            if not rows:
                raise CaptchaError(f"{data_dir / name}: no rows")
            names = [filename for _, filename, _ in rows]
            for lineno, filename, _ in rows:  # refuse rows that point outside the folder
                inside(data_dir, filename, f"{data_dir / name}, line {lineno}")
            return names, ([label for _, _, label in rows] if kind == "labelled" else None), kind
    # a plain folder: every image below it
    names = sorted(p.relative_to(data_dir).as_posix() for p in data_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    for name in names:  # a name the CSV could not hold as UTF-8 text
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise CaptchaError(f"data_dir={data_dir}: the file name {name!r} is not valid UTF-8; rename it") from None
    if not names:
        raise CaptchaError(f"data_dir={data_dir}: no sample_submission.csv, annotations.csv or images found")
    return names, None, "folder"


def tasks_of(names: list[str], models) -> list[str | None]:
    """The task of each row. In a folder organised by task (some row's first folder names a
    model's task or one of the competition's, task3/abc.png) a row's first folder is its task, so
    rows of tasks without a model stay unread rather than read by the wrong one; otherwise every
    row goes to the only model (None: no model for it)."""
    normal = [os.path.normpath(n).replace(os.sep, "/") for n in names]  # ./task3/a.png is task3/a.png
    folders = [n.split("/")[0] if "/" in n else None for n in normal]
    if any(f in models or f in COMPETITION_TASKS for f in folders):
        return folders
    only = next(iter(models)) if len(models) == 1 else None
    return [only] * len(names)


def predict(cfg: DictConfig) -> dict:
    # the two settings a first run forgets, named before the type checks (which would call null a wrong type)
    ckpts = list(cfg.ckpt) if isinstance(cfg.ckpt, (list, ListConfig)) else [cfg.ckpt]
    if not ckpts or ckpts == [None]:
        raise CaptchaError("no model given: add ckpt=PATH (or ckpt=[P1,P2,P3]), a .ckpt or an exported .onnx")
    if cfg.data_dir is None:
        raise CaptchaError("no input given: add data_dir=DIR (a test folder, a labelled folder or a folder of images)")
    check_settings(cfg, "predict")
    data_dir, output = Path(cfg.data_dir), Path(cfg.output)
    names, labels, kind = list_inputs(data_dir)
    check_output(output, data_dir, names, ckpts)  # before loading the models: the CSV itself
    readers = load_readers(ckpts, device=cfg.device, precision=cfg.precision, batch_size=cfg.batch_size,
                           num_workers=cfg.num_workers, tta=cfg.tta, allowed=cfg.get("alphabet"),
                           fold_case=cfg.get("fold_case", False), lengths=cfg.get("lengths"))
    check_output(output, data_dir, names, ckpts, labels is not None, readers)  # and the report beside it
    tasks = tasks_of(names, readers)

    missing = {}
    for t in tasks:
        if t not in readers:
            missing[t] = missing.get(t, 0) + 1
    if missing:
        what = ", ".join(f"{n} rows of {t or 'no task (not in a folder named after a model task)'}"
                         for t, n in missing.items())
        if not cfg.allow_partial:
            raise CaptchaError(f"no model for {what}: add its checkpoint to ckpt=[...], or allow_partial=true to leave them out")
        log.warning(f"allow_partial: leaving out {what}")

    predictions, confidence = [None] * len(names), [0.0] * len(names)
    for task, reader in readers.items():
        rows = [i for i, t in enumerate(tasks) if t == task]
        if not rows:
            continue
        got, conf = reader.predict([data_dir / names[i] for i in rows], progress=cfg.progress)
        for i, p, c in zip(rows, got, conf):
            predictions[i], confidence[i] = p, float(c)

    write_labels_csv(output, ((n, p) for n, p in zip(names, predictions) if p is not None))
    print(f"wrote {sum(p is not None for p in predictions)} predictions to {output}")
    if labels is None:
        return {}
    return write_report(output, data_dir, names, labels, tasks, predictions, confidence, readers)


def write_report(output: Path, data_dir, names, labels, tasks, predictions, confidence, readers) -> dict:
    """metrics JSON, confusion matrix and worst-mistakes grid beside `output`."""
    # each image is scored once: a file listed twice in annotations.csv (training drops the copy too) counts once
    done, scored = [], set()
    for i, p in enumerate(predictions):
        key = os.path.normpath(names[i])
        if p is not None and key not in scored:
            scored.add(key)
            done.append(i)
    # a model trained on lower-cased labels is scored against lower-cased labels
    labels = [label.lower() if t in readers and (readers[t].spec.lowercase or readers[t].fold_case) else label
              for label, t in zip(labels, tasks)]
    metrics = {}
    for task in sorted(readers):
        rows = [i for i in done if tasks[i] == task]
        if rows:
            metrics[task] = accuracy([predictions[i] for i in rows], [labels[i] for i in rows])
    metrics["overall"] = accuracy([predictions[i] for i in done], [labels[i] for i in done])
    stem = output.with_suffix("")
    atomic_write_text(f"{stem}.metrics.json", json.dumps(metrics, indent=2) + "\n")
    with atomic_path(f"{stem}.confusion.png") as tmp:
        alphabet = "".join(sorted(set("".join(r.spec.alphabet for r in readers.values()))))
        confusion_picture([predictions[i] for i in done], [labels[i] for i in done], alphabet).save(tmp, format="PNG")
    for task in metrics:
        if task == "overall":
            continue
        rows = [i for i in done if tasks[i] == task]
        r = readers[task]
        picture = mistakes_picture([data_dir / names[i] for i in rows], [predictions[i] for i in rows],
                                   [labels[i] for i in rows], [confidence[i] for i in rows], r.spec.width, r.spec.height)
        with atomic_path(f"{stem}.mistakes_{task}.png") as tmp:
            picture.save(tmp, format="PNG")
    for task, m in metrics.items():
        print(f"{task}: exact_match={m['exact_match']:.4f} char_acc={m['char_acc']:.4f} (n={m['n']})")
    return metrics
