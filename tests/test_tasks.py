from collections import Counter

import pytest

from captcha_lit.data.alphabet import ALPHANUMERIC, DIGITS
from captcha_lit.errors import CaptchaError
from captcha_lit.data.tasks import Task, infer_task, preset


def test_presets_are_the_competitions_tasks():
    assert preset("task1") == Task("task1", 1, DIGITS, 72, 72)
    assert preset("task2") == Task("task2", 2, ALPHANUMERIC, 72, 72)
    assert preset("task3") == Task("task3", 4, ALPHANUMERIC, 96, 72)
    with pytest.raises(CaptchaError, match="task=task9: no such preset"):
        preset("task9")


def test_label_problems():
    task3 = preset("task3")
    assert task3.label_problem("ab12") is None
    assert "length 3, expected 4" in task3.label_problem("ab1")
    assert "not in the alphabet" in task3.label_problem("AB12")
    assert "not in the alphabet" in preset("task1").label_problem("a")  # task1 is digits only
    ranged = Task("x", [4, 6], ALPHANUMERIC, 160, 60)
    assert ranged.lengths == (4, 6)
    assert ranged.label_problem("abcde") is None and "expected 4 to 6" in ranged.label_problem("abc")


@pytest.mark.parametrize("values, message", [
    (dict(length=0), "task.length=0"),
    (dict(length=[6, 4]), "shortest first"),
    (dict(length="four"), "give a number"),
    (dict(alphabet="aab"), "task.alphabet"),
    (dict(width=4), "task.width=4"),
    (dict(height=72.5), "task.height=72.5"),
    (dict(name="my task"), "task.name='my task'"),
])
def test_bad_task_values_are_named(values, message):
    good = dict(name="t", length=4, alphabet=DIGITS, width=96, height=72)
    with pytest.raises(CaptchaError, match=message):
        Task(**{**good, **values})


def test_inference_from_labels_and_sizes():
    labels = ["aB3x", "Zz9q1", "abcd"]
    task, line = infer_task(labels, Counter({(160, 60): 2, (150, 50): 1}), "mine", {})
    assert task == Task("mine", [4, 5], "139BZabcdqxz", 128, 48)  # scaled to fit 160x48, keeping the aspect ratio
    assert "4-5 characters" in line and "1 images of other sizes resized" in line and "160x60 scaled to 128x48" in line
    # case folded on request
    task, line = infer_task(labels, Counter({(400, 100): 3}), "mine", {"lowercase": True})
    assert task.alphabet == "139abcdqxz" and task.lowercase
    assert (task.width, task.height) == (160, 40) and "images of 400x100 scaled to 160x40" in line
    # square images keep 16 pixels of width per character, for the CTC columns (not 48x48)
    task, line = infer_task(["abcde"] * 2, Counter({(256, 256): 2}), "mine", {})
    assert (task.width, task.height) == (80, 48) and "images of 256x256 scaled to 80x48" in line
    # and narrow ones are widened to it (60 pixels would leave 8 columns for 5 characters, 9 needed)
    task, line = infer_task(["abcde"] * 2, Counter({(60, 20): 2}), "mine", {})
    assert (task.width, task.height) == (80, 20) and "images of 60x20 scaled to 80x20" in line
    # values given in the config win over the inferred ones
    task, _ = infer_task(["abcd"] * 3, Counter({(100, 40): 3}), "mine", {"alphabet": ALPHANUMERIC, "length": 4})
    assert task.alphabet == ALPHANUMERIC and task.length == 4 and task.width == 100
    # a size given is said, and so is one too narrow
    task, line = infer_task(["abcd"] * 3, Counter({(96, 72): 3}), "mine", {"width": 128, "height": 48})
    assert (task.width, task.height) == (128, 48) and line.endswith("images of 96x72 scaled to 128x48")
    _, line = infer_task(["abcdefghij"] * 3, Counter({(300, 50): 3}), "mine", {"width": 128, "height": 48})
    assert "task.width=128 leaves under 16 pixels a character for 10 characters: CTC may not fit them; " \
           "task.width=160 would" in line


def test_height_given_alone_keeps_the_aspect_ratio_above_min_width():
    # as experiment=auto asks: a height, and at least a width
    given = {"height": 48, "min_width": 128}
    sizes = {(200, 40): (240, 48), (150, 50): (144, 48), (96, 72): (128, 48), (72, 72): (128, 48)}
    for (w, h), expected in sizes.items():
        task, line = infer_task(["abcde"] * 2, Counter({(w, h): 2}), "mine", given)
        assert (task.width, task.height) == expected and f"images of {w}x{h} scaled to {expected[0]}x48" in line
    # without min_width, only the CTC room of 16 pixels a character bounds it
    task, _ = infer_task(["abcde"] * 2, Counter({(96, 72): 2}), "mine", {"height": 48})
    assert (task.width, task.height) == (80, 48)
