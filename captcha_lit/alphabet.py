"""Alphabets and the label <-> class-index encoding."""
DIGITS = "0123456789"
ALPHANUMERIC = DIGITS + "abcdefghijklmnopqrstuvwxyz"


def check_alphabet(alphabet: str) -> str:
    if not alphabet or len(set(alphabet)) != len(alphabet):
        raise ValueError(f"alphabet {alphabet!r} must be non-empty and list each character once")
    return alphabet


def label_problem(label: str, length: int, alphabet: str) -> str | None:
    """Why `label` cannot be a target of a `length`-character task, or None when it can."""
    if len(label) != length:
        return f"length {len(label)}, expected {length}"
    bad = sorted(set(label) - set(alphabet))
    if bad:
        return f"characters {''.join(bad)!r} not in the alphabet"
    return None


def encode(label: str, alphabet: str) -> list[int]:
    return [alphabet.index(c) for c in label]


def decode(indices, alphabet: str) -> str:
    return "".join(alphabet[int(i)] for i in indices)
