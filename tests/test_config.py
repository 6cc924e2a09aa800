"""A run's settings have one source (engine.config.TrainConfig): the CLI's flags, the studio's API and form, and
the shell command the studio prints are derived from it and agree with each other."""

import dataclasses
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import build_parser
from engine.config import TrainConfig, api_defaults, command_line, config_from_args
from studio.data_sources import SAMPLE
from studio.settings import REPO_ROOT

from studio_helpers import make_studio, quick_config, wait_for

SAMPLE_TRAIN = "assets/debian-pairs/train.jsonl"


def parse_command(command: str) -> dict:
    """The config keys a printed `lacker train ...` command sets, as the CLI reads them."""
    words = shlex.split(command)
    assert words[:2] == ["lacker", "train"], command
    return config_from_args(build_parser().parse_args(words[1:]))


def full_settings(values: dict) -> dict:
    return TrainConfig.from_dict({"data": SAMPLE_TRAIN, **values}).to_json()


@pytest.mark.parametrize("values", [
    {},
    {"max_steps": 40, "batch_size": 16, "max_seq_length": 128, "learning_rate": 1e-3, "max_eval_queries": 300},
    {"method": "full", "epochs": 2.5, "evaluate": False, "gradient_checkpointing": True, "seed": 7},
    {"method": "qlora", "lora_r": 8, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": ["query", "value"],
     "columns": {"anchor": "q", "positive": "d", "negative": ["n1", "n2"]}, "eval_size": 200, "warmup_ratio": 0.0,
     "loss": "CachedMultipleNegativesRankingLoss", "save_steps": 50, "eval_steps": 25, "fast": False,
     "loop": "off", "data_config": "triplet", "data_split": "train", "resume_from_checkpoint": "latest"},
])
def test_the_printed_command_parses_back_to_the_same_settings(values):
    settings = full_settings(values)
    command = command_line(settings, SAMPLE_TRAIN, "runs/x")
    parsed = full_settings({**parse_command(command), "output_dir": settings["output_dir"]})
    assert parsed == settings, command


def test_every_setting_has_a_flag_and_an_api_default_but_paths_stay_the_studios():
    parser = build_parser()
    train = next(a for a in parser._subparsers._group_actions[0].choices.values() if a.prog.endswith("train"))
    dests = {action.dest for action in train._actions}
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    assert names <= dests
    assert set(api_defaults()) == names - {"data", "eval_data", "extra_corpus", "output_dir", "resume_from_checkpoint"}
    assert api_defaults()["batch_size"] == TrainConfig.batch_size  # the dataclass's default, not a copy


@pytest.mark.parametrize("values, named", [
    ({"batch_size": "32"}, "batch_size must be a whole number, got '32' (a number in quotes is text"),
    ({"batch_size": 0}, "batch_size must be at least 1"),
    ({"max_steps": 1e9}, "max_steps must be at most"),
    ({"learning_rate": "fast"}, "learning_rate must be a number"),
    ({"method": "lorax"}, "method 'lorax' is not one of lora, qlora, full"),
    ({"evaluate": "yes"}, "evaluate must be true or false"),
    ({"batch": 32}, "unknown setting batch; known settings are:"),
    ({"eval_size": 1.5}, "eval_size 1.5 is neither a fraction below 1 nor a whole row count"),
    ({"lora_r": None}, "lora_r needs a value"),
])
def test_a_bad_setting_is_named_with_what_it_takes(values, named):
    with pytest.raises(ValueError, match="^" + __import__("re").escape(named)):
        TrainConfig.from_dict({"data": SAMPLE_TRAIN, **values})


def test_the_studio_refuses_a_bad_setting_before_queueing_it(tmp_path):
    studio = make_studio(tmp_path)
    with pytest.raises(ValueError, match="batch_size must be a whole number"):
        studio.start_run(quick_config(batch_size="32"), SAMPLE)
    assert studio.store.list() == []


def _run_dir_settings(run_dir: Path) -> dict:
    config = json.loads((run_dir / "config.json").read_text())
    return {k: v for k, v in full_settings(config).items()
            if k not in ("data", "eval_data", "columns", "output_dir", "data_config", "data_split")}


def _events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_the_studios_shell_command_reproduces_its_run(tmp_path):
    """Run the command the Train tab shows: the same settings, the same rows, the same metrics."""
    studio = make_studio(tmp_path / "home")
    studio.runner.start_monitor()
    try:
        run = studio.start_run(quick_config(max_steps=4, evaluate=True, max_eval_queries=40), SAMPLE)
        wait_for(lambda: studio.store.get(run.id).is_finished, 300, "the studio's run to finish")
    finally:
        studio.runner.close()
    run = studio.store.get(run.id)
    assert run.status == "completed", (run.error, run.hint)
    studio_dir = Path(run.run_dir)
    command = studio.command_for(run)
    cli_dir = tmp_path / "cli-run"
    words = shlex.split(command)
    words[words.index("--output") + 1] = str(cli_dir)
    result = subprocess.run([sys.executable, "-m", "engine", *words[1:]], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    assert _run_dir_settings(cli_dir) == _run_dir_settings(studio_dir), command
    rows = [[e["message"] for e in _events(d) if e["event"] == "log" and "training rows" in e["message"]]
            for d in (studio_dir, cli_dir)]
    assert rows[0] == rows[1] and rows[0], rows
    losses = [[e["loss"] for e in _events(d) if e["event"] == "train"] for d in (studio_dir, cli_dir)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4) and len(losses[0]) == 4
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (studio_dir, cli_dir)]
    assert metrics[0]["trained"] == pytest.approx(metrics[1]["trained"], abs=1e-6)


@pytest.mark.parametrize("values, rows, limits, named", [
    ({"batch_size": 64}, 40, (512, 384), "batch_size 64 is larger than the 40 training rows; pick at most 40"),
    ({"max_steps": 1_000_000, "batch_size": 32}, 4000, (512, 384), "pick at most 125000 steps"),
    ({"max_seq_length": 4096}, 4000, (512, 384), "max_seq_length 4096 is longer than the model's 512 positions"),
    ({"lora_r": 512}, 4000, (512, 384), "lora_r 512 is larger than the model's width (384)"),
])
def test_settings_are_bounded_by_the_data_and_the_model(values, rows, limits, named):
    config = TrainConfig.from_dict({"data": SAMPLE_TRAIN, **values})
    with pytest.raises(ValueError, match=__import__("re").escape(named)):
        config.check_against(rows, *limits)
    TrainConfig.from_dict({"data": SAMPLE_TRAIN}).check_against(rows, *limits)  # the defaults fit


def test_a_run_past_what_the_data_allows_fails_before_loading_with_the_setting_named(tmp_path):
    from engine.train import train

    with pytest.raises(ValueError, match="max_steps 1000000 at batch 32"):
        train({"data": SAMPLE_TRAIN, "max_steps": 1_000_000, "output_dir": str(tmp_path / "run")})
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert not any(e["event"] == "status" and e["status"] == "loading" and "loading sentence" in e["message"]
                   for e in events)
