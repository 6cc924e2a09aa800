"""The parity check run after every export: held-out texts embedded by the PyTorch model and by the exported file
in its own runtime (llama.cpp for GGUF, onnxruntime for ONNX), compared text by text and as retrieval.

Texts: up to MAX_TEXTS, half queries (with the model's query prompt) and half their documents (with the document
prompt), from the run's held-out split when the export starts from a run folder, else from the bundled sample's test
split. The exported side takes its prompts from the exported file itself, so a prompt lost on the way shows.

A check passes when the lowest cosine of any text is at least THRESHOLDS[quantization]. When it fails, the exported
vectors are compared with what the PyTorch model gives when pooled otherwise, without its query prompt, or
without the layers after pooling, and the report names the difference that explains them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAX_TEXTS = 200
THRESHOLDS = {"f16": 0.999, "fp32": 0.999, "q8_0": 0.99, "int8": 0.99}
RETRIEVAL_METRICS = ("ndcg@10", "mrr@10", "recall@1", "recall@10")


@dataclass
class HeldOut:
    """Query i's relevant document is documents[i]."""

    queries: list[str]
    documents: list[str]
    source: str


def held_out_texts(run_dir: Path | None, limit: int = MAX_TEXTS) -> HeldOut:
    """The run's held-out (query, document) pairs when `run_dir` is a run folder, else the bundled sample's."""
    from engine import data as data_layer

    pairs = limit // 2
    config_path = run_dir / "config.json" if run_dir is not None else None
    if config_path is not None and config_path.exists():
        from engine.config import TrainConfig
        from engine.train import _read_split

        _, held_out, _ = _read_split(TrainConfig.from_dict(json.loads(config_path.read_text())), _Quiet())
        rows = held_out.drop_duplicates("anchor").head(pairs)
        return HeldOut(rows["anchor"].tolist(), rows["positive"].tolist(), f"the run's held-out split ({run_dir.name})")
    rows = data_layer.load_sample("test").drop_duplicates("query").head(pairs)
    return HeldOut(rows["query"].tolist(), rows["document"].tolist(), "the bundled sample's test split")


class _Quiet:
    """An event log for reading a run's data again: what it says was said when the run trained."""

    def log(self, message: str) -> None:
        pass


def check(model, texts: HeldOut, exported_queries: np.ndarray, exported_documents: np.ndarray, quantize: str,
          metadata_problems: list[str] = ()) -> dict:
    """Compare the exported vectors of `texts` with `model`'s (the PyTorch SentenceTransformer, fp32).

    `metadata_problems`: what the exported file's own description gets wrong (a missing normalization, say),
    found by the format's writer; any of them fails the check. Returns the report parity.json holds."""
    prompts = model.prompts or {}
    reference_queries = _encode(model, prompted(prompts.get("query"), texts.queries))
    reference_documents = _encode(model, prompted(prompts.get("document"), texts.documents))
    reference = np.concatenate([reference_queries, reference_documents])
    exported = np.concatenate([exported_queries, exported_documents])
    cosines = _cosines(reference, exported)
    threshold = THRESHOLDS[quantize]
    worst = int(np.argmin(cosines))
    problems = list(metadata_problems)
    if cosines.min() < threshold:
        problems.append(_diagnose(model, texts, prompts, exported, cosines, threshold))
    all_texts = texts.queries + texts.documents
    return {
        "passed": not problems,
        "problems": problems,
        "threshold": threshold,
        "quantization": quantize,
        "texts": len(all_texts),
        "texts_from": texts.source,
        "cosine_min": round(float(cosines.min()), 6),
        "cosine_mean": round(float(cosines.mean()), 6),
        "worst_text": all_texts[worst][:200],
        "retrieval": {"pytorch": retrieval(reference_queries, reference_documents),
                      "exported": retrieval(exported_queries, exported_documents)},
    }


def failed(reason: str, quantize: str, texts: HeldOut) -> dict:
    """The report of a file its runtime could not load or run."""
    return {"passed": False, "problems": [reason], "threshold": THRESHOLDS[quantize], "quantization": quantize,
            "texts": len(texts.queries) + len(texts.documents), "texts_from": texts.source,
            "cosine_min": None, "cosine_mean": None, "worst_text": None, "retrieval": None}


def write(report: dict, folder: Path) -> Path:
    """parity.json in `folder`, written whole or not at all."""
    from engine import atomic

    path = Path(folder) / "parity.json"
    atomic.write_text(path, json.dumps(report, indent=2) + "\n")
    return path


def describe(report: dict) -> str:
    """One or two lines for a terminal or a page."""
    if report["cosine_min"] is None:
        return "parity FAILED: " + "; ".join(report["problems"])
    head = (f"parity {'passed' if report['passed'] else 'FAILED'}: cosine min {report['cosine_min']:.4f} / "
            f"mean {report['cosine_mean']:.4f} over {report['texts']} held-out texts (threshold "
            f"{report['threshold']}); ndcg@10 PyTorch {report['retrieval']['pytorch']['ndcg@10']:.3f}, exported "
            f"{report['retrieval']['exported']['ndcg@10']:.3f}")
    return head + "".join(f"\n  {problem}" for problem in report["problems"])


def retrieval(queries: np.ndarray, documents: np.ndarray) -> dict[str, float]:
    """Held-out retrieval over the pairs' documents (query i's relevant document is i), by cosine."""
    scores = _unit(queries) @ _unit(documents).T
    rank = (scores > scores.diagonal()[:, None]).sum(axis=1) + 1  # 1-based rank of each query's own document
    top10 = rank <= 10
    return {"ndcg@10": round(float(np.mean(np.where(top10, 1 / np.log2(rank + 1), 0))), 4),
            "mrr@10": round(float(np.mean(np.where(top10, 1 / rank, 0))), 4),
            "recall@1": round(float(np.mean(rank == 1)), 4),
            "recall@10": round(float(np.mean(top10)), 4)}


def prompted(prompt: str | None, texts: list[str]) -> list[str]:
    return [prompt + text for text in texts] if prompt else list(texts)


def _encode(model, texts: list[str]) -> np.ndarray:
    return np.asarray(model.encode(texts, batch_size=32, convert_to_numpy=True), dtype=np.float32)


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.shape != b.shape:
        raise ValueError(f"the exported file gives {b.shape[-1]}-dimensional embeddings and the model "
                         f"{a.shape[-1]}-dimensional ones")
    return (_unit(a) * _unit(b)).sum(axis=-1)


POOLINGS = {"mean": lambda tokens: tokens.mean(0), "cls": lambda tokens: tokens[0],
            "lasttoken": lambda tokens: tokens[-1]}


def _diagnose(model, texts: HeldOut, prompts: dict, exported: np.ndarray, cosines: np.ndarray,
              threshold: float) -> str:
    """Which variant of the PyTorch model the exported vectors match: that names what the export changed."""
    both = prompted(prompts.get("query"), texts.queries) + prompted(prompts.get("document"), texts.documents)
    tokens = [t.float().cpu().numpy() for t in model.encode(both, batch_size=32, output_value="token_embeddings")]
    pooling = next((m for m in model if type(m).__name__ == "Pooling"), None)
    pooled_by = pooling.get_config_dict().get("pooling_mode") if pooling is not None else None
    after_pooling = [type(m).__name__ for m in list(model)[2:] if type(m).__name__ != "Normalize"]
    variants = {}
    for mode, pool in POOLINGS.items():
        pooled = np.stack([pool(t) for t in tokens])
        if mode != pooled_by:
            variants[f"pools by {mode} where the model pools by {pooled_by}"] = pooled
        elif after_pooling:  # the model's own pooling without what follows it
            variants[f"lacks the model's {', '.join(after_pooling)} layers after pooling"] = pooled
    if any(prompts.get(name) for name in ("query", "document")):
        variants["embeds without the model's prompts"] = _encode(model, texts.queries + texts.documents)
    scored = {reason: float(_cosines(vectors, exported).min()) for reason, vectors in variants.items()
              if vectors.shape == exported.shape}
    best = max(scored, key=scored.get, default=None)
    worst = float(cosines.min())
    # a variant explains the file when it matches nearly as well as the threshold asks, and clearly better
    if best is not None and scored[best] >= max(threshold - 0.01, worst + 0.05):
        return (f"the exported file {best}: its vectors match that (cosine min {scored[best]:.4f}) and not the "
                f"model (cosine min {worst:.4f})")
    return (f"the exported weights give other vectors than the model's (cosine min {worst:.4f} < {threshold}), "
            "and no change of pooling, prompt or layers explains it: the file is damaged, or the quantization "
            "loses too much for this model")


def file_size(path: Path) -> int:
    path = Path(path)
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
