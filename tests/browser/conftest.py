"""Fixtures of the browser tests: headless Chromium through Playwright, JupyterLab on a copy of the notebooks, the
folder that receives the screenshots (named at the end of the test report)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from browser_env import CHROMIUM, CHROMIUM_ARGS, PART1_NOTEBOOKS, ROOT, require_browser
from browser_servers import Server, running_server

VIEWPORT = {"width": 1280, "height": 900}
# JupyterLab settings for a test: no "Jupyter news" toast over the page, and every cell kept in the page (JupyterLab 4
# may leave cells far off screen out of the DOM, where no check would see their outputs)
LAB_OVERRIDES = {
    "@jupyterlab/apputils-extension:notification": {"fetchNews": "false"},
    "@jupyterlab/notebook-extension:tracker": {"windowingMode": "none"},
}

_SCREENSHOTS = pytest.StashKey[Path]()
_TIMINGS = pytest.StashKey[dict[str, float]]()


@pytest.fixture(scope="session")
def jupyter_env(tmp_path_factory) -> dict[str, str]:
    """Environment of the servers and their kernels: no network, config and runtime folders of the tests' own (a
    developer's Jupyter config, a password say, cannot change what the tests see), and one PyTorch thread. With
    Chromium and the server sharing 2 cores, torch's default 2 spinning threads made 04_eval's run-all take
    100-180 s instead of 20 s (measured with other work on the machine)."""
    folder = tmp_path_factory.mktemp("jupyter")
    dirs = {"JUPYTER_CONFIG_DIR": folder / "config", "JUPYTER_RUNTIME_DIR": folder / "runtime"}
    for d in dirs.values():
        d.mkdir()
    return {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **{k: str(v) for k, v in dirs.items()}}


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    """A Chromium with a fresh profile for the whole session; each test opens its own tabs."""
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            tmp_path_factory.mktemp("chromium-profile"), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_ARGS, viewport=VIEWPORT)
        context.set_default_timeout(30_000)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture(scope="session")
def lab(tmp_path_factory, jupyter_env) -> Server:
    """JupyterLab on 127.0.0.1, a free port and a token, serving copies of the Part-1 notebooks (the page saves
    what it runs)."""
    folder = tmp_path_factory.mktemp("lab")
    notebooks = folder / "notebooks"
    notebooks.mkdir()
    for name in PART1_NOTEBOOKS:
        shutil.copy(ROOT / "notebooks" / f"{name}.ipynb", notebooks)
    settings = folder / "app-settings"
    settings.mkdir()
    (settings / "overrides.json").write_text(json.dumps(LAB_OVERRIDES), encoding="utf-8")
    args = ["--no-browser", "--IdentityProvider.token={token}", "--ServerApp.ip=127.0.0.1", "--ServerApp.port={port}",
            "--ServerApp.port_retries=0", "--ServerApp.allow_root=True", f"--ServerApp.root_dir={notebooks}",
            "--LabApp.expose_app_in_browser=True", f"--LabApp.app_settings_dir={settings}",
            f"--LabApp.user_settings_dir={folder / 'user-settings'}",
            f"--LabApp.workspaces_dir={folder / 'workspaces'}"]
    with running_server("jupyterlab", args, workdir=notebooks, log=folder / "jupyterlab.log", ready_path="/api/status",
                        env=jupyter_env) as server:
        yield server


@pytest.fixture(scope="session")
def screenshots(request, tmp_path_factory) -> Path:
    """BROWSER_SCREENSHOTS when set, else a folder under pytest's basetemp; never inside the repository."""
    folder = Path(os.environ.get("BROWSER_SCREENSHOTS") or tmp_path_factory.getbasetemp() / "browser-screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    request.config.stash[_SCREENSHOTS] = folder.resolve()
    return folder


@pytest.fixture(scope="session")
def timings(request) -> dict[str, float]:
    """Seconds per browser step (run-all per notebook, Voilà's first render), printed at the end of the report."""
    return request.config.stash.setdefault(_TIMINGS, {})


def pytest_terminal_summary(terminalreporter, config):
    folder = config.stash.get(_SCREENSHOTS, None)
    times = config.stash.get(_TIMINGS, {})
    if folder is None and not times:
        return
    terminalreporter.section("browser tests")
    for step, seconds in times.items():
        terminalreporter.write_line(f"{step}: {seconds:.1f} s")
    if folder is not None:
        shots = sorted(p.name for p in folder.glob("*.png"))
        terminalreporter.write_line(f"screenshots ({len(shots)}) in {folder}: {', '.join(shots)}")
