"""`python -m engine.worker RUN_DIR`: run the job in RUN_DIR/config.json in this process.

The studio starts one of these per run and only reads what it writes: RUN_DIR/events.jsonl,
checkpoints/, adapter/, merged/, metrics.json. SIGTERM (or SIGINT) asks for a clean stop: the current
step finishes, a checkpoint and the model are saved, and the last event says "stopped".
Progress bars are off here: the events carry progress, and bars would only fill worker.log.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path


def is_bad_input(error: BaseException) -> bool:
    """Whether the user's input (data, settings, a model name) caused `error`, rather than the machine."""
    from engine.data import DataError
    from engine.resolve import ModelNotAvailable

    return isinstance(error, (DataError, ModelNotAvailable, ValueError, json.JSONDecodeError))


def explain(error: BaseException, config=None) -> tuple[str, str]:
    """(what went wrong, what to do) in words a studio user can act on."""
    from engine.data import DataError

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
    return f"{type(error).__name__}: {error}", "see worker.log in the run folder for the full traceback"


def run(run_dir: Path, stop: threading.Event | None = None, echo: bool = False) -> int:
    """Run the job of one run directory; 0 when it completed or stopped cleanly, 1 when it failed.
    `echo` also prints the progress to stderr (the CLI)."""
    from engine.config import TrainConfig
    from engine.events import EventLog
    from engine.train import train

    events = EventLog(run_dir / "events.jsonl", echo=echo)
    stop = stop or threading.Event()
    config = None
    try:
        values = json.loads((run_dir / "config.json").read_text())
        values["output_dir"] = str(run_dir)
        config = TrainConfig.from_dict(values)
        train(config, events, stop)
        return 0
    except Exception as error:  # every failure becomes an event the studio can show
        # The studio's worker.log keeps the traceback; on the CLI it shows with --debug only.
        logger = logging.getLogger("engine.worker")
        (logger.debug if echo else logger.error)("run failed", exc_info=True)
        message, hint = explain(error, config)
        events.emit("error", error=message, hint=hint, bad_input=is_bad_input(error))
        events.status("failed", message)
        return 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m engine.worker RUN_DIR", file=sys.stderr)
        return 2
    # Before anything imports tqdm or huggingface_hub: no progress bars in worker.log.
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return run(Path(argv[0]), stop)


if __name__ == "__main__":
    sys.exit(main())
