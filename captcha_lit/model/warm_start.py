"""init_from=CKPT: a run that starts from another model's weights (fine-tuning, or another
alphabet or length, or a wider network), with what does not fit started fresh."""
import torch

from ..errors import CaptchaError
from .checkpoint import read_checkpoint
from .packaged import model_path, pretrained
from .spec import ModelSpec


def ctc_rows(old: str, new: str) -> list[int | None]:
    """For a CTC head of alphabet `new` started from one of alphabet `old`: the old row of each new
    row (row 0 is the blank, row i + 1 character i), None for a character the old head never read."""
    return [0] + [old.index(c) + 1 if c in old else None for c in new]


def head_rows(theirs: ModelSpec, ours: ModelSpec) -> list[int | None] | None:
    """The checkpoint's head row for each row of this model's head, mapped by character (None: a
    character it never read); None when the heads cannot be mapped (another kind, or per-position
    heads of another length). Per-position heads are one fused Linear: row p * classes + i is
    position p's score of character i."""
    if theirs.head != ours.head:
        return None
    if ours.head == "ctc":
        return ctc_rows(theirs.alphabet, ours.alphabet)
    if theirs.length != ours.length:
        return None
    old = theirs.alphabet
    return [p * len(old) + old.index(c) if c in old else None for p in range(ours.steps) for c in ours.alphabet]


def widened(old: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor | None:
    """A layer of a wider network (more channels, same kernel) started from the narrow one's: `old` fills
    the leading slice of `fresh` (the wider layer's own initialisation) and the weights from the new input
    channels into the old outputs are zero, so the wider network computes what the narrow one did and its
    new channels learn from there. None where `old` does not fit that way."""
    if old.dim() != fresh.dim() or old.shape[2:] != fresh.shape[2:] or any(o > n for o, n in zip(old.shape, fresh.shape)):
        return None
    value = fresh.clone()
    value[tuple(slice(0, n) for n in old.shape)] = old
    if old.dim() > 1:
        value[:old.shape[0], old.shape[1]:] = 0
    return value


def start_from(model, path) -> None:
    """init_from=CKPT: the run starts from that checkpoint's weights wherever a name and shape
    match (a network pretrained on rendered images, or trained on another alphabet or length).
    A head of another alphabet keeps the rows of the characters both read (a character the
    checkpoint never read starts fresh); per-position heads of another length or a head of the
    other kind start fresh. A network of wider stages (model.widths) starts from the narrow one's function
    (widened). init_from=pretrained: the reader captcha-lit ships for the task;
    pretrained:NAME: the packaged reader NAME (pretrained:general). The optimizer, schedule and epochs start anew."""
    path = pretrained(model.spec.task) if path == "pretrained" else model_path(path)
    hparams, state = read_checkpoint(path)
    theirs, ours = ModelSpec.read(hparams, str(path)), model.spec
    # the network the checkpoint predicts with (its weight average, if it kept one) starts both of
    # this run's copies, the trained one and (with model.ema) the average
    prefix = "ema_net." if any(k.startswith("ema_net.") for k in state) else "net."
    source = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    own = model.state_dict()
    # heads that read another alphabet, or the same characters in another order, would load by
    # shape alone and name every character wrongly
    same_heads = (theirs.alphabet, theirs.length, theirs.head) == (ours.alphabet, ours.length, ours.head)
    for key in ("mean", "std"):  # the weights expect inputs scaled as they were trained on
        if getattr(theirs, key) != getattr(ours, key):
            raise CaptchaError(f"init_from={path}: it was trained with model.{key}={list(getattr(theirs, key))}, this "
                               f"run sets {list(getattr(ours, key))}: set model.{key}={list(getattr(theirs, key))} "
                               f"(or init_from=null)")
    fits, wider = {}, 0
    for k in own:
        name = k.split(".", 1)[1]
        if name not in source or (name.startswith("heads.") and not same_heads):
            continue
        value = source[name] if source[name].shape == own[k].shape else widened(source[name], own[k])
        if value is not None:
            fits[k], wider = value, wider + (value.shape != source[name].shape)
    mapped = ""
    rows = None if same_heads else head_rows(theirs, ours)
    if rows is not None and all(f"heads.{p}" in source for p in ("weight", "bias")):
        for p in ("weight", "bias"):
            key, old = f"net.heads.{p}", source[f"heads.{p}"]
            if old.dim() == 2 and old.shape[1] < own[key].shape[1]:  # a wider network's new features: read by no row yet
                old = torch.nn.functional.pad(old, (0, own[key].shape[1] - old.shape[1]))
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
            fresh_chars = "".join(c for c in ours.alphabet if c not in theirs.alphabet)
            kind = "CTC" if ours.head == "ctc" else "per-position"
            mapped = (f"; {kind} head: {len(ours.alphabet) - len(fresh_chars)} characters kept"
                      + (f", {fresh_chars!r} fresh" if fresh_chars else ""))
    if not fits.keys() & dict(model.named_parameters()).keys():
        raise CaptchaError(f"init_from={path}: none of its weights fit this model (init_from=null trains from scratch): "
                           f"it has widths={hparams.get('widths')}, "
                           f"strides={hparams.get('strides')}, blocks_per_stage={hparams.get('blocks_per_stage')}")
    model.load_state_dict(fits, strict=False)
    fresh = sorted({k.rsplit(".", 1)[0] for k in own if k not in fits})
    print(f"init_from={path}: {len(fits)} of {len(own)} weights loaded{mapped}"
          + (f"; {wider} widened" if wider else "")
          + (f"; starting fresh: {', '.join(fresh)}" if fresh else ""))
