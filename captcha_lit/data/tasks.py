"""What a task is: the captchas one model reads. A name, a length (or a length range for
variable-length captchas), an alphabet and an image size, nothing about how to train.

The presets are written once, in conf/task/*.yaml; `preset(name)` reads them for code that runs
outside a Hydra job (tests, benchmarks). `infer_task` derives a task from labelled images
(task=auto)."""
import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from omegaconf import OmegaConf

from .alphabet import check_alphabet
from ..errors import CaptchaError

def _conf_dir() -> Path:
    here = Path(__file__).resolve().parents[1]  # the package
    for candidate in (here / "conf", here.parent / "conf"):  # an installed wheel; a source checkout
        if (candidate / "train.yaml").is_file():
            return candidate
    raise RuntimeError(f"captcha-lit's configs are missing: neither {here / 'conf'} nor {here.parent / 'conf'} exists")


CONF_DIR = _conf_dir()
MAX_WIDTH, MAX_HEIGHT = 160, 48  # inferred sizes are scaled down to fit: cost grows with the pixels
# ... but never narrower than this many pixels per character of the longest label: square or tall
# images (256x256) would otherwise shrink to 48x48, and narrow ones (60x20, 5 characters) stay too
# narrow, for experiment=auto's 8-pixel CTC columns (2 per character, 2N-1 needed)
MIN_WIDTH_PER_CHAR = 16


def length_range(length) -> tuple[int, int]:
    """4 -> (4, 4); [4, 6] -> (4, 6)."""
    if isinstance(length, int) and not isinstance(length, bool):
        return length, length
    try:
        lo, hi = (int(n) for n in length)
    except (TypeError, ValueError):
        raise CaptchaError(f"task.length={length!r}: give a number (4) or a range ([4,6])") from None
    return lo, hi


@dataclass(frozen=True)
class Task:
    name: str
    length: int | list  # a number, or [shortest, longest]
    alphabet: str
    width: int
    height: int
    lowercase: bool = False  # read labels in lower case (otherwise 'A' and 'a' are two characters)

    def __post_init__(self):
        lo, hi = length_range(self.length)
        if not 1 <= lo <= hi:
            raise CaptchaError(f"task.length={self.length!r}: lengths must be 1 or more, shortest first")
        if not self.name or not re.fullmatch(r"[\w.-]+", str(self.name)):
            raise CaptchaError(f"task.name={self.name!r}: use letters, digits, '_', '-' or '.'")
        try:
            check_alphabet(self.alphabet)
        except ValueError as e:
            raise CaptchaError(f"task.alphabet: {e}") from None
        for key in ("width", "height"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or not 8 <= value <= 2048:
                raise CaptchaError(f"task.{key}={value!r}: must be a whole number of pixels from 8 to 2048")

    @property
    def lengths(self) -> tuple[int, int]:
        return length_range(self.length)

    def clean(self, label: str) -> str:
        return label.lower() if self.lowercase else label

    def label_problem(self, label: str) -> str | None:
        """Why `label` cannot be a target of this task, or None when it can."""
        lo, hi = self.lengths
        if not lo <= len(label) <= hi:
            return f"length {len(label)}, expected {lo if lo == hi else f'{lo} to {hi}'}"
        bad = sorted(set(label) - set(self.alphabet))
        if bad:
            return f"characters {''.join(bad)!r} not in the alphabet"
        return None

    def describe(self) -> str:
        lo, hi = self.lengths
        length = f"{lo}" if lo == hi else f"{lo}-{hi}"
        return (f"{self.name}: {length} characters of {self.alphabet!r} ({len(self.alphabet)}), "
                f"{self.width}x{self.height}{', lower-cased' if self.lowercase else ''}")

    def config(self) -> dict:
        """Plain values for a config or a checkpoint."""
        return asdict(self)


def from_config(node) -> Task:
    values = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    values = {k: values[k] for k in ("name", "length", "alphabet", "width", "height", "lowercase") if k in values}
    missing = [k for k, v in values.items() if v is None]
    if missing:
        raise CaptchaError(f"task {values.get('name')!r} leaves {', '.join(missing)} unset: set task.{missing[0]}=..., "
                           f"or use task=auto with data.root=DIR to infer them")
    return Task(**values)


def preset(name: str) -> Task:
    """A preset of conf/task/ (task1, task2, task3) as a Task."""
    path = CONF_DIR / "task" / f"{name}.yaml"
    if not path.is_file():
        raise CaptchaError(f"task={name}: no such preset in {path.parent}")
    return from_config(OmegaConf.load(path))


def infer_task(labels: list[str], sizes: Counter, name: str, given: dict) -> tuple[Task, str]:
    """The task that the labels and image sizes show; values in `given` that are not None win.
    Returns the task and a one-line account of what was inferred."""
    lowercase = bool(given.get("lowercase"))
    labels = [label.lower() if lowercase else label for label in labels]
    lens = [len(label) for label in labels]
    lo, hi = min(lens), max(lens)
    length = given.get("length") or (lo if lo == hi else [lo, hi])
    alphabet = given.get("alphabet") or "".join(sorted(set("".join(labels))))
    (w, h), _ = sizes.most_common(1)[0]
    if given.get("height") and not given.get("width"):  # a height to read at: the width keeps the aspect ratio
        scale = given["height"] / h
    else:
        scale = min(1.0, MAX_WIDTH / w, MAX_HEIGHT / h)
    room = MIN_WIDTH_PER_CHAR * length_range(length)[1]  # squeezes the height more than the width; widens narrow images
    narrowest = max(8, room, given.get("min_width") or 0)
    width, height = given.get("width") or max(narrowest, round(w * scale)), given.get("height") or max(8, round(h * scale))
    task = Task(name=given.get("name") or name, length=length, alphabet=alphabet, width=width, height=height,
                lowercase=lowercase)
    notes = []
    if (width, height) != (w, h):
        notes.append(f"images of {w}x{h} scaled to {width}x{height}")
    if width < room:
        notes.append(f"task.width={width} leaves under {MIN_WIDTH_PER_CHAR} pixels a character for {length_range(length)[1]} "
                     f"characters: CTC may not fit them; task.width={room} would")
    if len(sizes) > 1:
        notes.append(f"{sum(sizes.values()) - sizes[(w, h)]} images of other sizes resized")
    return task, f"task=auto: {task.describe()} from {len(labels)} labelled images" + "".join(f"; {n}" for n in notes)
