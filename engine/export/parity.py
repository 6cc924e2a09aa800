"""The parity check run after every export: held-out texts embedded by the PyTorch model and by the exported file
in its own runtime (llama.cpp for GGUF, onnxruntime for ONNX), compared text by text and as retrieval.

Embedding models: up to MAX_TEXTS texts, half queries (with the model's query prompt) and half their documents (with
the document prompt), from the run's held-out split when the export starts from a run folder, else from the bundled
sample's test split. The exported side takes its prompts from the exported file itself, so a prompt lost on the way
shows. A check passes when the lowest cosine of any text is at least THRESHOLDS[quantization]. When it fails, the
exported vectors are compared with what the PyTorch model gives when pooled otherwise, without its query prompt, or
without the layers after pooling, and the report names the difference that explains them.

Rerankers and classifiers: up to MAX_TEXTS inputs scored by both (a reranker's (query, document) pairs, each held-out
query with its own document and the next queries' documents, CANDIDATES in all; a classifier's held-out texts),
the raw logits compared. A check passes when the Pearson correlation of all logits is at least
THRESHOLDS[quantization] (and, for GGUF, llama.cpp tokenizes every input as the model does); the report gives the
Spearman correlation of their orders, the largest difference, how often both pick the same document or class,
and the held-out metrics of both (a reranker's MRR and recall@1 over each query's candidates, a classifier's
accuracy where the labels are known).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAX_TEXTS = 200
CANDIDATES = 4  # documents a held-out query's reranking parity scores: its own and the next queries'
THRESHOLDS = {"f16": 0.999, "fp32": 0.999, "q8_0": 0.99, "int8": 0.99}
RETRIEVAL_METRICS = ("ndcg@10", "mrr@10", "recall@1", "recall@10")


@dataclass
class HeldOut:
    """Query i's relevant document is documents[i]."""

    queries: list[str]
    documents: list[str]
    source: str


@dataclass
class HeldOutInputs:
    """What a reranker or classifier scores: `inputs[i]` a text or a (text, text) pair. A reranker's pairs come in
    groups of CANDIDATES, a query's own document first; `labels[i]` is a classifier's true class (None: unknown)."""

    inputs: list
    source: str
    labels: list | None = None


def held_out_texts(run_dir: Path | None, limit: int = MAX_TEXTS) -> HeldOut:
    """The run's held-out (query, document) pairs when `run_dir` is a run folder, else the bundled sample's."""
    pairs = limit // 2
    rows, source = _held_out_rows(run_dir)
    queries, documents = _query_documents(rows)
    return HeldOut(queries[:pairs], documents[:pairs], source)


def held_out(run_dir: Path | None, kind: str) -> HeldOut | HeldOutInputs:
    """What the parity check of a model of `kind` (engine.export.KINDS) scores."""
    if kind == "embedding":
        return held_out_texts(run_dir)
    rows, source = _held_out_rows(run_dir)
    if kind == "reranker":
        queries, documents = _query_documents(rows)
        queries, documents = queries[:MAX_TEXTS // CANDIDATES], documents[:MAX_TEXTS // CANDIDATES]
        if len(queries) < CANDIDATES:
            from engine.export import ExportError

            raise ExportError(f"the parity check needs {CANDIDATES} held-out queries to rerank, and {source} has "
                              f"{len(queries)}", "train the run with a larger held-out split (eval size)")
        pairs = [(query, documents[(i + offset) % len(documents)])
                 for i, query in enumerate(queries) for offset in range(CANDIDATES)]
        return HeldOutInputs(pairs, source)
    if "text" not in rows:  # no run: the sample's queries, whose classes nobody knows
        return HeldOutInputs(_query_documents(rows)[0][:MAX_TEXTS], source)
    rows = rows.head(MAX_TEXTS)
    inputs = list(zip(rows["text"], rows["text_pair"])) if "text_pair" in rows else rows["text"].tolist()
    return HeldOutInputs(inputs, source, [str(label) for label in rows["label"]] if "label" in rows else None)


def _held_out_rows(run_dir: Path | None):
    """(the run's held-out rows, columns named by role, as the run split them; or the bundled sample's test split,
    and where they come from)."""
    from engine import data as data_layer

    config_path = run_dir / "config.json" if run_dir is not None else None
    if config_path is not None and config_path.exists():
        from engine.config import TrainConfig
        from engine.tasks import task_module
        from engine.train import _read_split

        config = TrainConfig.from_dict(json.loads(config_path.read_text()))
        _, rows, _ = _read_split(config, task_module(config.task), _Quiet())
        return rows, f"the run's held-out split ({run_dir.name})"
    return data_layer.load_sample("test").rename(columns={"query": "anchor", "document": "positive"}), \
        "the bundled sample's test split"


def _query_documents(rows) -> tuple[list[str], list[str]]:
    """Distinct queries and each one's relevant document (a labelled table's rows labelled 1)."""
    if "label" in rows:
        rows = rows[rows["label"].astype(float) == 1]
    rows = rows.drop_duplicates("anchor")
    return rows["anchor"].tolist(), rows["positive"].tolist()


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


def token_differences(tokenizer, inputs: list, exported_tokens: list[list[int]], max_length: int) -> list[str]:
    """What the exported runtime's tokenizer does otherwise than the model's on `inputs` (texts, or (text, text)
    pairs cut as the model cuts them to `max_length` tokens): [] when every input gives the same token ids, else one
    line with how many differ and the first of them side by side."""
    differing = []
    for given, exported in zip(inputs, exported_tokens):
        pair = given if isinstance(given, tuple) else (given,)
        expected = tokenizer(*pair, truncation=True, max_length=max_length)["input_ids"]
        if list(expected) != list(exported):
            differing.append((given, expected, exported))
    if not differing:
        return []
    given, expected, exported = differing[0]
    shown = " | ".join(given) if isinstance(given, tuple) else given
    first = next((i for i, (a, b) in enumerate(zip(expected, exported)) if a != b), min(len(expected), len(exported)))
    around = slice(max(0, first - 4), first + 12)  # the tokens about the first that differs
    return [f"the exported file's tokenizer splits {len(differing)} of {len(inputs)} held-out inputs otherwise than "
            f"the model's, so their vectors or scores differ: {shown[:120]!r} is, from token {around.start}, "
            f"{tokenizer.convert_ids_to_tokens(list(expected[around]))} for the model and "
            f"{tokenizer.convert_ids_to_tokens(list(exported[around]))} in the file"]


def kept_lengths(tokenizer, query: str, document: str, max_length: int) -> tuple[int, int]:
    """How many of the query's and the document's own tokens the model's tokenizer keeps of the pair when it cuts it
    to `max_length` tokens, its special tokens included."""
    sequences = tokenizer(query, document, truncation=True, max_length=max_length).sequence_ids()
    return sequences.count(0), sequences.count(1)


def failed(reason: str, quantize: str, texts: HeldOut | HeldOutInputs) -> dict:
    """The report of a file its runtime could not load or run."""
    count = len(texts.inputs) if isinstance(texts, HeldOutInputs) else len(texts.queries) + len(texts.documents)
    measured = {"score_correlation": None, "score_spearman": None, "score_max_diff": None, "agreement": None,
                "metrics": None} \
        if isinstance(texts, HeldOutInputs) else {"cosine_min": None, "cosine_mean": None, "retrieval": None}
    return {"passed": False, "problems": [reason], "threshold": THRESHOLDS[quantize], "quantization": quantize,
            "texts": count, "texts_from": texts.source, "worst_text": None, **measured}


def max_length(model, kind: str) -> int:
    """The tokens a reranker or classifier reads of an input, which the exported side is given too."""
    if kind == "reranker":
        return model.max_seq_length
    return min(model.tokenizer.model_max_length, model.config.max_position_embeddings)


def class_names(model, kind: str) -> list[str] | None:
    """A classifier's classes in its head's order (None for a reranker)."""
    return [model.config.id2label[i] for i in range(model.config.num_labels)] if kind == "classifier" else None


def reference_scores(model, kind: str, texts: HeldOutInputs) -> np.ndarray:
    """The PyTorch model's raw logits for `texts.inputs`: (len(inputs), num_labels)."""
    import torch

    if kind == "reranker":
        scores = model.predict(texts.inputs, batch_size=32, activation_fn=torch.nn.Identity(), convert_to_numpy=True,
                               show_progress_bar=False)
        return np.asarray(scores, dtype=np.float32).reshape(len(texts.inputs), -1)
    from engine.export.onnx import tokenize

    logits = []
    with torch.no_grad():
        for start in range(0, len(texts.inputs), 32):
            batch = tokenize(model.tokenizer, texts.inputs[start:start + 32], max_length(model, kind), "pt")
            logits.append(model(**batch.to(model.device)).logits.float().cpu().numpy())
    return np.concatenate(logits)


def check_scores(kind: str, texts: HeldOutInputs, reference: np.ndarray, exported: np.ndarray, quantize: str,
                 classes: list[str] | None = None, runtime_problems: list[str] = ()) -> dict:
    """Compare a reranker's or classifier's exported logits with the PyTorch model's; the report parity.json holds.
    `runtime_problems`: what the exported runtime does otherwise (token_differences); any of them fails the check."""
    threshold = THRESHOLDS[quantize]
    if reference.shape != exported.shape:
        return failed(f"the exported file gives {exported.shape[-1]} scores an input and the model "
                      f"{reference.shape[-1]}: the file lost or changed the model's head", quantize, texts)
    if not np.isfinite(exported).all():
        return failed("the exported file gives scores that are not numbers or are infinite for "
                      f"{int((~np.isfinite(exported)).sum())} inputs", quantize, texts)
    difference = np.abs(reference - exported).max(axis=-1)
    correlation = _correlation(reference.ravel(), exported.ravel())
    worst = int(np.argmax(difference))
    problems = list(runtime_problems)
    if correlation < threshold:
        problems.append(f"the exported file's scores differ from the model's (correlation {correlation:.4f} < "
                        f"{threshold}, largest difference {difference.max():.4f}): the file is damaged, or the "
                        "quantization loses too much for this model")
    if kind == "reranker":
        reference_groups, exported_groups = _by_query(reference), _by_query(exported)
        agreement = float(np.mean(reference_groups.argmax(1) == exported_groups.argmax(1)))
        metrics = {"pytorch": _reranking(reference_groups), "exported": _reranking(exported_groups)}
    else:
        agreement = float(np.mean(reference.argmax(1) == exported.argmax(1)))
        metrics = {"pytorch": _classification(reference, texts.labels, classes),
                   "exported": _classification(exported, texts.labels, classes)}
    worst_input = texts.inputs[worst]
    return {
        "passed": not problems,
        "problems": problems,
        "threshold": threshold,
        "quantization": quantize,
        "texts": len(texts.inputs),
        "texts_from": texts.source,
        "score_correlation": round(correlation, 6),
        "score_spearman": round(_correlation(_ranks(reference.ravel()), _ranks(exported.ravel())), 6),
        "score_max_diff": round(float(difference.max()), 6),
        "agreement": round(agreement, 4),
        "worst_text": (" | ".join(worst_input) if isinstance(worst_input, tuple) else worst_input)[:200],
        "metrics": metrics,
    }


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    if a.std() == 0 or b.std() == 0:  # constant scores (an untrained head on tiny inputs): equal or not
        return 1.0 if np.allclose(a, b, atol=1e-5) else 0.0
    return float(np.corrcoef(a, b)[0, 1])


def _ranks(values: np.ndarray) -> np.ndarray:
    """Each value's rank, ties sharing their mean rank (the Spearman correlation is the Pearson one of these)."""
    from scipy.stats import rankdata

    return rankdata(values)


def _by_query(scores: np.ndarray) -> np.ndarray:
    """A reranker's scores with a query's candidates a row."""
    return scores[:, 0].reshape(-1, CANDIDATES)


def _reranking(groups: np.ndarray) -> dict[str, float]:
    """Each query's own document (column 0) ranked among its candidates."""
    rank = (groups > groups[:, :1]).sum(axis=1) + 1
    return {"mrr": round(float(np.mean(1 / rank)), 4), "recall@1": round(float(np.mean(rank == 1)), 4)}


def _classification(logits: np.ndarray, labels: list | None, classes: list[str] | None) -> dict[str, float]:
    if not labels or not classes:
        return {}
    predicted = [classes[i] for i in logits.argmax(1)]
    return {"accuracy": round(float(np.mean([p == t for p, t in zip(predicted, labels)])), 4)}


def write(report: dict, folder: Path) -> Path:
    """parity.json in `folder`, written whole or not at all."""
    from engine import atomic

    path = Path(folder) / "parity.json"
    atomic.write_text(path, json.dumps(report, indent=2) + "\n")
    return path


def describe(report: dict) -> str:
    """One or two lines for a terminal or a page."""
    verdict = "passed" if report["passed"] else "FAILED"
    if "score_correlation" in report:
        if report["score_correlation"] is None:
            return "parity FAILED: " + "; ".join(report["problems"])
        metrics = "; ".join(f"{name} PyTorch {value:.3f}, exported {report['metrics']['exported'][name]:.3f}"
                            for name, value in report["metrics"]["pytorch"].items())
        head = (f"parity {verdict}: score correlation {report['score_correlation']:.4f} over {report['texts']} "
                f"held-out inputs (threshold {report['threshold']}), order (Spearman) {report['score_spearman']:.4f}, "
                "largest difference "
                f"{report['score_max_diff']:.4f}, same choice {report['agreement']:.0%}"
                + (f"; {metrics}" if metrics else ""))
    elif report["cosine_min"] is None:
        return "parity FAILED: " + "; ".join(report["problems"])
    else:
        head = (f"parity {verdict}: cosine min {report['cosine_min']:.4f} / mean {report['cosine_mean']:.4f} over "
                f"{report['texts']} held-out texts (threshold {report['threshold']}); ndcg@10 PyTorch "
                f"{report['retrieval']['pytorch']['ndcg@10']:.3f}, exported "
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
