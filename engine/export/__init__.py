"""Exports to where users serve models, each checked against the trained model in a real runtime.

    export(model_dir, format, quantize, output, progress=...) -> ExportResult

| format | quantize (default first) | written                                         | checked in             |
|--------|--------------------------|-------------------------------------------------|------------------------|
| gguf   | f16, q8_0                | one .gguf file (llama.cpp, Ollama)              | llama.cpp (engine.export.llama_cpp) |
| onnx   | fp32, int8               | the model folder with onnx/model*.onnx          | onnxruntime            |

`model_dir` is a run folder (its merged/ model is exported and its held-out split checks it), a saved model
folder or a hub id, of any task (`model_kind`): an embedding model (sentence-transformers), a reranker
(sentence-transformers CrossEncoder) or a classifier (transformers AutoModelForSequenceClassification). Rerankers and
classifiers export to ONNX with their head (the file gives `logits`); GGUF is for embedding models and for
rerankers llama.cpp ranks with (its rank pooling: XLM-RoBERTa, ModernBERT and Qwen3 cross-encoders). Every export
ends with the parity check (engine.export.parity), written as parity.json beside the file: embeddings compared by
cosine, a reranker's scores and a classifier's logits by correlation. A file that fails it is kept, and the report
says what differs.

Example::

    from engine.export import export

    result = export("runs/demo", "gguf", "q8_0", "runs/demo/gguf")
    print(result.describe())   # parity passed: cosine min 0.9993 ...
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

FORMATS = {"gguf": ("f16", "q8_0"), "onnx": ("fp32", "int8")}
KINDS = ("embedding", "reranker", "classifier")  # the tasks' names (engine.tasks), which a run's config.json holds

Progress = Callable[[str, "float | None"], None]


class ExportError(ValueError):
    """An export that cannot be made or checked, with what to do instead (`fix`)."""

    def __init__(self, message: str, fix: str):
        super().__init__(message)
        self.fix = fix


@dataclass
class ExportResult:
    format: str
    quantize: str
    path: Path  # the .gguf file, or the ONNX model folder
    report: dict  # parity.json's contents

    @property
    def passed(self) -> bool:
        return self.report["passed"]

    def describe(self) -> str:
        from engine.export import parity

        return f"{self.format} {self.quantize}: {self.path} ({self.report['size_bytes'] / 1e6:.1f} MB)\n" + \
            parity.describe(self.report)


def export(model_dir, format: str, quantize: str | None = None, output=None,
           progress: Progress | None = None) -> ExportResult:
    """Write `model_dir`'s model as `format` to `output`, then check it against the PyTorch model.

    Args:
        model_dir: a run folder (holding merged/ and config.json), a model folder, or a hub id.
        format: "gguf" or "onnx".
        quantize: "f16" (default) or "q8_0" for GGUF; "fp32" (default) or "int8" for ONNX.
        output: for GGUF a folder (the file is named MODEL-QUANTIZE.gguf) or a path ending in .gguf; for ONNX
            a folder. Default: RUN/export/FORMAT-QUANTIZE for a run, else ./MODEL-FORMAT-QUANTIZE.
        progress: called with (what is happening, fraction done or None).
    """
    from engine import atomic
    from engine.export import parity

    report = progress or (lambda message, fraction: None)
    if format not in FORMATS:
        raise ExportError(f"export format {format!r} is not offered", f"pick one of: {', '.join(FORMATS)}")
    quantize = quantize or FORMATS[format][0]
    if quantize not in FORMATS[format]:
        raise ExportError(f"{format} export has no quantization {quantize!r}",
                          f"pick one of: {', '.join(FORMATS[format])}")
    report("loading the model", 0.0)
    model_folder, run_dir = _model_folder(model_dir)
    kind = model_kind(model_folder, run_dir)
    if format == "gguf":
        from engine.export import gguf

        refused = gguf.refusal(model_folder, kind)  # before anything is loaded, read or written
        if refused is not None:
            raise refused
    model = _reference_model(model_folder, kind)
    name = (run_dir or Path(str(model_dir))).name
    output = Path(output) if output is not None else (
        run_dir / "export" / f"{format}-{quantize}" if run_dir else Path(f"{name}-{format}-{quantize}"))
    texts = parity.held_out(run_dir, kind)
    report(f"writing {format} {quantize}", 0.1)
    if format == "gguf":
        path = output if output.suffix == ".gguf" else output / f"{name}-{quantize}.gguf"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic.removed_on_failure(path, path.parent):
            gguf.write(model, model_folder, path, quantize, kind)
    else:
        from engine.export import onnx

        with atomic.folder(output) as partial:
            onnx.write(model, model_folder, partial, quantize, kind)
        path = output
    report(f"checking the {format} file in {'llama.cpp' if format == 'gguf' else 'onnxruntime'}", 0.6)
    return verify(model, path, format, quantize, texts, kind)


def export_model(model, format: str, quantize: str | None = None, output=None,
                 progress: Progress | None = None) -> ExportResult:
    """`export` for a loaded model (a SentenceTransformer from FastSentenceTransformer.from_pretrained): its
    adapters merged into an fp32 copy, which is exported and checked on the bundled sample's test split."""
    import tempfile

    import torch

    name = Path(getattr(model, "_lacker_base_name", None) or "model").name
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / name
        if hasattr(model, "save_pretrained_merged"):
            model.save_pretrained_merged(folder, dtype=torch.float32)
        else:
            model.save_pretrained(str(folder))
        if output is None:
            output = Path(f"{name}-{format}-{quantize or FORMATS.get(format, ('',))[0]}")
        return export(folder, format, quantize, output, progress)


def push_to_hub(model, repo_id: str, format: str, quantize: str | None = None, token: str | None = None,
                private: bool | None = None) -> str:
    """Export `model` (as `export_model`) and upload the result with its parity.json; returns the repo's URL.
    A file that fails its parity check is not uploaded."""
    import tempfile

    from engine import hub

    with tempfile.TemporaryDirectory() as scratch:
        result = export_model(model, format, quantize, Path(scratch) / format)
        if not result.passed:
            raise ExportError(f"not uploaded: {result.describe()}", "fix what the parity check names, then push again")
        folder = result.path.parent if format == "gguf" else result.path
        return hub.push_folder(folder, repo_id, token=token, private=private,
                               commit_message=f"Upload {format} {result.quantize} from Lacker Studio")


def verify(model, path, format: str, quantize: str, texts=None, kind: str = "embedding") -> ExportResult:
    """Run the parity check on an exported `path` against `model` (the loaded reference model of `kind`, or what
    `export` takes as `model_dir`) and write parity.json beside it. A file its runtime cannot load fails the check."""
    from engine.export import parity

    if isinstance(model, (str, Path)):
        model_folder, run_dir = _model_folder(model)
        kind = model_kind(model_folder, run_dir)
        model = _reference_model(model_folder, kind)
        texts = texts or parity.held_out(run_dir, kind)
    texts = texts or parity.held_out(None, kind)
    path = Path(path)
    try:
        if kind == "embedding":
            queries, documents, problems = _embed_exported(model, path, format, texts)
            result = parity.check(model, texts, queries, documents, quantize, problems)
        else:
            exported, problems = _score_exported(model, path, format, texts, kind)
            result = parity.check_scores(kind, texts, parity.reference_scores(model, kind, texts), exported,
                                         quantize, parity.class_names(model, kind), problems)
    except ExportError as error:
        result = parity.failed(str(error), quantize, texts)
    result.update(task=kind, format=format, file=str(path), size_bytes=parity.file_size(path))
    parity.write(result, path.parent if format == "gguf" else path)
    return ExportResult(format, quantize, path, result)


def _embed_exported(model, path: Path, format: str, texts):
    """(query vectors, document vectors, what the file's metadata gets wrong), with the prompts the file carries."""
    from engine.export import parity

    problems = []
    if format == "gguf":
        from engine.export import gguf, llama_cpp

        metadata = gguf.read_metadata(path)
        prompts = {name: metadata.get(gguf.PROMPT_KEY.format(name=name)) for name in ("query", "document")}
        normalizes = any(type(module).__name__ == "Normalize" for module in model)
        if metadata.get(gguf.NORMALIZE_KEY, False) != normalizes:
            problems.append(f"the file says normalize={metadata.get(gguf.NORMALIZE_KEY)} and the model "
                            f"{'does' if normalizes else 'does not'} normalize its embeddings")
    else:
        import json

        from engine.export import onnx

        config = path / "config_sentence_transformers.json"
        prompts = json.loads(config.read_text()).get("prompts", {}) if config.exists() else {}
    prompted = (parity.prompted(prompts.get("query"), texts.queries)
                + parity.prompted(prompts.get("document"), texts.documents))
    if format == "gguf":
        vectors, tokens = llama_cpp.embed(path, prompted, metadata)
        problems += parity.token_differences(model.tokenizer, prompted, tokens, model.max_seq_length)
    else:
        vectors = onnx.embed(model, path, onnx_file(path), prompted)
    return vectors[:len(texts.queries)], vectors[len(texts.queries):], problems


def _score_exported(model, path: Path, format: str, texts, kind: str):
    """(a reranker's or classifier's exported logits for texts.inputs, what the exported runtime tokenizes otherwise).
    llama.cpp is given each pair cut as the model's tokenizer cuts it, so both score the same tokens where both
    tokenize alike."""
    from engine.export import parity

    length = parity.max_length(model, kind)
    if format == "onnx":
        from engine.export import onnx

        return onnx.scores(path, onnx_file(path), texts.inputs, length), []
    from engine.export import llama_cpp

    kept = [parity.kept_lengths(model.tokenizer, query, document, length) for query, document in texts.inputs]
    scores, tokens = llama_cpp.rank(path, [(*pair, *counts) for pair, counts in zip(texts.inputs, kept)])
    return scores, parity.token_differences(model.tokenizer, texts.inputs, tokens, length)


def onnx_file(folder: Path) -> Path:
    """The ONNX file an exported folder holds (fp32 first)."""
    from engine.export import onnx

    folder = Path(folder)
    return next((folder / f for f in onnx.FILES.values() if (folder / f).exists()), folder / onnx.FILES["fp32"])


def _model_folder(model_dir) -> tuple[Path, Path | None]:
    """(the model folder, the run folder or None)."""
    from engine.resolve import resolve_model

    path = Path(model_dir)
    # a run folder: the studio's (config.json beside events.jsonl) or `lacker train --output`'s (no config.json)
    if (path / "events.jsonl").exists() and ((path / "config.json").is_file() or (path / "merged").is_dir()):
        if not (path / "merged" / "config.json").is_file():
            raise ExportError(f"the run {path.name} has no merged model (it stopped before saving one)",
                              "resume the run until it finishes, then export")
        return path / "merged", path
    return resolve_model(model_dir), None


def model_kind(folder: Path, run_dir: Path | None = None) -> str:
    """Which of KINDS the model in `folder` is: the run's task, else what the folder's files say (a
    sentence-transformers CrossEncoder's config, a sentence-transformers modules.json, a transformers
    sequence-classification head). A plain encoder is exported as an embedding model, as sentence-transformers
    loads one."""
    import json

    from engine.models.cross_encoder import has_trained_head

    if run_dir is not None and (run_dir / "config.json").is_file():
        return json.loads((run_dir / "config.json").read_text()).get("task") or "embedding"
    folder = Path(folder)
    st_config = folder / "config_sentence_transformers.json"
    if st_config.is_file() and json.loads(st_config.read_text()).get("model_type") == "CrossEncoder":
        return "reranker"
    if (folder / "modules.json").is_file():
        return "embedding"
    return "classifier" if has_trained_head(folder) else "embedding"


def _reference_model(folder: Path, kind: str = "embedding"):
    """The PyTorch model the export is checked against: the task's own model class, fp32 on the CPU, adapters
    merged."""
    import torch

    from engine.models import FastClassifier, FastCrossEncoder, FastSentenceTransformer

    loader = {"embedding": FastSentenceTransformer, "reranker": FastCrossEncoder, "classifier": FastClassifier}[kind]
    return loader.from_pretrained(str(folder), dtype=torch.float32, device="cpu", for_inference=True)
