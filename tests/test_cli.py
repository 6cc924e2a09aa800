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


class Stream:
    """stderr as a terminal (tty=True) or as a file or pipe."""

    def __init__(self, tty: bool):
        self.tty, self.text = tty, ""

    def isatty(self):
        return self.tty

    def write(self, text):
        self.text += text

    def flush(self):
        pass


def train_event(step, total=100):
    return {"event": "train", "step": step, "total_steps": total, "loss": 1.0 / step, "samples_per_second": 20.0,
            "eta": 5.0 * (total - step)}


def test_training_progress_shows_step_of_total_loss_and_eta_on_a_terminal_and_in_a_log(monkeypatch):
    from engine import events

    clock = [0.0]
    monkeypatch.setattr(events.time, "monotonic", lambda: clock[0])
    terminal, log = events.TerminalEcho(Stream(tty=True)), events.TerminalEcho(Stream(tty=False))
    for step in range(1, 101):
        clock[0] = step * 0.5  # two steps a second
        for echo in (terminal, log):
            echo.show(train_event(step))
            if step == 50:
                echo.show({"event": "log", "message": "checkpoint saved"})

    shown = terminal.stream.text
    assert "\rstep 37/100  loss 0.0270" in shown and "ETA 5m15s" in shown  # one line, rewritten in place
    assert "\ncheckpoint saved\n" in shown and shown.endswith("step 100/100  loss 0.0100  20.0 samples/s  ETA 0s".ljust(78) + "\n")
    lines = log.stream.text.splitlines()
    progress = [line for line in lines if line.startswith("step ")]
    assert 10 <= len(progress) <= 21  # about one every ECHO_EVERY_SECONDS (5 s) of 50 s, and the last step
    assert progress[-1].startswith("step 100/100") and "checkpoint saved" in lines and "\r" not in log.stream.text
