import itertools

import numpy as np
import torch

from captcha_lit.data.alphabet import ALPHANUMERIC, DIGITS, PAD, ctc_best_path, ctc_keep, decode, encode
from captcha_lit.model.module import compared, greedy_decode
from captcha_lit.reading.reader import decode_logits


def test_encode_decode_round_trip():
    assert encode("a0z9", ALPHANUMERIC) == [10, 0, 35, 9]
    assert decode([10, 0, 35, 9], ALPHANUMERIC) == "a0z9"
    assert decode(encode("7", DIGITS), DIGITS) == "7"
    assert encode("12", DIGITS, width=4) == [1, 2, PAD, PAD]  # shorter labels of a variable-length task
    assert decode([1, 2, PAD, PAD], DIGITS) == "12"


def one_hot_steps(classes, num_classes):
    """Logits whose argmax at step t is classes[t]."""
    logits = np.full((len(classes), num_classes), -5.0, dtype=np.float32)
    logits[np.arange(len(classes)), classes] = 5.0
    return logits


def test_ctc_greedy_decoding_merges_repeats_and_keeps_blank_separated_ones():
    alphabet = "f9"  # classes: 0 blank, 1 'f', 2 '9'
    cases = {
        (1, 1, 0, 2, 2, 0, 2, 1, 0): "f99f",  # a blank between two 9s keeps both
        (1, 2, 2, 2, 1): "f9f",               # repeats without a blank merge
        (0, 0, 0): "",
        (2, 0, 0, 0, 2): "99",
    }
    for steps, text in cases.items():
        steps = np.asarray(steps)
        assert decode(steps[ctc_keep(steps)] - 1, alphabet) == text
        logits = one_hot_steps(steps, 3)
        assert decode_logits(logits[None], "ctc", alphabet)[0] == [text]  # the reader's numpy path
        torch_rows = greedy_decode(torch.from_numpy(logits[None]), "ctc")  # the training metrics' torch path
        assert decode(torch_rows[0].tolist(), alphabet) == text


def test_per_position_decoding_and_confidence():
    logits = np.stack([one_hot_steps([3, 0, 9], 10), one_hot_steps([1, 1, 2], 10)])
    labels, confidence = decode_logits(logits, "positions", DIGITS)
    assert labels == ["309", "112"]
    p = np.exp(5.0) / (np.exp(5.0) + 9 * np.exp(-5.0))
    assert np.allclose(confidence, p ** 3)


def test_ctc_confidence_is_the_greedy_paths_blanks_included():
    # "1-1-" reads "11"; four near-even blanks read nothing, and that is no certainty
    logits = np.stack([one_hot_steps([2, 0, 2, 0], 11), np.full((4, 11), 0.0)])
    logits[1, :, 0] = 0.1  # the blank wins every step, barely
    labels, confidence = decode_logits(logits, "ctc", DIGITS)
    assert labels == ["11", ""]
    p = np.exp(5.0) / (np.exp(5.0) + 10 * np.exp(-5.0))
    assert np.allclose(confidence[0], p ** 4) and confidence[1] < 0.01


def test_ctc_readings_are_compared_with_labels_at_one_width():
    # CTC steps "1-1-" read "11" (two steps of four); labels are padded to 3
    logits = torch.nn.functional.one_hot(torch.tensor([[2, 0, 2, 0], [3, 3, 0, 0]]), 11).float()
    targets = torch.tensor([[1, 1, PAD], [2, 2, PAD]])
    preds, padded = compared(logits, targets, "ctc")
    assert preds.shape == padded.shape == (2, 4)
    assert (preds == padded).all(1).tolist() == [True, False]  # "33" merges into one 2: "2" is not "22"


def test_the_best_ctc_path_of_a_length_is_the_best_of_all_paths_of_that_length():
    rng = np.random.default_rng(0)
    for _ in range(200):  # every path of up to 5 steps of up to 4 classes, scored one by one
        steps, classes = rng.integers(1, 6), rng.integers(2, 5)
        x = rng.normal(size=(steps, classes)) * 2
        log_probs = x - np.log(np.exp(x).sum(1, keepdims=True))
        shortest = rng.integers(0, 3)
        longest = shortest + rng.integers(0, 3)
        best = {}  # reading -> its most probable path's log-probability
        for path in map(np.array, itertools.product(range(classes), repeat=steps)):
            reading = tuple(path[ctc_keep(path)] - 1)
            if shortest <= len(reading) <= longest:
                best[reading] = max(best.get(reading, -np.inf), log_probs[np.arange(steps), path].sum())
        got, score = ctc_best_path(log_probs, shortest, longest)
        if not best:  # too few steps for that many characters
            assert score == -np.inf
            continue
        assert np.isclose(score, max(best.values())) and np.isclose(best[tuple(got)], score)
    # no more characters than steps: a longest of a billion costs nothing more
    got, score = ctc_best_path(np.log(np.full((3, 4), 0.25)), 1, 10**9)
    assert 1 <= len(got) <= 3 and np.isclose(score, 3 * np.log(0.25))


def test_ctc_reading_kept_to_a_length_range():
    # "a" greedily (a, a, blank); the likeliest path that reads two characters reads "ab"
    probs = np.array([[0.05, 0.9, 0.05], [0.0, 0.6, 0.4], [0.6, 0.0, 0.4]]) + 1e-9  # blank, a, b
    logits = np.log(probs)[None]
    assert decode_logits(logits, "ctc", "ab")[0] == ["a"]
    labels, confidence = decode_logits(logits, "ctc", "ab", lengths=(2, 3))
    assert labels == ["ab"] and np.isclose(confidence[0], 0.9 * 0.6 * 0.4, rtol=1e-6)
    assert decode_logits(logits, "ctc", "ab", lengths=(1, 2))[0] == ["a"]  # in range: the greedy reading
    assert decode_logits(logits, "ctc", "ab", lengths=(4, 4))[0] == ["a"]  # 3 steps cannot read 4: greedy stays
