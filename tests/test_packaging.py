"""The repository as a Hugging Face Space builds it: `pip install -r requirements.txt` into a fresh
virtual environment, from a copy of the tracked files only (so an untracked file cannot hide a missing
package-data rule), then `python app.py` in a folder that is not the checkout, so every module and the
bundled sample come from site-packages.

About a minute of installing: torch 2.13.0 comes from local disk on our machines, the rest through
pip's cache. Skipped only where a virtual environment cannot be made at all.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from gradio_client import Client

from studio_helpers import StudioProcess, wait_for

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
TABS = ["Model", "Data", "Train", "Compare", "Export", "Runs"]  # as the README lists them
# Keep the checkout out of every child: no PYTHONPATH, no user site-packages.
ISOLATED = {"PYTHONPATH": "", "PYTHONNOUSERSITE": "1"}


def tracked_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.fail(f"`git ls-files` failed in {REPO}: {listed.stderr.strip()}. This test copies the tracked "
                    "files, so it needs a git checkout.")
    return [name for name in listed.stdout.split("\0") if name and (REPO / name).is_file()]


def run_logged(command: list, cwd: Path, log: Path, timeout: float, env: dict) -> None:
    with open(log, "w") as out:
        done = subprocess.run(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, command))} failed in {cwd}:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    """The installed Space: its interpreter and its site-packages."""
    root = tmp_path_factory.mktemp("space")
    made = subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"`{sys.executable} -m venv` cannot make a virtual environment here: "
                    f"{made.stderr.strip()[-500:]} (on Debian, `apt-get install python3-venv`)")
    python = root / "venv" / "bin" / "python"
    checkout = root / "checkout"
    for name in tracked_files():
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, checkout / name)
    env = {**os.environ, **ISOLATED}
    env.pop("VIRTUAL_ENV", None)
    # --no-compile: byte-compiling 2 GB of dependencies is half of pip's time and checks nothing of ours
    run_logged([python, "-m", "pip", "install", "--no-compile", "-r", "requirements.txt"], checkout, root / "pip.log",
               1200, env)
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True, env=env).stdout.strip()
    return {"python": python, "site_packages": Path(site), "root": root, "env": env}


@pytest.fixture(scope="module")
def app(space):
    elsewhere = space["root"] / "elsewhere"
    elsewhere.mkdir()
    shutil.copy2(REPO / "app.py", elsewhere / "app.py")
    process = StudioProcess(elsewhere / "runs", env=ISOLATED, python=str(space["python"]), cwd=elsewhere)
    yield process
    process.close()


def test_every_tracked_module_is_installed(space):
    modules = [name for name in tracked_files() if name.endswith(".py") and name.split("/")[0] in
               ("engine", "studio", "bench")]
    missing = [name for name in modules if not (space["site_packages"] / name).is_file()]
    assert modules and not missing, f"not in the wheel (add their packages to pyproject.toml): {missing}"


def test_every_bundled_sample_file_and_the_starter_reranker_is_installed(space):
    samples = [name for name in tracked_files() if re.fullmatch(r"assets/([^/]+-pairs|starter-reranker)/[^/]+", name)]
    installed = space["site_packages"] / "engine" / "assets"
    missing = [name for name in samples if not (installed / name.removeprefix("assets/")).is_file()]
    assert any("vera-pairs" in name for name in samples) and not missing, (
        f"not in the wheel (add them to engine.assets' package data in pyproject.toml): {missing}")


def test_the_page_is_served_with_every_tab(app):
    with urllib.request.urlopen(app.url, timeout=10) as page:
        assert page.status == 200
    with urllib.request.urlopen(app.url + "config", timeout=10) as answer:
        config = json.load(answer)
    tabs = [c["props"]["label"] for c in config["components"] if c["type"] == "tabitem"]
    assert tabs == TABS


def test_the_sample_is_read_from_site_packages(space, app):
    where = subprocess.run([space["python"], "-c", "from studio.data_sources import SAMPLE_TRAIN; print(SAMPLE_TRAIN)"],
                           cwd=app.home.parent, capture_output=True, text=True, check=True, env=space["env"])
    sample = Path(where.stdout.strip())
    assert sample.is_file() and sample.is_relative_to(space["site_packages"]), sample
    rows = sum(1 for line in (REPO / "assets" / "debian-pairs" / "train.jsonl").open() if line.strip())
    loaded = Client(app.url, verbose=False).predict(api_name="/use_sample")[0]
    assert f"{rows:,} rows" in loaded, loaded


def test_a_short_run_trains_in_the_installed_space(app):
    client = Client(app.url, verbose=False)
    run = client.predict({"max_steps": 2, "batch_size": 8, "max_seq_length": 64, "evaluate": False}, "sample",
                         api_name="/start_run")
    done = wait_for(lambda: (s := client.predict(run["run_id"], api_name="/run_status"))["status"]
                    in ("completed", "stopped", "failed") and s, 300, "the run to finish")
    assert done["status"] == "completed", (done["error"], done["hint"])
