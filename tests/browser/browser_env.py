"""What the browser tests need (Python Playwright, Debian's Chromium), and what happens when it is missing: a skip
with the reason on a developer's machine, a failure in CI, where a skipped browser test would pass unnoticed."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]  # the repository
PART1_NOTEBOOKS = ["01_config", "02_data_shift", "03_training", "04_eval"]  # 05 and later: other tests
CHROMIUM = Path("/usr/bin/chromium")
# headless Chromium as root in a container, without reaching for the network on its own
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
INSTALL_HINT = ("Debian's Chromium: `apt-get install -y --no-install-recommends chromium` (.ci/run does it); "
                "Python Playwright: `pip install -e \".[browser]\"` (make test does it); never `playwright install`")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing_tools() -> list[str]:
    missing = []
    if importlib.util.find_spec("playwright") is None:
        missing.append("the Python package playwright")
    if not CHROMIUM.is_file():
        missing.append(str(CHROMIUM))
    return missing


def require_browser() -> None:
    """Skip (fail when the CI variable is set) the calling test module when Playwright or Chromium is missing."""
    missing = missing_tools()
    if not missing:
        return
    reason = f"browser tests need {' and '.join(missing)}; install {INSTALL_HINT}"
    if in_ci():
        pytest.fail(f"CI is set, so the browser tests may not be skipped: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)
