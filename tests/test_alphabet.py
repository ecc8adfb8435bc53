import numpy as np
import torch

from captcha_lit.data.alphabet import ALPHANUMERIC, DIGITS, PAD, ctc_keep, decode, encode
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
