"""`python -m bench.speed --device cpu`, the small version of the GPU benchmark that runs here: stock
sentence-transformers and the packed loop on the same batches, reported side by side."""

from __future__ import annotations

import json

import pytest

from bench.speed import Result, _gap_cell, loss_gap, main


def test_cpu_bench_runs_stock_and_ours_past_one_pass_of_the_data(tmp_path):
    # 70 batches of 64 is more than the ~3,970 bundled pairs: both methods go round the data again.
    report, results = tmp_path / "bench.md", tmp_path / "bench.json"
    main(["--device", "cpu", "--only", "tiny-bert:32:64:stock,ours:70", "--out", str(report), "--plot", "",
          "--json", str(results)])

    rows = json.loads(results.read_text())
    assert [r["method"] for r in rows] == ["stock", "ours"]
    for row in rows:
        assert row["error"] == "" and row["steps"] == 70
        assert row["pairs_per_s"] > 0 and row["end_to_end_s"] > 0
        assert [step for step, _ in row["losses"]] == list(range(5, 71, 5))  # every step ran and was logged
    assert "packed varlen attention" in rows[1]["enabled"]
    text = report.read_text()
    assert "| tiny-bert | 32 | 64 | 70 | stock |" in text and "| tiny-bert | 32 | 64 | 70 | ours |" in text
    assert "command: `python -m bench.speed --device cpu --only tiny-bert:32:64:stock,ours:70" in text


def test_resume_runs_only_the_rows_the_results_file_lacks(tmp_path):
    """A plan longer than one sitting (a lent GPU's 10-minute commands) runs in several: each sitting adds
    the rows missing from --json; a row with a method missing runs again whole, in one process."""
    results = tmp_path / "runs.json"

    def sitting(*rows):
        main(["--device", "cpu", "--only", *rows, "--steps", "4", "--out", str(tmp_path / "b.md"), "--plot", "",
              "--json", str(results), "--resume"])
        return {(r["model"], r["method"]): r for r in json.loads(results.read_text())}

    first = sitting("tiny-bert:32:8:stock")
    second = sitting("tiny-bert:32:8:stock", "tiny-qwen3:32:8:stock")
    assert second[("tiny-bert", "stock")] == first[("tiny-bert", "stock")]  # kept, not run again
    assert second[("tiny-qwen3", "stock")]["pairs_per_s"] > 0
    third = sitting("tiny-bert:32:8:stock,ours", "tiny-qwen3:32:8:stock")
    assert third[("tiny-bert", "stock")] != first[("tiny-bert", "stock")]  # its row gained a method: run whole
    assert third[("tiny-qwen3", "stock")] == second[("tiny-qwen3", "stock")]
    assert len(json.loads(results.read_text())) == 3
    report = (tmp_path / "b.md").read_text()
    assert "| tiny-bert | 32 | 8 | 4 | ours |" in report and "| tiny-qwen3 | 32 | 8 | 4 | stock |" in report


def test_shards_split_the_plan_between_cards_and_join_into_one_report(tmp_path):
    """`--shard k/n` on n cards runs every row of the plan once; --from-json joins their results."""
    rows = ["tiny-bert:32:8:stock", "tiny-qwen3:32:8:stock", "tiny-bert:16:8:stock"]
    parts = []
    for k in (1, 2):
        parts.append(tmp_path / f"part{k}.json")
        main(["--device", "cpu", "--only", *rows, "--shard", f"{k}/2", "--steps", "4", "--plot", "",
              "--out", str(tmp_path / f"part{k}.md"), "--json", str(parts[-1])])
    ran = [[(r["model"], r["seq"]) for r in json.loads(part.read_text())] for part in parts]
    assert ran == [[("tiny-bert", 32), ("tiny-bert", 16)], [("tiny-qwen3", 32)]]

    # A report joined on another machine names the card the rows ran on, not its own.
    saved = json.loads(parts[1].read_text())
    assert saved[0]["card"].startswith("CPU") and "torch" in saved[0]["versions"] and saved[0]["measured"]
    saved[0]["card"] = "NVIDIA H200"
    parts[1].write_text(json.dumps(saved))
    joined = tmp_path / "joined.md"
    main(["--from-json", *map(str, parts), "--out", str(joined), "--plot", ""])
    text = joined.read_text()
    assert "- card: CPU (" in text and "; NVIDIA H200" in text
    for line in ("| tiny-bert | 32 | 8 | 4 | stock |", "| tiny-qwen3 | 32 | 8 | 4 | stock |", "| tiny-bert | 16 | 8 | 4 | stock |"):
        assert line in text

    with pytest.raises(SystemExit, match="K must be between 1 and N"):
        main(["--device", "cpu", "--only", *rows, "--shard", "3/2"])


def test_loss_gap_stops_where_stock_diverged():
    """The trainer logs a window of NaN losses as 0 and fills a NaN step inside a window with the running mean:
    the gap is read up to the window before, and the cell says that stock diverged."""
    ours = Result("m", 1024, 32, "ours", 60, losses=[(s, 2.0 + 0.01 * (s == 25)) for s in range(5, 61, 5)])
    losses = [(s, 2.0) for s in range(5, 46, 5)] + [(50, 1.8), (55, 0.0), (60, 0.0)]
    stock = Result("m", 1024, 32, "stock", 60, losses=losses)
    assert loss_gap(ours, stock) == pytest.approx(0.005)  # step 25; steps 50-60 left out
    assert _gap_cell(ours, stock) == "0.5% to step 45 (stock diverged: loss not finite by step 55)"
    healthy = Result("m", 1024, 32, "stock", 60, losses=[(s, 2.0) for s in range(5, 61, 5)])
    assert _gap_cell(ours, healthy) == "0.5%"


def test_the_tasks_report_says_who_diverged_where_no_gap_can_be_read(tmp_path):
    """A reranker row whose stock loss stops being finite at step 15: no gap after step 20 exists, and the cell says
    why instead of staying blank."""
    from bench.speed_tasks import TaskResult, write_report

    stock = TaskResult("m", 512, 32, "stock", 60, losses=[(5, 1.0), (10, 0.9), (15, 0.0), (20, 0.0)], task="reranker",
                       pairs_per_s=100.0, peak_gib=2.0)
    ours = TaskResult("m", 512, 32, "ours", 60, losses=[(s, 0.9) for s in range(5, 61, 5)], task="reranker",
                      pairs_per_s=800.0, peak_gib=1.0)
    write_report([stock, ours], tmp_path / "tasks.md", "cpu", "python -m bench.speed --tasks")
    (row,) = [line for line in (tmp_path / "tasks.md").read_text().splitlines() if "| ours |" in line]
    assert "| 8.00 |" in row and "(stock diverged: loss not finite by step 15)" in row
