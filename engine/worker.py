"""`python -m engine.worker RUN_DIR`: run the job in RUN_DIR/config.json in this process.

The studio starts one of these per run and only reads what it writes: RUN_DIR/events.jsonl,
checkpoints/, adapter/, merged/, metrics.json. SIGTERM (or SIGINT) asks for a stop, in any phase: while
training, the current step finishes, a checkpoint and the model are saved; while loading, tokenizing,
evaluating or saving, the work ends at once (what was being written is removed; the checkpoints stay).
Either way the last event says "stopped". The exit code says how it ended, for when the events cannot:
0 completed or stopped, 1 failed, EXIT_DISK_FULL failed for lack of space (the events may not have fitted).
Progress bars are off here: the events carry progress, and bars would only fill worker.log.

A config with `gpus` above 1 makes the worker start torchrun, which starts one of these a GPU
(engine.distributed): rank 0 writes, as one worker does, SIGTERM to the worker reaches every rank through
torchrun, and the worker's exit code is the run's, as above. A rank that
fails writes its own error (only it knows it) unless every rank meets the same one (bad input: rank 0 says it);
rank 0, left without it, fails naming that rank's error; torchrun then ends the others and exits non-zero.
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

from engine import atomic, distributed

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


def go_without_bitsandbytes(method: str | None) -> None:
    """For a process that runs one job, not a QLoRA one: bitsandbytes is absent (None in sys.modules, which `import`
    and importlib.util.find_spec take for not installed). peft imports it whenever it is installed, on import and
    again when it adds LoRA layers (seconds on a small CPU), though only a 4-bit base uses it. Not for a process
    that may run other jobs after this one (a notebook, the tests): they would find it missing."""
    if (method or "lora") != "qlora":
        sys.modules.setdefault("bitsandbytes", None)


def run(run_dir: Path, stop: threading.Event | None = None, echo: bool = False,
        stop_signals=(signal.SIGTERM,), values: dict | None = None) -> int:
    """Run the job of one run directory; 0 when it completed or stopped, 1 when it failed, EXIT_DISK_FULL
    when it failed for lack of space. `echo` also prints the progress to stderr (the CLI; else the studio, whose
    worker.log keeps the output). `stop_signals` stop the run in any phase (see `stop_on_signals`). `values`:
    the config, where the caller has it (else RUN_DIR/config.json)."""
    from engine.events import EventLog

    log = run_dir / "events.jsonl"
    started_at = log.stat().st_size if log.exists() else 0  # a resumed run's folder holds earlier runs' events
    events = EventLog(log, echo=echo)
    stop = stop or threading.Event()
    config = None
    try:
        with stop_on_signals(stop, events, stop_signals):
            from engine.config import TrainConfig
            from engine.train import train

            values = dict(values) if values is not None else json.loads((run_dir / "config.json").read_text())
            values["output_dir"] = str(run_dir)
            config = TrainConfig.from_dict(values)
            train(config, events, stop)
        distributed.teardown()  # not after a failure: a group that lost a rank may hang on the way out
        return 0
    except StopRequested as where:
        events.status("stopped", f"stopped while {where}; the checkpoints saved so far are kept")
        distributed.teardown()
        return 0
    except Exception as error:  # every failure becomes an event the studio can show
        # The studio's worker.log keeps the traceback; on the CLI it shows with --debug only.
        logger = logging.getLogger("engine.worker")
        (logger.debug if echo else logger.error)("run failed", exc_info=True)
        message, hint = explain(error, config, DEBUG_HINT if echo else f"see {run_dir / 'worker.log'} for the full "
                                                                        "traceback")
        world = distributed.current()
        if world.distributed:
            message, hint, events = _rank_failure(error, message, hint, events, world, log, started_at)
        try:
            if events is not None:
                events.emit("error", error=message, hint=hint, bad_input=is_bad_input(error), rank=world.rank)
                events.status("failed", message)
        except OSError:  # the disk is still full: the exit code carries the news
            logger.error("could not write the error event: %s", message)
        return EXIT_DISK_FULL if atomic.is_disk_full(error) else 1


def _rank_failure(error, message: str, hint: str, events, world, log: Path, started_at: int):
    """(message, hint, where to write) for a failure on one of several ranks: rank 0 that lost another rank names
    that rank's own error (written before it went) or says it went without one; another rank writes its own
    failure, but not the ones every rank meets (bad input, which rank 0 reports) nor a lost peer."""
    from engine.events import EventLog

    if not world.main:
        if is_bad_input(error) or distributed.is_peer_lost(error):
            return message, hint, None
        return f"rank {world.rank} of {world.size} failed: {message}", hint, EventLog(log, every_rank=True)
    if not distributed.is_peer_lost(error):
        return message, hint, events
    with log.open("rb") as handle:
        handle.seek(started_at)
        theirs = [e for e in map(json.loads, handle.read().splitlines()) if e.get("event") == "error"]
    if theirs:
        return theirs[-1]["error"], theirs[-1]["hint"], events
    return (f"another of the {world.size} ranks stopped answering (killed, out of memory, or its host lost)",
            "see worker.log (or the terminal) for what torchrun said of it; resume from the last checkpoint once "
            "every GPU is free", events)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m engine.worker RUN_DIR", file=sys.stderr)
        return 2
    # Before anything imports tqdm or huggingface_hub: no progress bars in worker.log.
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    run_dir = Path(argv[0])
    go_without_bitsandbytes(_config_value(run_dir, "method"))
    gpus = _gpus(run_dir)
    if gpus > 1 and not distributed.current().distributed:
        try:
            return run_on_ranks(gpus, ["engine.worker", str(run_dir)], run_dir / "events.jsonl")
        except ValueError as error:  # more GPUs asked for than there are
            from engine.events import EventLog

            events = EventLog(run_dir / "events.jsonl")
            events.emit("error", error=str(error), hint="change the setting it names, then start again", bad_input=True)
            events.status("failed", str(error))
            return 1
    return run(run_dir, stop_signals=(signal.SIGTERM, signal.SIGINT))


def run_on_ranks(gpus: int, module_args: list[str], log: Path) -> int:
    """`python -m MODULE_ARGS...` as `gpus` ranks (engine.distributed.run_ranks); the exit code says how the run
    ended, as `run`'s does: torchrun's is not 0 after a stop asked by a signal, though the ranks stopped cleanly."""
    started_at = log.stat().st_size if log.exists() else 0
    code = distributed.run_ranks(gpus, module_args)
    if code and log.exists():
        with log.open("rb") as handle:
            handle.seek(started_at)
            statuses = [e["status"] for e in map(json.loads, handle.read().splitlines()) if e.get("event") == "status"]
        if statuses and statuses[-1] in ("completed", "stopped"):
            return 0
    return code


def _config_value(run_dir: Path, key: str):
    try:
        return json.loads((run_dir / "config.json").read_text()).get(key)
    except (OSError, ValueError, AttributeError):  # run() words what is wrong with the config
        return None


def _gpus(run_dir: Path) -> int:
    try:
        return int(_config_value(run_dir, "gpus") or 1)
    except (ValueError, TypeError):
        return 1


if __name__ == "__main__":
    sys.exit(main())
