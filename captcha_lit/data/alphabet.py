"""Alphabets and the label <-> class-index encoding, for both kinds of head.

Per-position heads: one class per character, `alphabet.index(c)`. CTC heads: class 0 is the
blank and character i is class i + 1; a step sequence decodes by merging repeats and dropping
blanks, so "f99f" needs a blank between the two 9s."""
import numpy as np

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


def ctc_best_path(log_probs: np.ndarray, shortest: int, longest: int) -> tuple[np.ndarray, float]:
    """The most probable CTC step sequence of (T, classes) log-probabilities whose reading has
    `shortest` to `longest` characters: its characters' indices (class - 1) and its log-probability
    (-inf when no sequence of T steps reads that many). Viterbi over (characters read, last class)."""
    steps, classes = log_probs.shape
    if shortest > steps:  # each character takes a step at least
        return np.zeros(0, dtype=np.intp), -np.inf
    longest = min(longest, steps)
    reads = np.arange(longest + 1)
    best = np.full((longest + 1, classes), -np.inf)
    best[0, 0] = 0.0  # nothing read yet: as if after a blank
    came_from = np.zeros((steps, longest + 1, classes, 2), dtype=np.intp)  # (reads, class) of the step before
    for t in range(steps):
        new = np.empty_like(best)
        top = best.argmax(1)
        new[:, 0] = best[reads, top] + log_probs[t, 0]  # a blank reads nothing new
        came_from[t, :, 0, 0], came_from[t, :, 0, 1] = reads, top
        # class c repeats c (same count) or reads a new character after any other class (one more):
        # `other` is, per count and class c, the best state's class leaving c out (the best, or the runner-up)
        order = np.argsort(best[:-1], 1)
        other = np.where(np.arange(classes) == order[:, -1:], order[:, -2:-1], order[:, -1:])[:, 1:]
        grow = np.vstack([np.full((1, classes - 1), -np.inf), np.take_along_axis(best[:-1], other, 1)])
        grows = grow > best[:, 1:]
        new[:, 1:] = np.where(grows, grow, best[:, 1:]) + log_probs[t, 1:]
        came_from[t, :, 1:, 0] = reads[:, None] - grows
        came_from[t, :, 1:, 1] = np.where(grows, np.vstack([np.zeros((1, classes - 1), np.intp), other]),
                                          np.arange(1, classes))
        best = new
    n, c = np.unravel_index(np.argmax(best[shortest:]), best[shortest:].shape)
    n += shortest
    score = float(best[n, c])
    if score == -np.inf:  # no sequence of these steps reads that many
        return np.zeros(0, dtype=np.intp), score
    path = np.empty(steps, dtype=np.intp)
    for t in range(steps - 1, -1, -1):
        path[t] = c
        n, c = came_from[t, n, c]
    return path[ctc_keep(path)] - 1, score
