"""What a `lacker train` process leaves unimported: a user waits for every module a run imports before its first step
(bench/time_to_model.py times the phases). Run as a real command, in a process of its own, on a tiny model and a
local JSONL file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tiny_models import build_tiny_model

ROOT = Path(__file__).resolve().parent.parent

# `lacker train` as a console script runs, then the modules that ran (a module imported lazily and never used
# has not run).
COMMAND = """
import json, sys, types
from engine.cli import main
code = main()
ran = sorted(name for name, module in sys.modules.items() if type(module) is types.ModuleType)
print("MODULES " + json.dumps(ran))
sys.exit(code)
"""

NOT_FOR_AN_EMBEDDING_RUN = ("gradio", "plotly", "bitsandbytes", "matplotlib", "onnx", "onnxruntime", "gguf",
                            "torchvision", "fastapi", "uvicorn")


def _modules_of(args: list[str], tmp_path: Path) -> set[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", COMMAND, *args], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("MODULES "))
    return {name.partition(".")[0] for name in json.loads(line.removeprefix("MODULES "))}


def test_an_embedding_run_on_a_local_jsonl_imports_neither_the_studio_stack_nor_4_bit_support(tmp_path):
    model = build_tiny_model("bert", tmp_path / "tiny-bert")
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"query": f"what is tool {i}", "document": f"tool {i} sorts lines of text "
                                        f"by key {i}"}) + "\n" for i in range(40)))
    modules = _modules_of(["train", "--model", str(model), "--data", str(data), "--max-steps", "2", "--batch-size", "8",
                           "--max-seq-length", "32", "--no-eval", "--output", str(tmp_path / "run")], tmp_path)
    assert (tmp_path / "run" / "merged" / "model.safetensors").exists()
    assert "torch" in modules and "sentence_transformers" in modules  # the probe sees what did run
    imported = sorted(set(NOT_FOR_AN_EMBEDDING_RUN) & modules)
    assert not imported, f"a LoRA embedding run imported {imported}"
