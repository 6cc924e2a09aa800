"""ONNX exports in the layout sentence-transformers' ONNX backend loads: the model's own folder with the
transformer as `onnx/model.onnx` (fp32) or `onnx/model_qint8.onnx` (int8 weights per channel, activations
quantized on the fly), taking input_ids, attention_mask (and token_type_ids where the tokenizer makes them) and
giving what optimum's export of that task gives: last_hidden_state for an embedding model (feature-extraction),
logits for a reranker or classifier, its head included (text-classification). Load one with

    SentenceTransformer(folder, backend="onnx", model_kwargs={"file_name": "onnx/model_qint8.onnx"})
    CrossEncoder(folder, backend="onnx")

Why not sentence-transformers' own exporters (`backend="onnx"` export, export_dynamic_quantized_onnx_model): they
run through optimum-onnx, whose newest release (0.1.0) needs transformers < 4.58, and this project pins 5.17. So the
transformer goes through torch.onnx (the dynamo exporter, which keeps batch and sequence length dynamic) and the
int8 file through onnxruntime's own dynamic quantizer, the one optimum calls. The parity check runs the file in
onnxruntime and does the pooling, the layers after it and normalization as the saved folder says.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from engine.export import ExportError

QUANTIZATIONS = ("fp32", "int8")
FILES = {"fp32": "onnx/model.onnx", "int8": "onnx/model_qint8.onnx"}
OUTPUT = "last_hidden_state"
SCORES = "logits"


def _transformer(model, kind: str):
    """(the transformers model that goes into the file, its tokenizer, the output the file gives) for a model of
    engine.export.KINDS: a SentenceTransformer, a CrossEncoder or an AutoModelForSequenceClassification."""
    if kind == "embedding":
        return model[0].auto_model, model.tokenizer, OUTPUT
    return (model.model if kind == "reranker" else model), model.tokenizer, SCORES


def write(model, model_dir: Path, folder: Path, quantize: str, kind: str = "embedding") -> Path:
    """The model's folder copied to `folder`, with the transformer (and a reranker's or classifier's head) as
    FILES[quantize]; returns that file's path."""
    if quantize not in QUANTIZATIONS:
        raise ExportError(f"ONNX quantization {quantize!r} is not offered", f"pick one of: {', '.join(QUANTIZATIONS)}")
    folder = Path(folder)
    shutil.copytree(model_dir, folder, dirs_exist_ok=True, ignore=_not_copied(Path(model_dir)))
    target = folder / FILES[quantize]
    target.parent.mkdir(parents=True, exist_ok=True)
    hf, tokenizer, output = _transformer(model, kind)
    names = _input_names(tokenizer)
    sample = tokenizer(["an example", "a longer example sentence"], padding=True, return_tensors="pt")
    attention = hf.config._attn_implementation
    hf.set_attn_implementation("eager")  # traces to plain ONNX ops that onnxruntime runs everywhere
    try:
        fp32 = target if quantize == "fp32" else target.with_name("model.fp32.onnx")
        dynamic = {0: torch.export.Dim.DYNAMIC, 1: torch.export.Dim.DYNAMIC}
        with torch.no_grad():
            torch.onnx.export(_Traced(hf, names, output).eval(), (tuple(sample[name] for name in names),), str(fp32),
                              input_names=list(names), output_names=[output],
                              dynamic_shapes=((dynamic,) * len(names),), dynamo=True, external_data=False)
    finally:
        hf.set_attn_implementation(attention)
    if quantize == "int8":
        _quantize_int8(fp32, target)
        fp32.unlink()
    return target


def _not_copied(model_dir: Path):
    """What of the model folder an ONNX folder leaves out: an earlier export, and the transformer's own weights,
    which the ONNX file holds (the modules after it, a Dense layer's weights in their own folders, stay)."""
    weights = {"model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"}

    def ignore(folder: str, names: list[str]) -> list[str]:
        top = Path(folder) == model_dir
        return [name for name in names if name in ("onnx", "parity.json")
                or (top and (name in weights or name.startswith("model-0")))]

    return ignore


def _quantize_int8(fp32: Path, target: Path) -> None:
    """Int8 weights per output channel, activations quantized on the fly, the MLP's down projections kept fp32.

    Those choices are what holds all-MiniLM-L6-v2 at the int8 threshold (lowest cosine on the 200 held-out texts,
    BENCHMARKS.md): onnxruntime's defaults (one scale a tensor) 0.926; per channel 0.985; per channel with the down
    projections, whose inputs are the GELU outputs with the widest range, left in fp32: 0.9925."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(fp32), load_external_data=False).graph
    shapes = {weight.name: tuple(weight.dims) for weight in graph.initializer}
    down_projections = [node.name for node in graph.node if node.op_type == "MatMul" and node.input[1] in shapes
                        and len(shapes[node.input[1]]) == 2 and shapes[node.input[1]][0] > shapes[node.input[1]][1]]
    quantize_dynamic(str(fp32), str(target), weight_type=QuantType.QInt8, per_channel=True,
                     nodes_to_exclude=down_projections)


class _Traced(torch.nn.Module):
    """The transformer as a function of its tokenizer's tensors, in `names` order, giving its `output` (what
    torch.onnx.export traces)."""

    def __init__(self, hf, names: tuple[str, ...], output: str):
        super().__init__()
        self.hf = hf
        self.names = names
        self.output = output

    def forward(self, inputs):
        return getattr(self.hf(**dict(zip(self.names, inputs)), return_dict=True), self.output)


def _input_names(tokenizer) -> tuple[str, ...]:
    made = tokenizer(["x"], return_tensors="np")
    return tuple(name for name in ("input_ids", "attention_mask", "token_type_ids") if name in made)


def _session(file: Path):
    import onnxruntime

    try:
        return onnxruntime.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime says what is wrong with the file; the user needs that and a way on
        raise ExportError(f"onnxruntime could not load {Path(file).name}, which is damaged or incomplete: {error}",
                          "export it again") from error


def scores(folder: Path, file: Path, inputs: list, max_length: int) -> np.ndarray:
    """A reranker's or classifier's logits for `inputs` (texts, or (text, text) pairs) from the ONNX file in
    onnxruntime, tokenized by the exported folder's tokenizer as the PyTorch model tokenizes them:
    (len(inputs), num_labels)."""
    from transformers import AutoTokenizer

    session = _session(file)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    names = [i.name for i in session.get_inputs()]
    logits = []
    for start in range(0, len(inputs), 32):
        batch = tokenize(tokenizer, inputs[start:start + 32], max_length, "np")
        logits.append(session.run([SCORES], {name: batch[name].astype(np.int64) for name in names})[0])
    return np.concatenate(logits).astype(np.float32)


def tokenize(tokenizer, inputs: list, max_length: int, tensors: str):
    """Texts, or (text, text) pairs as one sequence of both, padded and truncated to `max_length` tokens."""
    if inputs and isinstance(inputs[0], (tuple, list)):
        first, second = [a for a, _ in inputs], [b for _, b in inputs]
        return tokenizer(first, second, padding=True, truncation=True, max_length=max_length, return_tensors=tensors)
    return tokenizer(list(inputs), padding=True, truncation=True, max_length=max_length, return_tensors=tensors)


def embed(model, folder: Path, file: Path, texts: list[str]) -> np.ndarray:
    """Embeddings of `texts` (prompts already applied) from the ONNX file in onnxruntime, pooled, passed through
    the layers after pooling and normalized as the exported folder's modules.json says: (len(texts), dim)."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    session = _session(file)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    settings = json.loads((folder / "sentence_bert_config.json").read_text()) \
        if (folder / "sentence_bert_config.json").exists() else {}
    max_length = settings.get("max_seq_length") or model.max_seq_length
    modules = json.loads((folder / "modules.json").read_text())
    pooling_path = next(m["path"] for m in modules if m["type"].endswith("Pooling"))
    pooling = json.loads((folder / pooling_path / "config.json").read_text())
    after = list(model)[2:]  # Dense / Normalize, which sentence-transformers' ONNX backend also runs in torch
    names = [i.name for i in session.get_inputs()]
    vectors = []
    for start in range(0, len(texts), 32):
        batch = tokenizer(texts[start:start + 32], padding=True, truncation=True, max_length=max_length,
                          return_tensors="np")
        hidden = session.run([OUTPUT], {name: batch[name].astype(np.int64) for name in names})[0]
        pooled = _pool(hidden, batch["attention_mask"], pooling.get("pooling_mode", "mean"))
        features = {"sentence_embedding": torch.from_numpy(pooled)}
        for module in after:
            features = module(features)
        vectors.append(features["sentence_embedding"].detach().numpy())
    return np.concatenate(vectors).astype(np.float32)


def _pool(hidden: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    if mode == "mean":
        weights = mask[..., None].astype(np.float32)
        return (hidden * weights).sum(1) / np.maximum(weights.sum(1), 1e-9)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "lasttoken":
        last = mask.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1)  # the last real token, either padding side
        return hidden[np.arange(len(hidden)), last]
    raise ExportError(f"the parity check cannot pool by {mode!r}", "pick a model pooled by mean, CLS or last token")
