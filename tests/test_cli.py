"""The `lacker` command as a user types it: --version, the studio's flags, and error/fix lines without a
traceback for bad input (exit 2)."""

import subprocess
import sys
import urllib.request

from studio.settings import REPO_ROOT

from studio_helpers import free_port, wait_for


def lacker(*args, timeout=120, **kwargs):
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def test_version_and_the_studios_help_list_what_it_takes():
    version = lacker("--version")
    assert version.returncode == 0 and version.stdout.startswith("lacker-studio ")
    help_text = lacker("studio", "--help")
    assert help_text.returncode == 0
    for flag in ("--host", "--port", "--auth", "--home"):
        assert flag in help_text.stdout


def test_bad_settings_and_missing_files_get_error_and_fix_lines_and_exit_2(tmp_path):
    cases = [
        (["--batch-size", "0"], "batch_size must be at least 1"),
        (["--data", str(tmp_path / "missing.csv")], "missing.csv"),
    ]
    for extra, named in cases:
        args = ["train", "--data", "assets/debian-pairs/train.jsonl", "--output", str(tmp_path / "run"), *extra]
        result = lacker(*args)
        assert result.returncode == 2, result.stderr
        assert "error: " in result.stderr and named in result.stderr and "\n  fix: " in result.stderr
        assert "Traceback" not in result.stderr


def test_lacker_studio_serves_on_the_port_it_is_given(tmp_path):
    port = free_port()
    log = open(tmp_path / "studio.log", "wb")
    studio = subprocess.Popen([sys.executable, "-m", "engine", "studio", "--host", "127.0.0.1", "--port", str(port),
                               "--home", str(tmp_path / "home")], cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)

    def page():
        if studio.poll() is not None:
            raise AssertionError(f"the studio exited: {(tmp_path / 'studio.log').read_text()[-2000:]}")
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
        except OSError:
            return None

    try:
        assert "Lacker Studio" in wait_for(page, 180, "the studio to answer on --port")
        assert (tmp_path / "home" / "runs.sqlite").exists()  # --home was honoured
    finally:
        studio.terminate()
        studio.wait(timeout=30)
        log.close()


def test_a_second_run_in_the_same_folder_is_not_blamed_for_the_first_ones_error(tmp_path):
    run = tmp_path / "run"
    bad = lacker("train", "--data", "assets/debian-pairs/train.jsonl", "--output", str(run), "--batch-size", "0")
    assert bad.returncode == 2
    good = lacker("train", "--data", "assets/debian-pairs/train.jsonl", "--output", str(run), "--max-steps", "2",
                  "--batch-size", "8", "--max-seq-length", "32", "--no-eval", timeout=300)
    assert good.returncode == 0, good.stderr[-2000:]
    assert "error:" not in good.stderr and "saved to" in good.stdout
