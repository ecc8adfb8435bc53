"""Alphabets and the label <-> class-index encoding, for both kinds of head.

Per-position heads: one class per character, `alphabet.index(c)`. CTC heads: class 0 is the
blank and character i is class i + 1; a step sequence decodes by merging repeats and dropping
blanks, so "f99f" needs a blank between the two 9s."""

DIGITS = "0123456789"
ALPHANUMERIC = DIGITS + "abcdefghijklmnopqrstuvwxyz"
PAD = -1  # fills the targets of labels shorter than the task's longest


def check_alphabet(alphabet: str) -> str:
    if not isinstance(alphabet, str) or not alphabet or len(set(alphabet)) != len(alphabet):
        raise ValueError(f"alphabet {alphabet!r} must be non-empty and list each character once")
    return alphabet


def encode(label: str, alphabet: str, width: int | None = None) -> list[int]:
    """Class indices of the label's characters, padded with PAD to `width`."""
    indices = [alphabet.index(c) for c in label]
    return indices + [PAD] * ((width or len(indices)) - len(indices))


def decode(indices, alphabet: str) -> str:
    return "".join(alphabet[int(i)] for i in indices if int(i) >= 0)


def ctc_keep(steps):
    """Greedy CTC decoding, the one rule both training (torch tensors) and reading (numpy arrays)
    use: True at the steps of (..., T) per-step classes that give a character (not the blank 0,
    not a repeat of the step before); that character's index is class - 1."""
    keep = steps != 0
    keep[..., 1:] &= steps[..., 1:] != steps[..., :-1]
    return keep
