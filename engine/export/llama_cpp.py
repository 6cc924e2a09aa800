"""The llama.cpp runtime the GGUF parity check embeds with: node-llama-cpp's prebuilt CPU build of llama.cpp,
from the npm registry.

Why this one: Debian 12 packages no llama.cpp; llama-cpp-python on PyPI is a source distribution (a C++ build of
many minutes on two cores); the PyPI wheels with a prebuilt llama.cpp we found need glibc 2.38 (Debian 12 has
2.36) or carry CUDA (300 MB). `@node-llama-cpp/linux-x64` is llama.cpp's own libllama built for glibc 2.34 with a
CPU backend per instruction set, picked at load time; `npm install` takes seconds. Nothing is downloaded at run
time: `install()` (`lacker export --install-llama-cpp`) puts both packages in RUNTIME_DIR once, with their install
scripts off, so node-llama-cpp never tries to fetch or build anything.

`embed` runs llama_embed.mjs beside this file in node, and `rank` (a reranker's pairs, through node-llama-cpp's
ranking context) llama_rank.mjs: one process a call, the inputs in and the vectors or scores out as JSON files. It
computes on one thread unless LACKER_LLAMA_CPP_THREADS says more: ggml's threads wait for each other by spinning,
and on a CPU shared with other work (a training run, CI) two of them took 20 times longer than one (20 texts:
4 min 47 s against 15 s, 2 cores under load).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from engine.export import ExportError

PACKAGES = ("node-llama-cpp@3.22.1", "@node-llama-cpp/linux-x64@3.22.1")
SCRIPT = Path(__file__).with_name("llama_embed.mjs")
RANK_SCRIPT = Path(__file__).with_name("llama_rank.mjs")
INSTALL_HINT = "run `lacker export --install-llama-cpp` once (it needs node and npm)"


def runtime_dir() -> Path:
    """Where the runtime lives: LACKER_LLAMA_CPP_DIR, else ~/.cache/lacker/llama-cpp."""
    return Path(os.environ.get("LACKER_LLAMA_CPP_DIR") or Path.home() / ".cache" / "lacker" / "llama-cpp")


def missing() -> str | None:
    """Why the runtime cannot run here, or None when it can."""
    if shutil.which("node") is None:
        return "node is not installed, and the llama.cpp runtime runs in node"
    if not (runtime_dir() / "node_modules" / "node-llama-cpp" / "package.json").exists():
        return f"the llama.cpp runtime is not installed in {runtime_dir()}"
    return None


def install() -> Path:
    """npm-install the runtime into runtime_dir() (seconds; skipped when it is there)."""
    folder = runtime_dir()
    if missing() is None:
        return folder
    if shutil.which("npm") is None:
        raise ExportError("npm is not installed, and the llama.cpp runtime comes from the npm registry",
                          "install node and npm (Debian: apt-get install nodejs npm), then run this again")
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "package.json").exists():
        (folder / "package.json").write_text('{"private": true}\n')
    environment = {**os.environ, "NODE_LLAMA_CPP_SKIP_DOWNLOAD": "true"}
    done = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--omit=optional", "--ignore-scripts",
                           *PACKAGES], cwd=folder, env=environment, capture_output=True, text=True)
    if done.returncode != 0:
        raise ExportError(f"npm could not install the llama.cpp runtime: {done.stderr.strip()[-500:]}",
                          "check that the npm registry can be reached, then run this again")
    return folder


def added_tokens(metadata: dict) -> tuple[int | None, int | None]:
    """(the token llama.cpp begins every text of a file with this metadata with, the one it ends it with) where
    node-llama-cpp's embedding context adds none, else None. llama.cpp (llama-server, Ollama) begins a Unigram text
    with the beginning token when the file says add_bos_token, as XLM-RoBERTa's does (<s>), and node-llama-cpp never
    does; it ends a BPE or SentencePiece text with the end-of-text token whenever the file says add_eos_token, as
    Qwen3-Embedding's does, and node-llama-cpp only when the vocabulary has a beginning token too."""
    vocabulary = metadata.get("tokenizer.ggml.model")
    begin = metadata.get("tokenizer.ggml.bos_token_id") \
        if vocabulary == "t5" and metadata.get("tokenizer.ggml.add_bos_token") else None
    if vocabulary in ("bert", "t5") or not metadata.get("tokenizer.ggml.add_eos_token"):
        return begin, None  # WordPiece and Unigram: node-llama-cpp adds the end token as llama.cpp does
    if metadata.get("tokenizer.ggml.bos_token_id") is not None and metadata.get("tokenizer.ggml.add_bos_token", True):
        return begin, None
    return begin, metadata.get("tokenizer.ggml.eos_token_id")


def embed(gguf_path: Path, texts: list[str], metadata: dict) -> tuple[np.ndarray, list[list[int]]]:
    """The embeddings llama.cpp computes for `texts` from the GGUF file (whose `metadata` says which special tokens
    llama.cpp adds), as llama.cpp pools them (the file's pooling type) and without normalization: (len(texts), dim)
    float32; and the token ids each text was embedded from, its special tokens included."""
    begin, end = added_tokens(metadata)
    done = _run(gguf_path, texts, ["" if begin is None else str(begin), "" if end is None else str(end)])
    return np.asarray(done["vectors"], dtype=np.float32), done["tokens"]


def rank(gguf_path: Path, pairs: list[tuple[str, str, int, int]]) -> tuple[np.ndarray, list[list[int]]]:
    """The scores llama.cpp's rank pooling gives (query, document, query tokens kept, document tokens kept) `pairs`
    with a reranker's GGUF file, before any sigmoid: (len(pairs), 1) float32; and the token ids each pair was scored
    from, joined as the file's rerank template says."""
    done = _run(gguf_path, [list(pair) for pair in pairs], [], RANK_SCRIPT)
    scores = np.asarray([np.nan if score is None else score for score in done["scores"]], dtype=np.float32)
    return scores.reshape(-1, 1), done["tokens"]


def _run(gguf_path: Path, inputs: list, arguments: list[str], script: Path = SCRIPT) -> dict:
    """Run `script` in node on `inputs` (JSON in) and return what it writes (JSON out)."""
    reason = missing()
    if reason:
        raise ExportError(reason, INSTALL_HINT)
    with tempfile.TemporaryDirectory() as scratch:
        inputs_in, results_out = Path(scratch) / "inputs.json", Path(scratch) / "results.json"
        inputs_in.write_text(json.dumps(inputs))
        threads = os.environ.get("LACKER_LLAMA_CPP_THREADS") or "1"
        done = subprocess.run(["node", str(script), str(runtime_dir()), str(gguf_path), threads, str(inputs_in),
                               str(results_out), *arguments], capture_output=True, text=True)
        if done.returncode != 0 or not results_out.exists():
            raise ExportError(f"llama.cpp could not run {Path(gguf_path).name}: "
                              f"{(done.stderr or done.stdout).strip()[-800:]}",
                              "the file is damaged or incomplete, or not a model llama.cpp runs; export it again")
        return json.loads(results_out.read_text())
