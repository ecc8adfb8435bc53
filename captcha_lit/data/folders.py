"""Labelled folders: which images a folder holds and what each one says.

Three layouts are read:
- the competition's: annotations.csv with rows `taskN/NAME.png,label`, one task at a time;
- annotations.csv (`filename,label`) naming images anywhere below the folder, every row used;
- images named by their labels (`2b827.png`, `2b827_2.png`): no CSV, every image below the folder.
"""
import csv
import logging
import os
import re
from collections import Counter
from pathlib import Path

from ..errors import CaptchaError
from ..files import regular_file
from .images import IMAGE_SUFFIXES
from .tasks import Task

log = logging.getLogger(__name__)

COMPETITION_TASKS = ("task1", "task2", "task3")


def read_csv_rows(csv_path: Path) -> list[tuple[int, str, str]]:
    """(line number, filename, label) for each row of a `filename,label` CSV."""
    regular_file(csv_path, "CSV file")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:  # -sig: skips a spreadsheet's byte order mark
            lines = list(csv.reader(f))
    except (UnicodeDecodeError, csv.Error) as e:
        raise CaptchaError(f"{csv_path}: not a UTF-8 CSV file ({e}); save it as CSV UTF-8 with the header "
                           f"'filename,label'") from None
    if not lines:
        raise CaptchaError(f"{csv_path}: the file is empty; expected the header 'filename,label'")
    header = [h.strip() for h in lines[0]]
    if header != ["filename", "label"]:
        raise CaptchaError(f"{csv_path}: the first line must be the header 'filename,label', found {','.join(lines[0])!r}")
    rows = []
    for lineno, fields in enumerate(lines[1:], start=2):
        if not fields:
            continue  # blank line
        if len(fields) != 2:
            raise CaptchaError(f"{csv_path}, line {lineno}: expected 2 fields (filename,label), found {len(fields)}")
        if not fields[0].strip():
            raise CaptchaError(f"{csv_path}, line {lineno}: no filename")
        rows.append((lineno, fields[0].strip(), fields[1].strip()))
    return rows


def inside(root: Path, filename: str, where: str) -> Path:
    """root/filename, refusing names that point outside root (absolute, or through '..'). The name
    is checked as written, not resolved: images linked in from elsewhere are fine."""
    parts = Path(os.path.normpath(filename)).parts
    if Path(filename).anchor or not parts or parts[0] in ("..", "."):
        raise CaptchaError(f"{where}: {filename!r} points outside {root}; name images relative to the folder")
    return root / filename


def label_of(path: Path) -> str:
    """The label of a label-named image: its name up to the first '_' or '.'."""
    return re.split(r"[_.]", path.name, maxsplit=1)[0]


def is_competition(names: list[str]) -> bool:
    """True when every row sits in a task1/, task2/ or task3/ folder: the competition's layout."""
    return bool(names) and all(n.split("/")[0] in COMPETITION_TASKS and "/" in n for n in names)


def labelled_items(root, task_name: str | None = None) -> tuple[list[tuple[Path, str, str]], str]:
    """(path, label, where) for every labelled image of the folder, and the layout's name.
    In the competition's layout only the rows of `task_name` are listed."""
    root = Path(root)
    if not root.is_dir():
        raise CaptchaError(f"data.root={root}: no such folder")
    csv_path = root / "annotations.csv"
    if not csv_path.is_file():
        paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not paths:
            raise CaptchaError(f"{root}: no annotations.csv and no images ({', '.join(sorted(IMAGE_SUFFIXES))}) below it")
        items = [(p, label_of(p), str(p)) for p in paths]
        empty = next((where for _, label, where in items if not label), None)
        if empty:
            raise CaptchaError(f"{empty}: the name gives no label (expected LABEL.png or LABEL_N.png)")
        return items, "label-named"
    rows = read_csv_rows(csv_path)
    layout = "competition" if is_competition([name for _, name, _ in rows]) else "annotations"
    if layout == "competition":
        if task_name not in COMPETITION_TASKS:
            raise CaptchaError(f"{csv_path}: the competition's layout (task1/, task2/, task3/ rows) holds several "
                               f"tasks: choose one with task=task1, task=task2 or task=task3")
        found = Counter(name.split("/")[0] for _, name, _ in rows)
        rows = [r for r in rows if r[1].startswith(f"{task_name}/")]
        if not rows:
            per = ", ".join(f"{t}: {n}" for t, n in sorted(found.items())) or "none"
            raise CaptchaError(f"{csv_path}: no usable rows of {task_name} (rows per folder prefix: {per})")
    if not rows:
        raise CaptchaError(f"{csv_path}: no rows below the header")
    seen, items, duplicates = {}, [], 0
    for lineno, filename, label in rows:
        where = f"{csv_path}, line {lineno}"
        key = os.path.normpath(filename)  # ./a.png and a.png are one image, which must not be in two splits
        if key in seen:
            if seen[key][1] != label:
                raise CaptchaError(f"{csv_path}, lines {seen[key][0]} and {lineno}: {filename} is labelled "
                                   f"both {seen[key][1]!r} and {label!r}")
            duplicates += 1
            continue
        seen[key] = (lineno, label)
        if not label and layout != "competition":
            raise CaptchaError(f"{where}: {filename} has no label")
        items.append((inside(root, filename, where), label, where))
    if duplicates:
        log.warning(f"{csv_path}: dropped {duplicates} duplicate rows")
    return items, layout


def read_labelled(root, task: Task) -> list[tuple[str, str]]:
    """The (image path, label) pairs of the folder that `task` reads."""
    items, layout = labelled_items(root, task.name)
    return fit_to_task(items, task, layout, root)


def seen_characters(root, task) -> tuple[str, int]:
    """The characters of `task.alphabet` (in its order) that the folder's labels for the task use,
    and how many labels that is. All of its labels, whichever split they fall in: a narrower
    alphabet would drop (or refuse) a test image whose label has a character no training label has,
    and change the split; this way every image is kept and counts, as a miss where it must."""
    labels = [label for _, label in read_labelled(root, task)]
    used = set("".join(labels))
    return "".join(c for c in task.alphabet if c in used), len(labels)


def fit_to_task(items, task: Task, layout: str, root) -> list[tuple[str, str]]:
    """The (path, label) pairs the task can learn. In the competition's layout rows that do not fit
    (wrong length, other characters) are dropped and counted, as the report did; in the other
    layouts such a row is an error, since it means the task was set wrong."""
    root = Path(root)
    kept, dropped, examples = [], Counter(), {}
    for path, label, where in items:
        label = task.clean(label)
        problem = task.label_problem(label)
        if problem is None:
            if not path.exists():
                raise CaptchaError(f"{where}: image {path} not found")
            regular_file(path, "image")
            kept.append((str(path), label))
        elif layout == "competition":
            dropped["wrong length" if problem.startswith("length") else "characters outside the alphabet"] += 1
            examples.setdefault(problem, f"{where.split(', ')[-1]} ({path.relative_to(root)}, {label!r}): {problem}")
        else:
            hint = "set task.length (a range like [4,6] reads variable lengths)" if problem.startswith("length") \
                else "set task.alphabet to include them (or task.lowercase=true)"
            raise CaptchaError(f"{where}: label {label!r} does not fit task {task.name}: {problem}; {hint}, "
                               f"or use task=auto")
    if dropped:
        log.warning(f"{Path(root) / 'annotations.csv'}: dropped {sum(dropped.values())} {task.name} rows "
                    f"({', '.join(f'{n} {why}' for why, n in dropped.items())}); e.g. {'; '.join(list(examples.values())[:3])}")
    if not kept:
        raise CaptchaError(f"{root}: no usable rows of {task.name}")
    return kept
