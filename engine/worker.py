"""`python -m engine.worker RUN_DIR`: run the job in RUN_DIR/config.json in this process.

The studio starts one of these per run and only reads what it writes: RUN_DIR/events.jsonl,
checkpoints/, adapter/, merged/, metrics.json. SIGTERM (or SIGINT) asks for a stop, in any phase: while
training, the current step finishes, a checkpoint and the model are saved; while loading, tokenizing,
evaluating or saving, the work ends at once (what was being written is removed; the checkpoints stay).
Either way the last event says "stopped". The exit code says how it ended, for when the events cannot:
0 completed or stopped, 1 failed, EXIT_DISK_FULL failed for lack of space (the events may not have fitted).
Progress bars are off here: the events carry progress, and bars would only fill worker.log.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

from engine import atomic

EXIT_DISK_FULL = errno.ENOSPC
DEBUG_HINT = "run it again with --debug to see the full traceback"


class StopRequested(BaseException):
    """A stop asked for outside the training steps, raised where the work is; a BaseException so that no
    library's `except Exception` takes it for a failure."""


def is_bad_input(error: BaseException) -> bool:
    """Whether the user's input (data, settings, a model name) caused `error`, rather than the machine."""
    from engine.data import DataError
    from engine.resolve import ModelNotAvailable

    return isinstance(error, (DataError, ModelNotAvailable, ValueError, json.JSONDecodeError))


def explain(error: BaseException, config=None, traceback_hint: str = DEBUG_HINT) -> tuple[str, str]:
    """(what went wrong, what to do) in words a studio user can act on; `traceback_hint` says where the full
    traceback of an unexpected error is (the CLI's --debug, the studio's worker.log)."""
    from engine.data import DataError

    if atomic.is_disk_full(error) and not isinstance(error, atomic.DiskFull):
        folder = config.output_dir if config is not None else getattr(error, "filename", None) or "the output folder"
        error = atomic.DiskFull(folder, error)
    if type(error).__name__ == "OutOfMemoryError" or "out of memory" in str(error).lower():
        if config is None:
            return "out of GPU memory", "try a smaller batch size or QLoRA"
        smaller = max(config.batch_size // 2, 1)
        return (f"out of GPU memory at batch {config.batch_size}, seq {config.max_seq_length}",
                f"try batch {smaller}" + ("" if config.method == "qlora" else " or QLoRA (4-bit)")
                + ", or a shorter max sequence length")
    if getattr(error, "fix", None):
        return str(error), error.fix
    if isinstance(error, DataError):
        return str(error), "fix the data or the column mapping, then start again"
    if isinstance(error, json.JSONDecodeError):
        return f"config.json is not valid JSON ({error})", "write the run's settings as one JSON object"
    if isinstance(error, ValueError):
        return str(error), "change the setting it names, then start again"
    return f"{type(error).__name__}: {error}", traceback_hint


@contextmanager
def stop_on_signals(stop: threading.Event, events, signals=(signal.SIGTERM,)):
    """While the block runs, `signals` set `stop`; outside the training phase (where the loop looks at `stop`
    after each step) the first one also raises StopRequested, so loading, tokenizing, evaluating or saving end
    at once; once the run has said its last word, nothing is cut short. Signal handlers belong to the main
    thread: elsewhere this only runs the block."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = []

    def handle(signum, frame):
        stop.set()
        if events.phase not in ("training", "completed", "stopped") and not raised:  # done: nothing to cut short
            raised.append(signum)
            raise StopRequested(events.phase or "starting")

    previous = {signum: signal.signal(signum, handle) for signum in signals}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run(run_dir: Path, stop: threading.Event | None = None, echo: bool = False,
        stop_signals=(signal.SIGTERM,)) -> int:
    """Run the job of one run directory; 0 when it completed or stopped, 1 when it failed, EXIT_DISK_FULL
    when it failed for lack of space. `echo` also prints the progress to stderr (the CLI; else the studio, whose
    worker.log keeps the output). `stop_signals` stop the run in any phase (see `stop_on_signals`)."""
    from engine.events import EventLog

    events = EventLog(run_dir / "events.jsonl", echo=echo)
    stop = stop or threading.Event()
    config = None
    try:
        with stop_on_signals(stop, events, stop_signals):
            from engine.config import TrainConfig
            from engine.train import train

            values = json.loads((run_dir / "config.json").read_text())
            values["output_dir"] = str(run_dir)
            config = TrainConfig.from_dict(values)
            train(config, events, stop)
        return 0
    except StopRequested as where:
        events.status("stopped", f"stopped while {where}; the checkpoints saved so far are kept")
        return 0
    except Exception as error:  # every failure becomes an event the studio can show
        # The studio's worker.log keeps the traceback; on the CLI it shows with --debug only.
        logger = logging.getLogger("engine.worker")
        (logger.debug if echo else logger.error)("run failed", exc_info=True)
        message, hint = explain(error, config, DEBUG_HINT if echo else f"see {run_dir / 'worker.log'} for the full "
                                                                        "traceback")
        try:
            events.emit("error", error=message, hint=hint, bad_input=is_bad_input(error))
            events.status("failed", message)
        except OSError:  # the disk is still full: the exit code carries the news
            logger.error("could not write the error event: %s", message)
        return EXIT_DISK_FULL if atomic.is_disk_full(error) else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m engine.worker RUN_DIR", file=sys.stderr)
        return 2
    # Before anything imports tqdm or huggingface_hub: no progress bars in worker.log.
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return run(Path(argv[0]), stop_signals=(signal.SIGTERM, signal.SIGINT))


if __name__ == "__main__":
    sys.exit(main())
