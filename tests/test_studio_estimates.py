"""What the studio tells a user before Start, as they read it: the GPU memory estimate, the run's expected time
(one figure with the device notice), the settings a run caps or would refuse, and how much the held-out setting
holds out of every source, the bundled sample included."""

import re

import pandas as pd
import pytest

from studio import hardware
from studio.data_sources import SAMPLE, DataSource, held_out_split, read_run_eval, write_run_data
from studio.tabs.model import describe_model, memory_summary
from studio.tabs.train import DEMO_PRESET, plan_markdown, preset_note
from studio_helpers import make_studio

EMBEDDINGGEMMA = {"params_m": 303, "layers": 24, "dim": 768}
MINILM = describe_model("sentence-transformers/all-MiniLM-L6-v2")


def gigabytes(text: str) -> float:
    return float(re.search(r"~([\d.]+) GB", text).group(1))


def test_gradient_checkpointing_lowers_the_estimate_and_says_so():
    plain = memory_summary(EMBEDDINGGEMMA, "lora", 64, 1024, 16)
    recomputed = memory_summary(EMBEDDINGGEMMA, "lora", 64, 1024, 16, checkpointing=True)
    assert "gradient checkpointing" in recomputed and "gradient checkpointing" not in plain
    assert gigabytes(recomputed) < gigabytes(plain) / 5  # activations: 24 + 18 values a unit, not 24 x 18
    # QLoRA's 4-bit base still shows under checkpointing
    assert gigabytes(memory_summary(EMBEDDINGGEMMA, "qlora", 64, 1024, 16, checkpointing=True)) < gigabytes(recomputed)


@pytest.fixture
def cpu_only(monkeypatch):
    monkeypatch.setattr(hardware, "gpu_name", lambda: None)


@pytest.fixture
def studio(tmp_path, cpu_only):
    return make_studio(tmp_path / "runs")


def plan(studio, data=SAMPLE, info=MINILM, eval_size=0.1, method="lora", mode="max steps", epochs=1.0,
         max_steps=40, batch=16, seq=128, checkpointing=False, evaluate=True, eval_queries=300, lora_r=16) -> str:
    return plan_markdown(studio, info, data.to_dict() if data else None, eval_size, method, mode, epochs, max_steps,
                         batch, seq, checkpointing, evaluate, eval_queries, lora_r)


def minutes(text: str) -> float:
    """The expected time a plan states, in minutes."""
    said = re.search(r"Expected time: (under a minute|about a minute|about (\d+) minutes|about (\d+) h(?: (\d+) min)?)",
                     text)
    assert said, text
    if said.group(2):
        return float(said.group(2))
    if said.group(3):
        return 60 * float(said.group(3)) + float(said.group(4) or 0)
    return 1.0


def test_the_demo_preset_is_expected_to_take_about_a_minute_and_the_default_form_warns(studio):
    demo = plan(studio)
    assert minutes(demo) <= 2 and "no run has finished here yet" in demo and "long for a CPU" not in demo
    by_epochs = plan(studio, mode="epochs", batch=32, seq=256)  # the form's defaults: one pass over the sample
    assert "125 steps" in by_epochs and 2 < minutes(by_epochs) <= 10 and "long for a CPU" not in by_epochs
    long_run = plan(studio, max_steps=200, batch=64, seq=256)
    assert minutes(long_run) > 10 and "That is long for a CPU" in long_run


def test_the_estimate_follows_the_settings(studio):
    base = minutes(plan(studio, max_steps=400))
    assert minutes(plan(studio, max_steps=1600)) > 3 * base
    assert minutes(plan(studio, max_steps=400, batch=64)) > 3 * base
    assert minutes(plan(studio, max_steps=400, info=describe_model("sentence-transformers/all-mpnet-base-v2"))) > 3 * base
    unknown = plan(studio, info=describe_model("someone/unlisted-model"))
    assert "size is unknown until it loads" in unknown


def test_a_measured_run_replaces_the_default_and_the_notice_quotes_the_same_speed(cpu_only):
    work = hardware.step_work(**hardware.DEMO_SHAPE)
    slow = [hardware.StepSample(seconds_per_step=3.0, work=work, overhead_seconds=20.0, evaluate=True)]
    assert "~20 steps/min" in hardware.device_notice(slow)  # 60 s / 3 s a step
    measured = hardware.estimate(100, work, True, slow)
    assert measured.seconds == pytest.approx(320) and "last run finished on this machine" in measured.basis
    assert f"~{hardware.CPU_STEPS_PER_MINUTE} steps/min" in hardware.device_notice()


def test_caps_and_refusals_are_said_before_start(studio):
    small = studio.settings.home / "small.csv"  # inside the folders the studio may read
    pd.DataFrame({"query": [f"question {i}" for i in range(40)],
                  "answer": [f"answer {i}" for i in range(40)]}).to_csv(small, index=False)
    source = DataSource("file", str(small))
    too_big = plan(studio, data=source, batch=64)
    assert "Batch size 64 is larger than the 36 training rows" in too_big and "at most 36" in too_big
    assert "Eval queries 300 is more than the 4 held-out queries: all 4 are scored" in plan(studio, data=source, batch=8)
    capped = plan(studio, eval_queries=100)
    assert "Evaluation scores 100 of the 450 held-out queries (capped by Eval queries)" in capped
    long_texts = plan(studio, seq=1024)
    assert "longer than the model's 256 positions" in long_texts and "Pick at most 256" in long_texts


def test_the_held_out_setting_applies_to_the_sample(studio, tmp_path):
    note = held_out_split(SAMPLE, studio.settings, 0.05).note
    assert "225 of the sample's 500 test queries" in note and "4,000 training pairs" in note
    mapping = {"anchor": "query", "positive": "document"}
    write_run_data(tmp_path / "run", SAMPLE, studio.settings, mapping, 0.05, seed=1)
    assert len(read_run_eval(tmp_path / "run")) == 225
    everything = held_out_split(SAMPLE, studio.settings, 0.5).note
    assert "500 of the sample's 500 test queries" in everything and "capped at the whole test split" in everything


def test_the_demo_preset_says_what_it_set(studio):
    note = preset_note(studio, SAMPLE.to_dict(), MINILM)
    for said in ("all-MiniLM-L6-v2", SAMPLE.name, f"{DEMO_PRESET['max_steps']} steps", "expected "):
        assert said in note


def test_the_estimate_follows_the_task(studio):
    """A cross-encoder reads a pair as one sequence where a bi-encoder embeds two texts, but first mines its
    negatives; a classifier reads one text."""
    def seconds(task):
        return hardware.estimate(400, hardware.step_work(22.7, 32, 128, task=task), True, task=task).seconds

    assert seconds("classifier") < 0.7 * seconds("embedding")
    assert seconds("classifier") < seconds("reranker") < seconds("embedding")
    measured = [hardware.StepSample(1.0, hardware.step_work(22.7, 32, 128), 90.0, True, task="reranker")]
    assert hardware.estimate(10, hardware.step_work(22.7, 32, 128), True, measured, task="embedding").seconds == \
        pytest.approx(10 + hardware.DEFAULT_OVERHEAD_SECONDS[True])  # a reranker's mining is not an embedding's
