"""`python -m bench.speed --device cpu`, the small version of the GPU benchmark that runs here: stock
sentence-transformers and the packed loop on the same batches, reported side by side."""

from __future__ import annotations

import json

from bench.speed import main


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
