"""captcha-label over real HTTP: in a real browser (the system's headless Chromium, driven by
Selenium) it labels twenty images by keyboard while the server is killed and started again."""
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest
import torch
from captcha.image import ImageCaptcha
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from captcha_lit.errors import CaptchaError
from captcha_lit.model.module import CaptchaModule
from captcha_lit.reading.reader import CaptchaReader

from .helpers import module_args

CHROMIUM, DRIVER = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")

TRUTH = ["7" if i % 2 == 0 else str((3 * i) % 7) for i in range(20)]  # even images are 7s: the guess is right


def guessing_seven(path):
    """A task1 checkpoint that reads '7' whatever the image."""
    module = CaptchaModule(**module_args("task1"), widths=(16, 16, 32, 32))
    state = module.state_dict()
    state["net.heads.weight"].zero_()
    state["net.heads.bias"] = torch.full((10,), -5.0)
    state["net.heads.bias"][7] = 5.0
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": state}, path)


def start(folder, ckpt, *extra):
    proc = subprocess.Popen([sys.executable, "-c", "from captcha_lit.commands.cli import label; label()",
                             f"data_dir={folder}", f"ckpt={ckpt}", "port=0", "precision=32", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert "labelling" in line, line + proc.stderr.read()
    return proc, "http://" + line.split("http://")[1].split(";")[0].strip()


def rows(folder):
    with open(folder / "annotations.csv", newline="") as f:
        return list(csv.reader(f))[1:]


@pytest.fixture
def browser():
    if not (CHROMIUM and DRIVER):  # CI installs both (.ci/run); elsewhere: apt-get install chromium chromium-driver
        if os.environ.get("CI"):
            raise RuntimeError("CI must have chromium and chromedriver for the browser test")
        pytest.skip("no chromium/chromedriver on this machine")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    yield driver
    driver.quit()


def test_twenty_images_labelled_by_keyboard_across_a_server_kill(tmp_path, browser):
    folder = tmp_path / "shots"
    folder.mkdir()
    for i, label in enumerate(TRUTH):
        ImageCaptcha(72, 72).generate_image(label).save(folder / f"img{i:02d}.png")
    (folder / "notes.png").write_text("not an image")  # refused, named on the page
    guessing_seven(tmp_path / "seven.ckpt")
    proc, url = start(folder, tmp_path / "seven.ckpt")
    wait = WebDriverWait(browser, 20)
    try:
        browser.get(url)
        for i in range(20):
            if i == 10:  # the server dies with half done; started again, the page goes on where it stopped
                wait.until(lambda d: "10 of 20 done" in d.find_element(By.ID, "counts").text)
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                assert [r[1] for r in rows(folder)] == TRUTH[:10]
                proc, url = start(folder, tmp_path / "seven.ckpt")
                browser.get(url)
            wait.until(lambda d: d.find_element(By.ID, "where").text.startswith(f"{i + 1} / 20: img{i:02d}.png"))
            box = browser.find_element(By.ID, "answer")
            wait.until(lambda d: box.get_attribute("value") == "7")  # the guess, typed in and selected
            assert browser.execute_script("return arguments[0].selectionStart === 0 && "
                                          "arguments[0].selectionEnd === arguments[0].value.length", box)
            if i == 15:  # skip, then come back
                box.send_keys(Keys.ARROW_DOWN)
                wait.until(lambda d: d.find_element(By.ID, "where").text.startswith("17 / 20"))
                browser.find_element(By.ID, "answer").send_keys(Keys.ARROW_UP)
                wait.until(lambda d: d.find_element(By.ID, "where").text.startswith("16 / 20"))
                box = browser.find_element(By.ID, "answer")
            if i == 19:  # unreadable first, then back to it and labelled after all
                box.send_keys(Keys.SHIFT, Keys.ENTER)
                wait.until(lambda d: "1 unreadable" in d.find_element(By.ID, "counts").text)
                box.send_keys(Keys.ARROW_UP)
                wait.until(lambda d: d.find_element(By.ID, "where").text.startswith("20 / 20"))
            # accepting a right guess is one key; a wrong one is replaced by typing
            box.send_keys(Keys.ENTER if TRUTH[i] == "7" else TRUTH[i] + Keys.ENTER)
        wait.until(lambda d: "20 of 20 done" in d.find_element(By.ID, "counts").text)
        assert "notes.png" in browser.find_element(By.ID, "error").text
        assert rows(folder) == [[f"img{i:02d}.png", label] for i, label in enumerate(TRUTH)]
        state = json.loads((folder / ".captcha-label.json").read_text())
        assert state == {"unreadable": [], "counts": {"accepted": 10, "typed": 10}}
        for sneaky in ("../seven.ckpt", "..%2Fseven.ckpt", "%2E%2E/seven.ckpt", "notes.png", "annotations.csv"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(f"{url}/image/{sneaky}", timeout=10)
            assert refused.value.code == 404, sneaky
    finally:
        proc.kill()


def test_alphabet_narrows_the_guesses_to_the_sites_characters(tmp_path):
    folder = tmp_path / "shots"
    folder.mkdir()
    for i in range(3):
        ImageCaptcha(72, 72).generate_image(str(i)).save(folder / f"img{i}.png")
    guessing_seven(tmp_path / "seven.ckpt")
    proc, url = start(folder, tmp_path / "seven.ckpt", "alphabet='0123'")  # a site without 7s
    try:
        for _ in range(100):
            got = json.load(urllib.request.urlopen(url + "/api/items"))
            if not got["summary"]["guessing"]:
                break
            time.sleep(0.1)
        guesses = [item["guess"] for item in got["items"]]
        assert len(guesses) == 3 and all(g in ("0", "1", "2", "3") for g in guesses), guesses
    finally:
        proc.kill()
        proc.wait(10)


class LowerCaseReader:
    """A reader with fold_case=true: its guesses are lower case."""
    fold_case, source, spec = True, "stub", SimpleNamespace(lowercase=False)

    def predict(self, paths):
        return ["ab", "zz"][:len(paths)], [0.9] * len(paths)


def test_disagree_order_ignores_case_when_the_guesses_are_folded(tmp_path):
    from captcha_lit.web.label import Labels

    for name in ("a.png", "b.png"):
        ImageCaptcha(72, 72).generate_image("x").save(tmp_path / name)
    (tmp_path / "annotations.csv").write_text("filename,label\na.png,AB\nb.png,xy\n")
    labels = Labels(tmp_path, LowerCaseReader(), order="disagree")
    labels.reading.run()
    assert [r["name"] for r in labels.items()] == ["b.png", "a.png"]  # b.png's label disagrees; a.png's only by case
    labels.reader.fold_case = False
    assert [r["guess"] for r in labels.items()] == ["ab", "zz"]  # both disagree now: listed order
    labels.reader.spec = SimpleNamespace(lowercase=True)  # a model trained with task.lowercase=true guesses lower case
    assert [r["name"] for r in labels.items()] == ["b.png", "a.png"]


def test_an_image_that_does_not_decode_gets_no_guess_and_the_others_do(tmp_path, caplog):
    from captcha_lit.web.label import Labels

    for i in range(3):
        ImageCaptcha(72, 72).generate_image(str(i)).save(tmp_path / f"img{i}.png")
    whole = (tmp_path / "img1.png").read_bytes()
    (tmp_path / "img1.png").write_bytes(whole[:len(whole) // 3])  # its header reads, its pixels do not
    guessing_seven(tmp_path / "seven.ckpt")
    labels = Labels(tmp_path, CaptchaReader.from_checkpoint(tmp_path / "seven.ckpt", precision="32"), order="confidence")
    labels.reading.run()
    assert {r["name"]: r["guess"] for r in labels.items()} == {"img1.png": None, "img0.png": "7", "img2.png": "7"}
    assert "no guess for img1.png" in caplog.text


def test_orders_by_guesses_need_a_reader(tmp_path):
    from captcha_lit.web.label import Labels

    ImageCaptcha(72, 72).generate_image("x").save(tmp_path / "a.png")
    for order in ("confidence", "disagree"):
        with pytest.raises(CaptchaError, match=f"order={order}: needs a reader's guesses"):
            Labels(tmp_path, None, order=order)
    assert Labels(tmp_path, None).items()[0]["name"] == "a.png"


@pytest.mark.parametrize("state", ['{"unreadable": "abc"}', '[1, 2]', '{"counts": {"typed": "3"}}', "{"])
def test_a_state_file_that_is_not_ours_is_refused_by_name(tmp_path, state):
    from captcha_lit.web.label import STATE, Labels

    ImageCaptcha(72, 72).generate_image("x").save(tmp_path / "a.png")
    (tmp_path / STATE).write_text(state)
    with pytest.raises(CaptchaError, match=r"\.captcha-label\.json: not captcha-label's state file"):
        Labels(tmp_path)
