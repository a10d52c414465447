"""Build the documentation site, open it in headless Chromium, take screenshots and check them.

The site is built strictly into a temporary folder and served on 127.0.0.1 (a free port). For the
home page, the API reference of ``LFPOptimizer`` and the benchmarks page (which shows plots),
Chromium writes a screenshot and the DOM after the page's scripts ran. Each page passes when

* the screenshot is not blank (many distinct colours, and no tall band of empty rows),
* the DOM contains the texts that page must show,
* and, for the page with plots, the server delivered the plot and the screenshot contains the
  plot's line colours (matplotlib's blue and orange, which the site's theme does not use).

Needs the system Chromium (Debian: ``apt-get install -y chromium``) and is run by hand:

    python scripts/screenshot_docs.py                      # screenshots in outputs/screenshots/
    python scripts/screenshot_docs.py --out /tmp/shots --chromium /usr/bin/chromium

Exit status 1 if any check fails. MathJax comes from a CDN, so formulas show as TeX source when
the machine is offline; that is not checked.
"""

from __future__ import annotations

import argparse
import functools
import html
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--hide-scrollbars",
    "--window-size=1280,1400",
    "--virtual-time-budget=8000",  # let the page's scripts run before the capture
)
MIN_DISTINCT_COLOURS = 64
"""A blank or failed page (one background colour, an error icon) has far fewer colours than this."""
MAX_BLANK_BAND = 0.25
"""The tallest band of one-colour rows may cover at most this fraction of the screenshot (a page
drawn only in part leaves a tall empty band; the gaps between paragraphs are short)."""
PLOT_COLOURS = {"matplotlib blue": (31, 119, 180), "matplotlib orange": (255, 127, 14)}
MIN_PLOT_PIXELS = 200
"""Pixels within `COLOUR_TOLERANCE` of each plot colour that a rendered plot leaves in the screenshot."""
COLOUR_TOLERANCE = 40


@dataclass(frozen=True)
class Page:
    """A page to capture, and what must be in its DOM."""

    name: str
    path: str
    expected_texts: tuple[str, ...]
    plot: str | None = None
    """A plot the page shows: the server must deliver it, and its colours must be on screen."""


PAGES = (
    Page(
        "home", "/", ("Layer-wise Feedback Propagation", "The one-line swap", "LFPOptimizer(model, SoftmaxLossReward()")
    ),
    Page(
        "api-lfpoptimizer",
        "/api/",
        ("lfpoptim.LFPOptimizer", "feedback_reduction", "reward_fn", "LFPStepResult"),
    ),
    Page(
        "benchmarks",
        "/benchmarks/",
        ("Cost of a step", "memory ratio", "scripts/docs_plots.py"),
        plot="plots/step_time.png",
    ),
)


class LoggingHandler(SimpleHTTPRequestHandler):
    """Serves the built site and records every request path with its status."""

    requests: list[tuple[str, int]]

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.requests.append((self.path, int(code) if str(code).isdigit() else 0))

    def log_message(self, format: str, *args: object) -> None:
        """Keep the console quiet; `log_request` records what matters."""


@contextmanager
def serve(site: Path) -> Iterator[tuple[str, list[tuple[str, int]]]]:
    """Serve ``site`` on 127.0.0.1 at a free port; yield its base URL and the request log."""
    requests: list[tuple[str, int]] = []
    handler = type("Handler", (LoggingHandler,), {"requests": requests})
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()


def build_site(destination: Path) -> None:
    """``mkdocs build --strict`` into ``destination``."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(destination)]
    subprocess.run(command, cwd=ROOT, env=env, check=True)


def chromium(executable: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium once with a throw-away profile."""
    command = [executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def tallest_blank_band(image: np.ndarray) -> int:
    """The most consecutive rows of an RGB image whose pixels all have one colour."""
    uniform = (image == image[:, :1]).all(axis=(1, 2))
    tallest = run = 0
    for row_is_uniform in uniform:
        run = run + 1 if row_is_uniform else 0
        tallest = max(tallest, run)
    return tallest


def colour_pixels(image: np.ndarray, colour: tuple[int, int, int]) -> int:
    """How many pixels of an RGB image are within `COLOUR_TOLERANCE` of ``colour`` in every channel."""
    distance = np.abs(image[..., :3].astype(int) - np.array(colour)).max(axis=-1)
    return int((distance <= COLOUR_TOLERANCE).sum())


def check_page(page: Page, base_url: str, requests: list[tuple[str, int]], executable: str, out: Path) -> list[str]:
    """Capture one page; return the failed checks (empty when it passes)."""
    url = base_url + page.path
    screenshot = out / f"{page.name}.png"
    failures = []
    with tempfile.TemporaryDirectory() as profile:
        shot = chromium(executable, Path(profile), f"--screenshot={screenshot}", url)
        if not screenshot.is_file():
            return [f"no screenshot (chromium exit {shot.returncode}): {shot.stderr.strip()[-500:]}"]
        dom = chromium(executable, Path(profile), "--dump-dom", url).stdout
    (out / f"{page.name}.html").write_text(dom)

    image = np.asarray(Image.open(screenshot).convert("RGB"))
    colours = len(np.unique(image.reshape(-1, 3), axis=0))
    band = tallest_blank_band(image)
    print(
        f"  {screenshot.name}: {image.shape[1]}x{image.shape[0]} pixels, {colours} distinct colours, "
        f"tallest empty band {band} rows"
    )
    if colours < MIN_DISTINCT_COLOURS:
        failures.append(f"screenshot looks blank: {colours} distinct colours")
    if band > MAX_BLANK_BAND * image.shape[0]:
        failures.append(f"screenshot is partly blank: {band} consecutive empty rows")
    text = html.unescape(re.sub(r"<[^>]+>", "", dom))  # what the page shows, without markup
    failures += [f"text not on the page: {expected!r}" for expected in page.expected_texts if expected not in text]

    if page.plot is not None:
        served = [status for path, status in requests if path.endswith(page.plot)]
        print(f"  {page.plot}: requested {len(served)} time(s), status {served}")
        if 200 not in served and 304 not in served:
            failures.append(f"the server never delivered {page.plot}")
        if f'src="../{page.plot}"' not in dom:
            failures.append(f"no <img> of {page.plot} in the DOM")
        for name, colour in PLOT_COLOURS.items():
            count = colour_pixels(image, colour)
            print(f"  {name} pixels: {count}")
            if count < MIN_PLOT_PIXELS:
                failures.append(f"plot not visible: only {count} {name} pixels")
    return failures


def main() -> None:
    """Build, serve, capture and check every page of `PAGES`; exit 1 if a check failed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "screenshots", help="where screenshots go")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium", help="the browser")
    args = parser.parse_args()
    if not Path(args.chromium).is_file():
        parser.error(f"no Chromium at {args.chromium}; install it (Debian: apt-get install -y chromium)")
    args.out.mkdir(parents=True, exist_ok=True)

    failed = False
    with tempfile.TemporaryDirectory() as folder:
        site = Path(folder) / "site"
        build_site(site)
        with serve(site) as (base_url, requests):
            print(f"serving the site at {base_url}")
            for page in PAGES:
                print(f"{page.name}: {base_url}{page.path}")
                failures = check_page(page, base_url, requests, args.chromium, args.out)
                for failure in failures:
                    print(f"  FAIL: {failure}")
                print("  ok" if not failures else "  failed")
                failed = failed or bool(failures)
    print(f"screenshots and DOM dumps in {args.out}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
