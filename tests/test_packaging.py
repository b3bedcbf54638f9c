"""The files that make the project installable: pyproject, environment.yml, Makefile, CI."""

import fnmatch
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).parent.parent
PACKAGE = ROOT / "nanogpt_lib"


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_every_data_file_of_the_package_is_declared_as_package_data():
    patterns = _pyproject()["tool"]["setuptools"]["package-data"]["nanogpt_lib"]
    data_files = [p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*")
                  if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts]
    assert data_files, "the package ships its corpus and tokenizer"
    missing = [f for f in data_files if not any(fnmatch.fnmatch(f, pat) for pat in patterns)]
    assert missing == []


def test_torch_is_a_range_and_the_extras_exist():
    project = _pyproject()["project"]
    assert "torch>=2.3" in project["dependencies"]
    for name in ("transformers", "tokenizers", "matplotlib", "ipywidgets", "tqdm"):
        assert any(dep.startswith(name) for dep in project["dependencies"]), name
    extras = project["optional-dependencies"]
    assert any(d.startswith("pytest") for d in extras["test"]) and "nbval==0.11.0" in extras["test"]
    assert any(d.startswith("jupyterlab") for d in extras["notebooks"])


def test_environment_yml_works_for_conda_and_binder():
    env = yaml.safe_load((ROOT / "environment.yml").read_text(encoding="utf-8"))
    deps = env["dependencies"]
    assert "python=3.11" in deps and "pip" in deps
    assert any(isinstance(d, str) and d.startswith("pytorch-cpu") for d in deps)
    pip = next(d["pip"] for d in deps if isinstance(d, dict))
    assert any(line.startswith("-e .[") and "notebooks" in line for line in pip)  # Binder installs the repo


def test_ci_runs_the_readme_test_command_in_a_fresh_venv():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "make test" in readme.split("\n## ")[0]  # on the first screen
    assert "make train" in readme.split("\n## ")[0]
    assert "rm -rf .venv" in ci and "make test" in ci
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "TORCH ?= torch==2.13.0" in makefile


def test_the_corpora_extra_brings_datasets_and_ci_tests_it():
    extras = _pyproject()["project"]["optional-dependencies"]
    assert any(d.startswith("datasets") for d in extras["corpora"])
    assert any(d.startswith("datasets") for d in extras["test"])  # the local-dataset tests run in CI


def test_ci_installs_chromium_and_make_test_the_browser_extra():
    """The browser tests run in CI, never skipped: .ci/run installs Chromium and sets CI, make test installs
    Playwright and Voilà."""
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "apt-get install -y" in ci and "chromium" in ci and "export CI=" in ci
    assert ci.index("chromium") < ci.index("make test")
    browser = _pyproject()["project"]["optional-dependencies"]["browser"]
    assert {d.split(">")[0] for d in browser} == {"playwright", "voila"}
    assert '-e ".[test,notebooks,browser]"' in (ROOT / "Makefile").read_text(encoding="utf-8")
