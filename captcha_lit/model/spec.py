"""What a model reads: the task (name, lengths, alphabet, case), the image size it reads at, its
head and how its input is scaled. Checkpoints, ONNX contracts and readers all carry it; this is
where it is written and read back, checked, in one place. Needs neither PyTorch nor Lightning."""
import math
from dataclasses import asdict, dataclass

from ..errors import CaptchaError
from ..data.tasks import Task

HEADS = ("positions", "ctc")
# maps [0, 1] pixels to [-1, 1]: the default of every model trained here
MEAN = STD = (0.5, 0.5, 0.5)
FIELDS = ("task", "length", "alphabet", "width", "height", "lowercase", "head", "mean", "std")


@dataclass(frozen=True)
class ModelSpec:
    task: str
    length: int | tuple  # a number, or (shortest, longest)
    alphabet: str
    width: int
    height: int
    lowercase: bool = False
    head: str = "positions"  # positions: one prediction per character; ctc: one per column of the image
    mean: tuple = MEAN
    std: tuple = STD

    def __post_init__(self):
        # the task's own checks: name, lengths, alphabet, size
        Task(self.task, list(self.length) if isinstance(self.length, tuple) else self.length, self.alphabet,
             self.width, self.height, self.lowercase)
        if self.head not in HEADS:
            raise CaptchaError(f"model.head={self.head!r}: choose positions or ctc")
        lo, hi = self.lengths
        if self.head == "positions" and lo != hi:
            raise CaptchaError(f"model.head=positions reads a fixed number of characters, but task {self.task} has "
                               f"{lo} to {hi}: use model.head=ctc")
        for key in ("mean", "std"):
            value = getattr(self, key)
            if len(value) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                          for v in value) or (key == "std" and min(value) <= 0):
                raise CaptchaError(f"model.{key}={list(value)}: three numbers, one per RGB channel"
                                   + (", above 0" if key == "std" else ""))

    @classmethod
    def of(cls, task, head: str = "positions", mean=MEAN, std=STD) -> "ModelSpec":
        """From a task (a Task, or its config node or dict) and the model's reading settings."""
        if not isinstance(task, Task):
            task = Task(**{k: v for k, v in dict(task).items()
                           if k in ("name", "length", "alphabet", "width", "height", "lowercase")})
        length = tuple(task.length) if isinstance(task.length, (list, tuple)) else task.length
        return cls(task.name, length, task.alphabet, task.width, task.height, task.lowercase, head,
                   tuple(mean), tuple(std))

    @classmethod
    def read(cls, values, where: str) -> "ModelSpec":
        """From a checkpoint's hyperparameters or an export's contract: every field of the right
        type, or one line naming `where` and the field. Checkpoints made before `head`, `mean`,
        `std` or `lowercase` existed read with their defaults."""
        if not isinstance(values, dict):
            raise CaptchaError(f"{where}: not a captcha-lit model description (a mapping of fields)")
        missing = [k for k in ("task", "length", "alphabet", "width", "height") if k not in values]
        if missing:
            raise CaptchaError(f"{where}: it does not say what the model reads: no {', '.join(missing)}")
        v = {k: values[k] for k in FIELDS if k in values}
        wrong = [k for k, ok in (("task", isinstance(v["task"], str)), ("alphabet", isinstance(v["alphabet"], str)),
                                 ("width", _whole(v["width"])), ("height", _whole(v["height"])),
                                 ("length", _whole(v["length"]) or (isinstance(v["length"], (list, tuple))
                                                                    and len(v["length"]) == 2
                                                                    and all(map(_whole, v["length"])))),
                                 ("lowercase", isinstance(v.get("lowercase", False), bool)),
                                 ("head", isinstance(v.get("head", "positions"), str)),
                                 ("mean", isinstance(v.get("mean", MEAN), (list, tuple))),
                                 ("std", isinstance(v.get("std", STD), (list, tuple)))) if not ok]
        if wrong:
            raise CaptchaError(f"{where}: its {', '.join(f'{k}={v.get(k)!r}' for k in wrong)} is not what a model "
                               f"reads (a name, lengths, alphabet, width, height, head, mean and std)")
        if isinstance(v["length"], (list, tuple)):
            v["length"] = tuple(v["length"])
        for key in ("mean", "std"):
            if key in v:
                v[key] = tuple(v[key])
        try:
            return cls(**v)
        except CaptchaError as e:
            raise CaptchaError(f"{where}: {e}") from None

    def values(self) -> dict:
        """Plain values, for a checkpoint's hyperparameters or a contract (read back by read())."""
        d = asdict(self)
        d["length"] = list(self.length) if isinstance(self.length, tuple) else self.length
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    def task_config(self) -> dict:
        """The task it reads, as a task config (conf/task/*.yaml)."""
        return dict(name=self.task, length=list(self.length) if isinstance(self.length, tuple) else self.length,
                    alphabet=self.alphabet, width=self.width, height=self.height, lowercase=self.lowercase)

    @property
    def lengths(self) -> tuple[int, int]:
        return (self.length, self.length) if isinstance(self.length, int) else tuple(self.length)

    @property
    def steps(self) -> int:
        """The longest label: the per-position heads' count."""
        return self.lengths[1]

    @property
    def classes(self) -> int:
        """Classes of each prediction: the alphabet, plus CTC's blank."""
        return len(self.alphabet) + (self.head == "ctc")

    def reads_like(self, other: "ModelSpec") -> list[str]:
        """The fields in which two models' readings differ (empty: they can be averaged)."""
        return [k for k in FIELDS if k not in ("mean", "std") and getattr(self, k) != getattr(other, k)]


def _whole(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)
