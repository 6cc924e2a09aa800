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
