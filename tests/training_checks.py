"""The check that a packed loop trained as the stock step did: the same losses step by step and the same trainable
weights, most of which moved (so that the match is not of weights that stayed constant)."""

import pytest
import torch


def assert_same_training(packed_model, stock_model, records, expected, initial, moved_share: float = 0.8):
    """`records`: the packed loop's (step, loss, ...); `expected`: stock's losses; `initial`: the trainable weights
    before training; `moved_share`: the least share of them that must have moved."""
    assert [r[0] for r in records] == list(range(1, len(expected) + 1))
    assert [r[1] for r in records] == pytest.approx(expected, rel=1e-4)
    stock = dict(stock_model.named_parameters())
    moved = []
    for name, p in packed_model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p, stock[name], rtol=1e-4, atol=1e-5)
            moved.append(not torch.allclose(p, initial[name]))
    assert sum(moved) >= moved_share * len(moved)


def assert_resumes_as_if_never_stopped(config: dict, tmp_path, steps: int = 4):
    """`engine.train` of `config` (`steps` steps) whole in tmp_path/whole, and stopped after step 2 then resumed from
    its latest checkpoint in tmp_path/run: the resumed run ends at `steps` with the whole run's losses."""
    import json
    import threading

    from engine.events import EventLog
    from engine.train import train

    train({**config, "output_dir": str(tmp_path / "whole")})
    stop = threading.Event()

    class StopAtStepTwo(EventLog):
        def emit(self, event, **fields):
            super().emit(event, **fields)
            if event == "train" and fields["step"] == 2:
                stop.set()

    stopped = train({**config, "output_dir": str(tmp_path / "run")}, StopAtStepTwo(tmp_path / "run" / "events.jsonl"),
                    stop)
    assert stopped.stopped and stopped.steps < steps  # the step after the one whose loss was logged
    resumed = train({**config, "output_dir": str(tmp_path / "run"), "resume_from_checkpoint": "latest"})
    assert resumed.steps == steps

    def losses(run):
        return {e["step"]: e["loss"] for e in map(json.loads, (tmp_path / run / "events.jsonl").open())
                if e["event"] == "train"}

    assert losses("run") == pytest.approx(losses("whole"), rel=1e-4)
