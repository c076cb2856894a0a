"""Headless Chromium for tests: a page's screenshot and its rendered DOM.

:func:`chromium` finds the browser (``SOP_CHROMIUM``, else ``chromium`` / ``chromium-browser`` /
``google-chrome`` on PATH) or skips the test saying why; ``.ci/run`` installs Debian's
``chromium`` where apt can. :func:`render` loads a URL or file once for the DOM (after scripts
ran) and once for a PNG, with every host but 127.0.0.1 unresolvable; :func:`assert_not_blank`
holds that the PNG shows something.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
SIZE = (1400, 1000)
# Virtual time lets the page's scripts and timers run to the end without a wall-clock wait.
BUDGET_MS = 15000
# Offline as on a GPU cluster: no name resolves but this machine's, so a page that needs a CDN
# renders blank here too.
OFFLINE = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost"


@dataclass(frozen=True)
class Page:
    dom: str
    screenshot: Path


def chromium() -> str:
    """The browser's path; skips the calling test when there is none."""
    named = os.environ.get("SOP_CHROMIUM")
    for candidate in ([named] if named else []) + [shutil.which(n) or "" for n in NAMES]:
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.skip(
        "no Chromium (set SOP_CHROMIUM, or `apt-get install chromium`; .ci/run installs it)"
    )


def _run(browser: str, args: list[str], profile: Path, timeout: float) -> str:
    command = [
        browser,
        "--headless",
        "--no-sandbox",  # root in CI, and in containers without user namespaces
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--window-size={SIZE[0]},{SIZE[1]}",
        f"--virtual-time-budget={BUDGET_MS}",
        OFFLINE,
        *args,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise AssertionError(f"chromium exited {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout


def render(
    url: str | Path, screenshot: Path, expect: tuple[str, ...] = (), timeout: float = 180
) -> Page:
    """Load ``url`` (a URL, or a file's path) in headless Chromium: its DOM and a screenshot.
    The DOM is loaded again (3 loads at most) until it holds every text of ``expect``: a page
    that fills in after a server's first, cold answers (MLflow's charts) does so on a later one.
    """
    target = url.resolve().as_uri() if isinstance(url, Path) else url
    browser = chromium()
    with tempfile.TemporaryDirectory(prefix="sop-chromium-") as profile:
        for _ in range(3):
            dom = _run(browser, ["--dump-dom", target], Path(profile), timeout)
            if all(text in dom for text in expect):
                break
        _run(browser, [f"--screenshot={screenshot}", target], Path(profile), timeout)
    if not screenshot.is_file():
        raise AssertionError(f"chromium wrote no screenshot of {target}")
    screenshot.with_suffix(".html").write_text(dom)  # beside it, for a look when a test fails
    return Page(dom=dom, screenshot=screenshot)


def colours(png: Path) -> int:
    """How many distinct colours the image holds."""
    from PIL import Image

    with Image.open(png) as image:
        found = image.convert("RGB").getcolors(maxcolors=1 << 24)
    return len(found or [])


def assert_not_blank(png: Path, at_least: int = 16, most_share: float = 0.97) -> None:
    """``png`` shows something: ``at_least`` distinct colours, and no colour (a blank page's
    white) covers more than ``most_share`` of it."""
    from PIL import Image

    with Image.open(png) as image:
        rgb = image.convert("RGB")
        counts = rgb.getcolors(maxcolors=1 << 24) or []
        pixels = rgb.width * rgb.height
    top = max(count for count, _ in counts) / pixels if counts else 1.0
    assert len(counts) >= at_least, f"{png}: {len(counts)} colours: a blank page?"
    assert top <= most_share, f"{png}: one colour covers {top:.1%} of it: a blank page?"
