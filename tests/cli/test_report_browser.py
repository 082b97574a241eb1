"""The HTML report opened in headless Chromium: the frontier plot must actually render."""

from __future__ import annotations

import shutil
import subprocess

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=8000"]


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it when run as root)")
def test_report_renders_in_chromium(digits_run, tmp_path):
    html = digits_run / "report.html"
    profile = tmp_path / "profile"
    dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", html.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    start = dom.find('id="plot-frontier"')
    assert start >= 0, "frontier plot element missing"
    # plotly draws into an SVG inside the plot div once its JS ran; data points are <path class="point">
    # (markers) and the frontier line a "js-line" path: a non-empty plot has them.
    section = dom[start:start + 200_000]
    assert "main-svg" in section and "scatterlayer" in section
    assert section.count('class="point"') >= 3
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--window-size=1200,900", f"--screenshot={shot}",
                    html.as_uri()], capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 20_000
