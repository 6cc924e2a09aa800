"""The packed loop's checkpoints: trainable weights, optimizer state and the step, in one file of a folder
(`STATE_FILE`), enough to go on where a run stopped. The stock trainer's checkpoints are other folders;
`is_loop_checkpoint` tells them apart."""

from __future__ import annotations

from pathlib import Path

import torch

STATE_FILE = "loop_state.pt"


def is_loop_checkpoint(folder: str | Path | None) -> bool:
    return folder is not None and (Path(folder) / STATE_FILE).exists()


def save_state(folder: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int,
               total_steps: int) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    trainable = {name: p.detach().cpu() for name, p in model.named_parameters() if p.requires_grad}
    torch.save({"step": step, "trainable": trainable, "optimizer": optimizer.state_dict(),
                "total_steps": total_steps}, folder / STATE_FILE)
    return folder


def load_state(folder: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               device: torch.device) -> int:
    """Write `save_state`'s weights and optimizer state into `model` and `optimizer`; returns the step."""
    state = torch.load(Path(folder) / STATE_FILE, map_location=device, weights_only=True)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state["trainable"].items():
            params[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    return state["step"]
