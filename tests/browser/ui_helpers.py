"""What the browser tests share: opening tabs, reading the Train tab's curve, progress and status, starting a run on
the sample, Compare's marked answers, and screenshots (taken only when LACKER_SCREENSHOTS says where)."""

import os
import time
from pathlib import Path

from studio_helpers import wait_for

README_SCREENSHOTS = Path(__file__).resolve().parents[2] / "assets" / "screenshots"
RUN_TIMEOUT = 600


def screenshot(page, tab: str) -> None:
    """Save the page as <tab>.png where LACKER_SCREENSHOTS says; without it, do nothing."""
    wanted = os.environ.get("LACKER_SCREENSHOTS")
    if not wanted:
        return
    folder = README_SCREENSHOTS if wanted == "1" else Path(wanted)
    folder.mkdir(parents=True, exist_ok=True)
    time.sleep(1)  # plotly animates a new chart in; let it settle so the picture shows it drawn
    page.screenshot(path=str(folder / f"{tab}.png"), full_page=True)


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def loss_points(page) -> int:
    return page.evaluate("() => { const p = document.querySelector('#loss-plot .js-plotly-plot');"
                         " return p && p.data && p.data[0] ? p.data[0].x.length : 0; }")


def progress(page) -> dict:
    return page.evaluate("() => { const p = document.querySelector('#run-progress');"
                         " return p ? {step: +p.dataset.step, total: +p.dataset.total, percent: +p.dataset.percent} : {}; }")


def status_text(page) -> str:
    return page.locator("#train-status").inner_text()


def fill_number(page, label: str, value) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Tab")


def run_ids(studio_app) -> set[str]:
    from studio.store import RunStore

    return {run.id for run in RunStore(studio_app.home / "runs.sqlite").list()}


def start_sample_run(page, studio_app, max_steps: int, evaluate: bool = True, eval_queries: int = 200,
                     checkpointing: bool = False) -> str:
    """Load the sample, set a short run, press Start; returns the new run's id once the Train tab shows it."""
    before = run_ids(studio_app)
    open_tab(page, "Data")
    page.get_by_role("button", name="Use the bundled sample").click()
    page.locator("#data-summary").get_by_text("4,000 rows").wait_for()
    open_tab(page, "Train")
    fill_number(page, "Max steps", max_steps)
    fill_number(page, "Batch size", 16)
    fill_number(page, "Max sequence length (tokens)", 128)
    fill_number(page, "Learning rate", 0.001)
    fill_number(page, "Eval queries", eval_queries)
    if not evaluate:
        page.get_by_label("Evaluate base and trained model").uncheck()
    if checkpointing:
        page.locator("#gradient-checkpointing input").check()
        page.locator("#train-memory").get_by_text("gradient checkpointing").wait_for()
    page.locator("#start-training").click()
    new = wait_for(lambda: run_ids(studio_app) - before, 60, "the new run in the registry")
    run_id = new.pop()
    page.locator("#train-status").get_by_text(run_id).wait_for()
    return run_id


def held_out_answers(studio_app, run_id: str) -> dict[str, str]:
    """Each held-out query of the run with its relevant document, as the run folder has them."""
    import json

    from studio.store import RunStore

    run_dir = Path(RunStore(studio_app.home / "runs.sqlite").get(run_id).run_dir)
    rows = [json.loads(line) for line in (run_dir / "data" / "eval.jsonl").read_text().splitlines()]
    return {row["anchor"].strip(): row["positive"].strip() for row in rows}


def query_text(page) -> str:
    return page.locator("#compare-query textarea, #compare-query input").first.input_value()


def marked_answers(page, columns=("#compare-base", "#compare-trained")) -> list[str]:
    """The document of the row marked relevant in the base column, then in the fine-tuned one (or in `columns`)."""
    from studio.tabs.compare import RELEVANT

    marked = []
    for column in columns:
        rows = page.locator(f"{column} [role=row]").filter(has_text=RELEVANT)
        marked += [rows.nth(i).locator("[role=gridcell], td").last.inner_text().strip() for i in range(rows.count())]
    return marked


def finished_as(page, run_id: str, status: str) -> bool:
    text = status_text(page)
    return run_id in text and status in text


def number_in(page, label: str) -> float:
    return float(page.get_by_label(label, exact=True).input_value())


def command_text(page) -> str:
    return page.locator("#train-command textarea").input_value()


def no_run_active(studio_app) -> bool:
    from studio.store import RunStore

    return not RunStore(studio_app.home / "runs.sqlite").list(("running", "queued"))
