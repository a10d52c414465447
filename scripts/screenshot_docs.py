"""Build the documentation site, open it in headless Chromium, take screenshots and check them.

The site is built strictly into a temporary folder and served on 127.0.0.1 (a free port). For the
home page, the API page of ``LFPOptimizer``, the Concepts page (the LFP math) and the Benchmarks
page (plots), Chromium writes a screenshot and the DOM after the page's scripts ran. A page passes
when

* the screenshot is not blank (many distinct colours, and no tall band of empty rows),
* the DOM contains the texts that page must show, and no script, stylesheet, font or image from
  another host (the site must work offline),
* every formula on it was typeset by KaTeX (as many ``katex`` elements as ``arithmatex`` ones, and
  nothing that KaTeX drew as an error),
* and, for a page with a plot, the server delivered the plot, the DOM has its ``<img>``, and the
  screenshot contains the plot's line colours (matplotlib's blue and orange, which the site's
  theme does not use).

Then one more page, written into the built site, fetches every page of the site and typesets each
of its formulas with the site's KaTeX, so that a formula KaTeX cannot parse fails anywhere on the
site, not only on the captured pages. Finally no request of the whole run may have failed (a
missing font, script or image). Everything the pages load comes from the local server: KaTeX and
its fonts are vendored in ``docs/assets/katex/``.

Needs the system Chromium (Debian: ``apt-get install -y chromium``):

    python scripts/screenshot_docs.py                      # screenshots in outputs/screenshots/
    python scripts/screenshot_docs.py --out /tmp/shots --chromium /usr/bin/chromium

Exit status 1 if any check fails. ``tests/test_docs.py`` runs the same checks when
``/usr/bin/chromium`` exists.
"""

from __future__ import annotations

import argparse
import functools
import html
import json
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
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1280,1000",
    "--virtual-time-budget=10000",  # let the page's scripts (KaTeX) run and its images load first
)
CHROMIUM_TIMEOUT = 120
"""Seconds one Chromium run may take."""
MIN_DISTINCT_COLOURS = 64
"""A blank or failed page (one background colour, an error icon) has far fewer colours than this."""
MAX_BLANK_BAND = 0.4
"""The tallest band of one-colour rows may cover at most this fraction of the screenshot (a page
drawn only in part leaves a tall empty band; the gaps between paragraphs are short)."""
PLOT_COLOURS = {"matplotlib blue": (31, 119, 180), "matplotlib orange": (255, 127, 14)}
MIN_PLOT_PIXELS = 200
"""Pixels within `COLOUR_TOLERANCE` of each plot colour that a rendered plot leaves in the screenshot."""
COLOUR_TOLERANCE = 40
REMOTE_RESOURCE = re.compile(
    r'<(?:script|img|iframe)\b[^>]*\ssrc="((?:https?:)?//[^"]+)"|<link\b[^>]*\shref="((?:https?:)?//[^"]+)"'
)
"""A script, image, frame or linked file (stylesheet, font, icon) fetched from the network."""
KATEX_ERROR_COLOUR = "#cc0000"
"""KaTeX's ``errorColor``: the colour of what it could not typeset (``throwOnError: false``)."""
MAX_LISTED = 20
"""Formulas KaTeX cannot parse that are listed one by one; the rest are counted."""
MATH_CHECK_PAGE = "math-check.html"
MATH_CHECK_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><script src="assets/katex/katex.min.js"></script></head>
<body><pre id="report">pending</pre><script>
// Typeset every formula of every page with the site's KaTeX; report the ones it cannot parse.
const pages = %s;
async function check() {
  if (typeof katex === "undefined") throw new Error("KaTeX did not load");
  const report = {pages: 0, formulas: 0, errors: []};
  for (const page of pages) {
    const text = await (await fetch(page)).text();
    const document_ = new DOMParser().parseFromString(text, "text/html");
    report.pages += 1;
    for (const element of document_.querySelectorAll(".arithmatex")) {
      const source = element.textContent.trim();
      const display = source.startsWith("\\\\[");
      const tex = source.slice(2, -2);
      report.formulas += 1;
      try {
        katex.renderToString(tex, {displayMode: display, throwOnError: true});
      } catch (error) {
        report.errors.push(page + ": " + source + ": " + error.message);
      }
    }
  }
  document.getElementById("report").textContent = JSON.stringify(report);
}
check().catch((error) => { document.getElementById("report").textContent = "failed: " + error; });
</script></body></html>
"""


@dataclass(frozen=True)
class Page:
    """A page to capture, and what must be on it."""

    name: str
    path: str
    expected_texts: tuple[str, ...]
    min_formulas: int = 0
    """The page shows at least this many formulas, and every one must be typeset."""
    plot: str | None = None
    """A plot the page shows (relative to the site root): it must be delivered and visible."""


PAGES = (
    Page(
        "home",
        "/",
        ("Layer-wise Feedback Propagation", "The one-line swap", "LFPOptimizer(model, SoftmaxLossReward()"),
        min_formulas=1,
    ),
    Page(
        "api-lfpoptimizer",
        "/api/optimizers/",
        ("lfpoptim.LFPOptimizer", "feedback_reduction", "reward_fn", "LFPStepResult", "DropInLFPOptimizer"),
        min_formulas=1,
    ),
    Page("concepts", "/concepts/", ("The epsilon rule", "One backward pass"), min_formulas=40),
    Page(
        "benchmarks",
        "/benchmarks/",
        ("Cost of a step", "scripts/docs_plots.py"),
        plot="plots/step_time.png",
    ),
)


class LoggingHandler(SimpleHTTPRequestHandler):
    """Serves the built site and records every request path with its status."""

    requests: list[tuple[str, int]]

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Record the request instead of printing it."""
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
    """``mkdocs build --strict`` into ``destination``, with no network (``HF_HUB_OFFLINE``)."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(destination)]
    subprocess.run(command, cwd=ROOT, env=env, check=True)


def chromium(executable: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium once with a throw-away profile; its stdout is what ``--dump-dom`` wrote."""
    with tempfile.TemporaryDirectory() as profile:
        command = [executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT, check=False)


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


def check_math(dom: str, min_formulas: int) -> list[str]:
    """Failures if the DOM has fewer than ``min_formulas`` formulas or one that KaTeX did not typeset."""
    formulas = dom.count('class="arithmatex"')
    typeset = dom.count('class="katex"')
    # invalid TeX becomes a katex-error element; an unknown command is drawn in KaTeX's error colour
    errors = dom.count("katex-error") + dom.count(f'mathcolor="{KATEX_ERROR_COLOUR}"')
    print(f"  formulas: {formulas}, typeset by KaTeX: {typeset}, KaTeX errors: {errors}")
    failures = []
    if formulas < min_formulas:
        failures.append(f"{formulas} formulas on the page, expected at least {min_formulas}")
    if typeset != formulas:
        failures.append(f"{formulas - typeset} of {formulas} formulas not typeset (is KaTeX loaded?)")
    if errors:
        failures.append(f"{errors} formulas or commands KaTeX could not typeset (drawn in red)")
    return failures


def check_page(page: Page, base_url: str, requests: list[tuple[str, int]], executable: str, out: Path) -> list[str]:
    """Capture one page (screenshot and DOM in one Chromium run); return the failed checks."""
    screenshot = out / f"{page.name}.png"
    screenshot.unlink(missing_ok=True)
    run = chromium(executable, f"--screenshot={screenshot}", "--dump-dom", base_url + page.path)
    if not screenshot.is_file():
        return [f"no screenshot (chromium exit {run.returncode}): {run.stderr.strip()[-500:]}"]
    dom = run.stdout
    (out / f"{page.name}.html").write_text(dom)

    image = np.asarray(Image.open(screenshot).convert("RGB"))
    colours = len(np.unique(image.reshape(-1, 3), axis=0))
    band = tallest_blank_band(image)
    print(
        f"  {screenshot.name}: {image.shape[1]}x{image.shape[0]} pixels, {colours} distinct colours, "
        f"tallest empty band {band} rows"
    )
    failures = []
    if colours < MIN_DISTINCT_COLOURS:
        failures.append(f"screenshot looks blank: {colours} distinct colours")
    if band > MAX_BLANK_BAND * image.shape[0]:
        failures.append(f"screenshot is partly blank: {band} consecutive empty rows")
    text = html.unescape(re.sub(r"<[^>]+>", "", dom))  # what the page shows, without markup
    failures += [f"text not on the page: {expected!r}" for expected in page.expected_texts if expected not in text]
    failures += check_math(dom, page.min_formulas)
    remote = sorted({found.group(1) or found.group(2) for found in REMOTE_RESOURCE.finditer(dom)})
    failures += [f"loads a resource from another host (the site must work offline): {url}" for url in remote]

    if page.plot is not None:
        served = [status for path, status in requests if path.endswith(page.plot)]
        print(f"  {page.plot}: requested {len(served)} time(s), status {served}")
        if 200 not in served and 304 not in served:
            failures.append(f"the server never delivered {page.plot}")
        if not re.search(rf'<img [^>]*src="[./]*{re.escape(page.plot)}"', dom):
            failures.append(f"no <img> of {page.plot} in the DOM")
        for name, colour in PLOT_COLOURS.items():
            count = colour_pixels(image, colour)
            print(f"  {name} pixels: {count}")
            if count < MIN_PLOT_PIXELS:
                failures.append(f"plot not visible: only {count} {name} pixels")
    return failures


def check_all_formulas(site: Path, base_url: str, executable: str) -> list[str]:
    """Typeset every formula of every page of ``site`` with its KaTeX in Chromium; return the failures."""
    pages = sorted(
        "/" + str(path.relative_to(site))
        for path in site.rglob("*.html")
        if path.name != MATH_CHECK_PAGE and "arithmatex" in path.read_text()
    )
    (site / MATH_CHECK_PAGE).write_text(MATH_CHECK_HTML % json.dumps(pages))
    dom = chromium(executable, "--dump-dom", f"{base_url}/{MATH_CHECK_PAGE}").stdout
    found = re.search(r'<pre id="report">(.*?)</pre>', dom, flags=re.DOTALL)
    if found is None or not found.group(1).startswith("{"):
        return [f"the formula check did not finish: {found.group(1) if found else dom[-500:]!r}"]
    report = json.loads(html.unescape(found.group(1)))
    print(f"  {report['formulas']} formulas on {report['pages']} pages, {len(report['errors'])} KaTeX cannot parse")
    failures = [f"KaTeX cannot parse {error}" for error in report["errors"][:MAX_LISTED]]
    if len(report["errors"]) > MAX_LISTED:
        failures.append(f"... and {len(report['errors']) - MAX_LISTED} more formulas KaTeX cannot parse")
    if report["pages"] != len(pages) or report["formulas"] == 0:
        failures.append(f"checked {report['formulas']} formulas on {report['pages']} of {len(pages)} pages")
    return failures


def check_site(out: Path, executable: str) -> list[str]:
    """Build and serve the site, capture and check every page of `PAGES` and every formula.

    Screenshots (``<page>.png``) and the DOM after the scripts ran (``<page>.html``) go to ``out``.

    Args:
        out (Path): Folder for the screenshots and DOM dumps; created if missing.
        executable (str): The Chromium binary.

    Returns:
        list[str]: The failed checks, each prefixed with its page; empty when the site passes.
    """
    out.mkdir(parents=True, exist_ok=True)
    failures = []
    with tempfile.TemporaryDirectory() as folder:
        site = Path(folder) / "site"
        build_site(site)
        with serve(site) as (base_url, requests):
            print(f"serving the site at {base_url}")
            for page in PAGES:
                print(f"{page.name}: {base_url}{page.path}")
                failures += [
                    f"{page.name}: {failure}" for failure in check_page(page, base_url, requests, executable, out)
                ]
            print("every formula of the site:")
            failures += [f"formulas: {failure}" for failure in check_all_formulas(site, base_url, executable)]
        # Chromium asks for /favicon.ico whatever the page names as its icon; the site has none there.
        failed = {f"{path} ({status})" for path, status in requests if status >= 400 and path != "/favicon.ico"}
        failed_requests = sorted(failed)
        print(f"{len(requests)} requests, {len(failed_requests)} failed")
        failures += [f"request failed: {request}" for request in failed_requests]
    return failures


def main() -> None:
    """Run `check_site`, print the failures, and exit 1 if there are any."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "screenshots", help="where screenshots go")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium", help="the browser")
    args = parser.parse_args()
    if not Path(args.chromium).is_file():
        parser.error(f"no Chromium at {args.chromium}; install it (Debian: apt-get install -y chromium)")
    failures = check_site(args.out, args.chromium)
    for failure in failures:
        print(f"FAIL {failure}")
    print(f"screenshots and DOM dumps in {args.out}; {'all checks passed' if not failures else 'FAILED'}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
