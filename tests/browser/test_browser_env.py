"""The policy for missing browser tools: a skip that says why on a developer's machine, a failure in CI."""

import browser_env
import pytest


@pytest.fixture
def no_chromium(monkeypatch, tmp_path):
    monkeypatch.setattr(browser_env, "CHROMIUM", tmp_path / "chromium")


@pytest.mark.parametrize("ci", [None, "", "false", "0"])
def test_missing_chromium_skips_with_the_reason_outside_ci(no_chromium, monkeypatch, ci):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception, match="chromium.*apt-get install -y --no-install-recommends chromium"):
        browser_env.require_browser()


@pytest.mark.parametrize("ci", ["true", "1", "yes"])
def test_missing_chromium_fails_in_ci(no_chromium, monkeypatch, ci):
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception, match="CI is set, so the browser tests may not be skipped"):
        browser_env.require_browser()
