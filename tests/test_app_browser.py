"""The app in a real browser: `patch-align app` on the tiny checkpoints, driven by headless Chromium.

Upload an image, ask and read the streamed answer, type a word and see its heatmap, click a patch
and read its words; both columns of --compare answer. Screenshots go to the test's tmp folder
(their paths are printed). Needs Debian's chromium + chromium-driver (`make system-deps` installs
them in CI) and the `app` extra; skips with the reason otherwise (a skip fails in CI).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(golden_dir, tmp_path_factory):
    pytest.importorskip("gradio", reason="the app extra is not installed (pip install -e '.[app]')")
    fixtures = golden_dir / "fixtures-437"
    port = _free_port()
    log = tmp_path_factory.mktemp("app") / "app.log"
    command = [
        sys.executable, "-m", "patch_align.cli", "app",
        "--model-path", str(golden_dir / "llava-v1.5-tiny"),
        "--compare", str(golden_dir / "llava-tiny-pretrain"), "--compare-base", str(fixtures / "llm"),
        "--pad", str(fixtures / "pad.json"), "--image-folder", str(fixtures / "images"),
        "--conv-mode", "llava_v1", "--device", "cpu", "--port", str(port),
    ]
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                pytest.fail(f"the app exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the app did not answer on {url} in 180 s:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the dev extra)")
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("no chromium/chromedriver on PATH (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,2200"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _wait(driver, condition, timeout=120):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.25).until(condition)


def _text(driver, css: str) -> str:
    from selenium.webdriver.common.by import By

    return " ".join(element.text for element in driver.find_elements(By.CSS_SELECTOR, css))


def _shot(driver, folder: Path, name: str) -> None:
    path = folder / f"{name}.png"
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")


def test_upload_ask_heatmap_and_click_a_patch_in_chromium(app_url, browser, golden_dir, tmp_path):
    from selenium.webdriver import ActionChains
    from selenium.webdriver.common.by import By

    image = golden_dir / "fixtures-437" / "images" / "img000.png"
    browser.get(app_url)
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#upload input[type=file]"))
    browser.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(image))
    _wait(browser, lambda d: "shown as the model saw it" in _text(d, "#status"))
    status = _text(browser, "#status")
    assert "img000.png: 80x60 px shown as the model saw it (pad: 56x56 px, 4x4 patches" in status
    for column in (0, 1):
        _wait(browser, lambda d, c=column: d.find_elements(By.CSS_SELECTOR, f"#patches{c} img"))

    browser.find_element(By.CSS_SELECTOR, "#question textarea").send_keys("What is in the picture?")
    browser.find_element(By.CSS_SELECTOR, "#ask").click()
    _wait(browser, lambda d: _text(d, "#status").strip() == "answered")
    for column in (0, 1):
        chat = _text(browser, f"#chat{column}")
        assert "What is in the picture?" in chat
        assert len(chat.replace("What is in the picture?", "").strip()) > 0, chat  # the answer is shown
    _shot(browser, tmp_path, "1-answered")

    browser.find_element(By.CSS_SELECTOR, "#word textarea").send_keys("box")
    browser.find_element(By.CSS_SELECTOR, "#show").click()
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#heatmap0 img")
          and d.find_elements(By.CSS_SELECTOR, "#heatmap1 img"))
    assert "'box': upstream_golden/llava-v1.5-tiny: cosine" in _text(browser, "#status")

    patches = browser.find_element(By.CSS_SELECTOR, "#patches0 img")
    width, height = patches.size["width"], patches.size["height"]
    # row 1, column 2 of the 4x4 grid: 0.6 of the width, 0.3 of the height (offsets from the centre)
    offset = (int(0.1 * width), int(-0.2 * height))
    ActionChains(browser).move_to_element_with_offset(patches, *offset).click().perform()
    _wait(browser, lambda d: "Nearest words of patch 6" in _text(d, "#words0"))
    assert "Matching pursuit" in _text(browser, "#words0")
    status = _text(browser, "#status")
    assert "patch 6 (row 1, column 2) = original pixels x 40.0..60.0, y 10.0..30.0" in status
    # the stage-1 projector's config crops to a square: 80x60 -> 74x56, the crop drops 9 px on the left
    assert "original pixels x 40.0..55.1, y 15.0..30.0" in _text(browser, "#words1")
    assert "Nearest words of patch 6" in _text(browser, "#words1")
    _shot(browser, tmp_path, "2-patch-and-heatmap")


def test_a_non_image_upload_and_an_unknown_word_are_messages_on_the_page(app_url, browser, tmp_path):
    from selenium.webdriver.common.by import By

    text = tmp_path / "notes.txt"
    text.write_text("not a picture")
    browser.get(app_url)
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#upload input[type=file]"))
    browser.find_element(By.CSS_SELECTOR, "#word textarea").send_keys("box")
    browser.find_element(By.CSS_SELECTOR, "#show").click()
    _wait(browser, lambda d: "no image: upload or pick one first" in _text(d, "#status"))
    browser.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(text))
    _wait(browser, lambda d: "notes.txt is not an image file" in _text(d, "#status"))
    assert "Traceback" not in browser.page_source
    _shot(browser, tmp_path, "3-bad-input")
