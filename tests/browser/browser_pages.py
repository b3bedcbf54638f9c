"""A notebook open in JupyterLab (driven through `window.jupyterapp`, which `--LabApp.expose_app_in_browser` exposes)
and the ipywidgets sliders of a page (JupyterLab or Voilà), moved with the keyboard like a reader would."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

from browser_servers import Server
from playwright.sync_api import BrowserContext, Locator, Page, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeout

MAX_SCREENSHOT_HEIGHT = 16_000  # px; Chromium refuses much taller captures

_NOTEBOOK = "window.jupyterapp.shell.currentWidget"
_KERNEL_IDLE = f"""() => {{
    const w = window.jupyterapp && {_NOTEBOOK};
    const kernel = w && w.context && w.context.isReady && w.sessionContext.session && w.sessionContext.session.kernel;
    return !!kernel && kernel.status === 'idle';
}}"""
_START_RUN_ALL = """() => {
    window.__runAll = null;
    window.jupyterapp.commands.execute('notebook:run-all-cells').then(
        ok => { window.__runAll = {ok: ok}; }, err => { window.__runAll = {ok: false, error: String(err)}; });
}"""
_BUSY_PROMPTS = ("() => Array.from(document.querySelectorAll('.jp-InputPrompt'))"
                 ".filter(p => p.textContent.includes('[*]')).length")
# outputs the kernel sent as errors (exception name and value), read from the notebook model: in the page an error
# and a plain stderr stream render alike (both as application/vnd.jupyter.stderr)
_ERROR_OUTPUTS = f"""() => {{
    const found = [];
    {_NOTEBOOK}.content.widgets.forEach((cell, i) => {{
        const outputs = cell.model.outputs;
        for (let j = 0; outputs && j < outputs.length; j++) {{
            const out = outputs.get(j).toJSON();
            if (out.output_type === 'error') found.push(`cell ${{i}}: ${{out.ename}}: ${{out.evalue}}`);
        }}
    }});
    return found;
}}"""
# everything shown on stderr in the page: cell outputs and the outputs inside widgets (a slider callback that raises)
STDERR_SELECTOR = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'


class LabNotebook:
    """One notebook in JupyterLab's single-document view, with its own kernel."""

    def __init__(self, page: Page, name: str):
        self.page, self.name = page, name

    @classmethod
    def open(cls, context: BrowserContext, server: Server, name: str, timeout_s: float = 90) -> LabNotebook:
        page = context.new_page()
        page.goto(server.url(f"/doc/tree/{name}"))
        page.wait_for_function(_KERNEL_IDLE, timeout=timeout_s * 1000, polling=250)
        return cls(page, name)

    def run_all(self, timeout_s: float) -> tuple[bool, float]:
        """Run all cells; returns (JupyterLab's own verdict: every cell ran without error, seconds). Returns once the
        command has finished, no prompt shows [*] and the kernel is idle."""
        start = time.monotonic()
        self.page.evaluate(_START_RUN_ALL)
        try:
            self.page.wait_for_function("() => window.__runAll !== null", timeout=timeout_s * 1000, polling=500)
            self.page.wait_for_function(f"() => ({_BUSY_PROMPTS})() === 0 && ({_KERNEL_IDLE})()", timeout=30_000)
        except PlaywrightTimeout as err:
            busy = self.page.evaluate(_BUSY_PROMPTS)
            raise AssertionError(f"{self.name}: run-all not finished after {time.monotonic() - start:.0f} s "
                                 f"({busy} cells still show [*])") from err
        result = self.page.evaluate("() => window.__runAll")
        return bool(result["ok"]), time.monotonic() - start

    def explorer(self) -> Explorer:
        """The notebook's slider widget; each move also waits for the kernel to be idle again."""
        return Explorer(self.page, settled=lambda: self.page.wait_for_function(_KERNEL_IDLE, polling=100))

    def error_outputs(self) -> list[str]:
        return self.page.evaluate(_ERROR_OUTPUTS)

    def stderr_texts(self) -> list[str]:
        return self.page.locator(STDERR_SELECTOR).all_inner_texts()

    def screenshot(self, path: Path) -> Path:
        """The whole notebook in one image: the window is made as tall as the notebook for the capture."""
        scroller = self.page.locator(".jp-NotebookPanel-notebook .jp-WindowedPanel-outer")
        inner_h, full_h, view_h = scroller.evaluate("e => { e.scrollTop = 0; "
                                                    "return [e.clientHeight, e.scrollHeight, window.innerHeight]; }")
        size = self.page.viewport_size
        height = min(view_h - inner_h + full_h, MAX_SCREENSHOT_HEIGHT)
        self.page.set_viewport_size({"width": size["width"], "height": height})
        try:
            self.page.wait_for_function("h => window.innerHeight === h", arg=height)
            self.page.screenshot(path=path)
        finally:
            self.page.set_viewport_size(size)
        return path

    def close(self) -> None:
        """Shut the kernel down (a notebook's kernel holds a trained model) and close the tab."""
        try:
            self.page.evaluate(f"() => {_NOTEBOOK}.sessionContext.shutdown()")
        finally:
            self.page.close()


class Explorer:
    """An ipywidgets `interactive` on a page (JupyterLab or Voilà): labelled sliders above an output."""

    def __init__(self, page: Page, settled: Callable[[], None] | None = None, timeout_ms: float = 30_000):
        self.box = page.locator(".widget-interact")
        self.output = self.box.locator(".widget-output")
        self.readouts = self.box.locator(".widget-readout")
        self._settled, self._timeout_ms = settled, timeout_ms

    def slider(self, description: str) -> Locator:
        label = self.box.page.locator(".widget-label", has_text=re.compile(f"^{re.escape(description)}$"))
        return self.box.locator(".widget-slider", has=label)

    def table_value(self, label: str) -> Locator:
        """The cell next to `label` in the table the output shows."""
        return self.output.locator("tr", has_text=label).locator("td").last

    def press(self, description: str, key: str, times: int = 1) -> None:
        """Focus the slider's handle and press `key` (ArrowRight, ArrowLeft, Home, End) `times` times, one move at a
        time like a reader who looks at the result: each move that changes the value waits until the output shows
        the kernel's answer (and `settled` returns), because ipywidgets may drop a change sent while the kernel is
        still busy with the previous one."""
        handle = self.slider(description).locator(".noUi-handle")
        handle.focus()
        for _ in range(times):
            value, shown = handle.get_attribute("aria-valuenow"), self.output.inner_text()
            handle.press(key)
            if handle.get_attribute("aria-valuenow") == value:
                continue  # already at that end of the range: nothing goes to the kernel
            expect(self.output).not_to_have_text(shown, use_inner_text=True, timeout=self._timeout_ms)
            if self._settled is not None:
                self._settled()

    def set(self, description: str, clicks_from_min: int) -> None:
        """Home, then ArrowRight `clicks_from_min` times: the same value whatever the slider showed before."""
        self.press(description, "Home")
        self.press(description, "ArrowRight", clicks_from_min)
