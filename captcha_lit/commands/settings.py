"""Every entry point's settings, typed: checked in one place before any work, each refusal one
line naming the key. Keys a config does not have (a group without that setting) are skipped;
what a setting means beyond its type and range (a checkpoint that fits, a folder that exists) is
checked where it is read."""
import math

from omegaconf import OmegaConf

from ..errors import CaptchaError


def whole(lo=None, hi=None, null=False):
    def ok(v):
        return (null and v is None) or (isinstance(v, int) and not isinstance(v, bool)
                                        and (lo is None or v >= lo) and (hi is None or v <= hi))
    span = f" from {lo} to {hi}" if hi is not None else f" of at least {lo}" if lo is not None else ""
    return ok, f"a whole number{span}" + (", or null" if null else "")


def number(lo=None, hi=None, above=None, below=None, null=False):
    def ok(v):
        return (null and v is None) or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                        and (lo is None or v >= lo) and (hi is None or v <= hi)
                                        and (above is None or v > above) and (below is None or v < below))
    parts = [f"at least {lo}" if lo is not None else "", f"above {above}" if above is not None else "",
             f"at most {hi}" if hi is not None else "", f"below {below}" if below is not None else ""]
    return ok, "a number " + " and ".join(p for p in parts if p) + (", or null" if null else "")


def boolean():
    return (lambda v: isinstance(v, bool)), "true or false"


def choice(*options, prefix=None):
    def ok(v):
        return str(v) in options or (prefix is not None and isinstance(v, str) and v.startswith(prefix))
    return ok, "one of " + ", ".join(options) + (f", or {prefix}N" if prefix else "")


def text(null=False):
    return (lambda v: (null and v is None) or (isinstance(v, str) and v != "")), "a name" + (", or null" if null else "")


def sizes():
    """font_sizes: null, or a list of whole numbers of pixels."""
    def ok(v):
        items = list(v) if OmegaConf.is_list(v) or isinstance(v, (list, tuple)) else None
        return v is None or (bool(items) and all(isinstance(x, int) and not isinstance(x, bool) and 1 <= x <= 512
                                                 for x in items))
    return ok, "null, or a list of font sizes in pixels (1 to 512)"


def stages():
    """model.widths and model.strides: one whole number of channels per stage; strides a whole
    number each, or [height, width]."""
    def ok(v):
        items = list(v) if OmegaConf.is_list(v) or isinstance(v, (list, tuple)) else None
        flat = [x for i in items or [] for x in (list(i) if OmegaConf.is_list(i) or isinstance(i, (list, tuple)) else [i])]
        return bool(items) and all(isinstance(x, int) and not isinstance(x, bool) and 1 <= x <= 4096 for x in flat)
    return ok, "a list of whole numbers from 1 to 4096, one per stage (a stride may be [height, width])"


def models():
    """ckpt=: a path, pretrained:NAME, or a list of them."""
    def ok(v):
        items = list(v) if OmegaConf.is_list(v) or isinstance(v, (list, tuple)) else [v]
        return bool(items) and all(isinstance(i, str) and i for i in items)
    return ok, "a checkpoint, export or run folder, or a list of them: ckpt=[A,B]"


DEVICE = choice("auto", "cpu", "cuda", prefix="cuda:")
READING = [("device", DEVICE), ("precision", choice("auto", "int8", "32", "bf16", "16"))]

SCHEMA = {
    "train": [
        ("seed", whole()), ("test", boolean()), ("int8", boolean()), ("final", boolean()), ("compile", boolean()),
        ("task.narrow_alphabet", boolean()), ("task.lowercase", boolean()), ("task.width", whole(8, 2048, null=True)),
        ("task.height", whole(8, 2048, null=True)), ("task.min_width", whole(8, 2048, null=True)),
        ("data.batch_size", whole(1)), ("data.num_train", whole(1)), ("data.num_val", whole(1)),
        ("data.epoch_size", whole(1, null=True)), ("data.epoch_pixels", whole(1, null=True)),
        ("data.synthetic_ratio", number(lo=0)), ("data.real_fraction", number(above=0, hi=1, null=True)),
        ("data.val_fraction", number(lo=0, below=1)),  # 0 only with final=true, which check_config checks
        ("data.test_fraction", number(lo=0, below=1)),
        ("data.fold", whole(0, null=True)),
        ("data.num_workers", whole(0, null=True)), ("data.materialize", boolean()), ("data.fresh_train", boolean()),
        ("data.imagecaptcha_share", number(lo=0, hi=1)), ("data.kaggle_share", number(lo=0, hi=1)),
        ("trainer.max_epochs", (lambda v: v is None or v == -1 or whole(1)[0](v), "a whole number of at least 1 "
                                "(-1: no end)")), ("trainer.max_steps", whole(-1)),
        ("trainer.log_every_n_steps", whole(0)),
        ("optimizer.lr", number(above=0)), ("optimizer.weight_decay", number(lo=0)),
        ("optimizer.momentum", number(lo=0, below=1)),
        ("model.augment", number(lo=0)), ("model.label_smoothing", number(lo=0, below=1)),
        ("model.ema", number(lo=0, below=1)), ("model.blocks_per_stage", whole(1)), ("model.columns", whole(0)),
        ("model.channels_last", boolean()), ("data.font_sizes", sizes()), ("model.widths", stages()), ("model.strides", stages()),
    ],
    # batch_size, num_workers, tta, alphabet and lengths are CaptchaReader's own arguments, checked there
    "predict": [("ckpt", models()), ("data_dir", text()), ("output", text()), ("allow_partial", boolean()),
                ("progress", boolean()), ("fold_case", boolean()), *READING],
    "serve": [("ckpt", (lambda v: v is None or models()[0](v), models()[1] + ", or null")), ("port", whole(0, 65535)),
              ("host", text()), ("default", text(null=True)), ("max_body_mb", number(above=0)),
              ("max_pixels", whole(1)), ("max_images", whole(1)), ("timeout_s", number(above=0)),
              ("body_timeout_s", number(above=0)), ("queue_size", whole(1)), ("max_batch", whole(1)),
              ("fold_case", boolean()), *READING],
    "label": [("data_dir", text()), ("ckpt", (lambda v: v is None or models()[0](v), models()[1] + ", auto or null")),
              ("order", choice("listed", "confidence", "disagree")), ("port", whole(0, 65535)), ("host", text()),
              ("fold_case", boolean()), *READING],
    "generate": [("out", text()), ("seed", whole()), ("num_workers", whole(0, null=True)), ("font_sizes", sizes())],
}


def check_settings(cfg, command: str) -> None:
    """Refuses, in one line naming the key, the first setting of the wrong type or range."""
    for key, (ok, wanted) in SCHEMA[command]:
        node, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(cfg, node) if node else cfg
        if parent is not None and leaf in parent.keys() and OmegaConf.is_missing(parent, leaf):  # `in` skips ???
            raise CaptchaError(f"{key} is not set: add {key}=...")
        if parent is None or leaf not in parent:
            continue
        value = parent[leaf]
        if not ok(value):
            raise CaptchaError(f"{key}={value!r}: must be {wanted}")
