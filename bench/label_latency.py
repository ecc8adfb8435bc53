#!/usr/bin/env python3
"""From Enter to the next image on the captcha-label page, in the system's headless Chromium.

    python bench/label_latency.py [--images 60] [--ckpt auto]

Renders --images captchas into a temporary folder, starts `captcha-label` over it (the packaged general
reader's guesses by default), and accepts every guess with Enter. For each key it measures, in the
page, the time until the next image is shown with its guess typed in and has finished loading.
Prints the median, 95th percentile and worst, in milliseconds.
"""
import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from captcha.image import ImageCaptcha
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--images", type=int, default=60)
parser.add_argument("--ckpt", default="auto")
args = parser.parse_args()

folder = Path(tempfile.mkdtemp(prefix="label-latency-"))
for i in range(args.images):
    ImageCaptcha(160, 60).generate_image(f"{i:04d}").save(folder / f"{i:04d}.png")
server = subprocess.Popen([sys.executable, "-c", "from captcha_lit.commands.cli import label; label()",
                           f"data_dir={folder}", f"ckpt={args.ckpt}", "port=0"], stdout=subprocess.PIPE, text=True)
url = "http://" + server.stdout.readline().split("http://")[1].split(";")[0].strip()
options = webdriver.ChromeOptions()
options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
    options.add_argument(arg)
browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=shutil.which("chromedriver")))
ready = ("const p = document.getElementById('picture'), a = document.getElementById('answer');"
         "return document.getElementById('where').textContent.startsWith(arguments[0] + ' /') && p.complete"
         " && p.naturalWidth > 0 && a.value.length > 0;")
waits = []
try:
    browser.get(url)
    wait = WebDriverWait(browser, 30, poll_frequency=0.002)
    wait.until(lambda d: d.execute_script(ready, "1"))
    time.sleep(2)  # the first guesses arrive; the page reads ahead from here on
    for i in range(1, args.images):
        began = time.perf_counter()
        browser.find_element(By.ID, "answer").send_keys(Keys.ENTER)
        wait.until(lambda d: d.execute_script(ready, str(i + 1)))
        waits.append(1000 * (time.perf_counter() - began))
finally:
    browser.quit()
    server.kill()
waits.sort()
print(f"{len(waits)} keys: median {statistics.median(waits):.0f} ms, p95 {waits[int(0.95 * len(waits)) - 1]:.0f} ms, "
      f"worst {waits[-1]:.0f} ms (WebDriver's round trip included)")
