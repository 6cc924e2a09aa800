"""Copy-ready lines that serve an exported model where users serve models: Ollama and llama.cpp's server for a GGUF
file (llama.cpp's rerank endpoint for a reranker's), sentence-transformers' ONNX backend and plain onnxruntime for an
ONNX folder, and TEI's docker image for the merged folder. What each runtime must be told comes from the exported
file itself (a GGUF file's pooling and context length, an ONNX folder's prompts and pooling), so the lines match
what the parity check ran.

    serving_snippets(kind, exported, shown_name, merged_name) -> {"shell": ..., "python": ...}
    loading_snippet(kind, folder, adapter_of=None) -> the Python that loads a merged folder, or an adapter over
                                                      its base `adapter_of`, in plain sentence-transformers /
                                                      transformers (the Export tab's "Load the result")

`exported` is the file or folder on this machine; the lines name it as `shown_name` (what the user downloads) and
the merged folder as `merged_name`, never a server path. Importing this module imports neither torch nor gguf.
"""

from __future__ import annotations

import json
from pathlib import Path

EXAMPLE_QUERY = "How do I reset my password?"
EXAMPLE_DOCUMENT = "Open Settings, then Account, and pick Reset password."
OTHER_DOCUMENT = "Install the package with apt."
TEI_IMAGE = "ghcr.io/huggingface/text-embeddings-inference:cpu-latest"
LLAMA_POOLING = {0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}  # gguf.PoolingType -> llama-server --pooling


def serving_snippets(kind: str, exported: Path, shown_name: str, merged_name: str) -> dict[str, str]:
    """Shell and Python lines that serve the exported `kind` (engine.export.KINDS) model."""
    exported = Path(exported)
    if exported.suffix == ".gguf":
        shell, python = _gguf_reranker(exported, shown_name) if kind == "reranker" else _gguf(exported, shown_name)
    else:
        shell, python = "", _onnx(kind, exported, shown_name)
    return {"shell": (shell + "\n\n" if shell else "") + tei_snippet(kind, merged_name), "python": python}


def loading_snippet(kind: str, folder: str, adapter_of: str | None = None) -> str:
    """Python that loads the `kind` model saved at `folder` (a folder or a Hub repo id) without this package: a
    merged model as it is, an adapter (`adapter_of` naming its base) through PEFT, with the head it trained."""
    use = {"embedding": f"embeddings = model.encode([{_py(EXAMPLE_QUERY)}])\nprint(embeddings.shape)\n",
           "reranker": f"print(model.predict([({_py(EXAMPLE_QUERY)}, {_py(EXAMPLE_DOCUMENT)})]))\n"
                       f"print(model.rank({_py(EXAMPLE_QUERY)}, [{_py(EXAMPLE_DOCUMENT)}, {_py(OTHER_DOCUMENT)}]))\n",
           "classifier": f"print(classify([{_py(EXAMPLE_QUERY)}], top_k=None))\n"}[kind]
    if adapter_of is None:
        return {"embedding": "from sentence_transformers import SentenceTransformer\n\n"
                             f"model = SentenceTransformer({_py(folder)})\n",
                "reranker": "from sentence_transformers import CrossEncoder\n\n"
                            f"model = CrossEncoder({_py(folder)})\n",
                "classifier": "from transformers import pipeline\n\n"
                              f"classify = pipeline(\"text-classification\", model={_py(folder)})\n"}[kind] + use
    note = f"# a LoRA adapter over {adapter_of} (pip install peft)"
    if kind == "embedding":
        return (f"{note}: sentence-transformers loads both\n"
                "from sentence_transformers import SentenceTransformer\n\n"
                f"model = SentenceTransformer({_py(folder)})\n" + use)
    if kind == "reranker":
        return (f"{note}, and the score head it trained\n"
                "from peft import PeftModel\nfrom sentence_transformers import CrossEncoder\n\n"
                f"model = CrossEncoder({_py(adapter_of)}, num_labels=1)\n"
                f"model[0].auto_model = PeftModel.from_pretrained(model[0].auto_model, {_py(folder)}).merge_and_unload()\n"
                + use)
    return (f"{note}, and the head it trained; labels.json names its classes\n"
            "import json\nimport os\n\n"
            "from huggingface_hub import hf_hub_download\nfrom peft import PeftModel\n"
            "from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline\n\n"
            f"adapter = {_py(folder)}\n"
            "labels_file = f\"{adapter}/labels.json\" if os.path.isdir(adapter) else hf_hub_download(adapter, \"labels.json\")\n"
            "labels = json.load(open(labels_file))\n"
            f"base = AutoModelForSequenceClassification.from_pretrained({_py(adapter_of)}, num_labels=len(labels), "
            "id2label=dict(enumerate(labels)),\n"
            "    label2id={label: i for i, label in enumerate(labels)}, ignore_mismatched_sizes=True)\n"
            "model = PeftModel.from_pretrained(base, adapter).merge_and_unload()\n"
            "classify = pipeline(\"text-classification\", model=model, tokenizer=AutoTokenizer.from_pretrained(adapter))\n"
            + use)


def _py(text: str) -> str:
    """`text` as a Python string literal in double quotes, as the snippets write strings."""
    return json.dumps(text)


def _json_for_shell(value) -> str:
    """`value` as JSON inside single quotes, for curl -d."""
    return "'" + json.dumps(value).replace("'", "'\\''") + "'"


def _gguf(path: Path, name: str) -> tuple[str, str]:
    from engine.export import gguf

    metadata = gguf.read_metadata(path)
    arch = metadata["general.architecture"]
    pooling = LLAMA_POOLING.get(metadata.get(f"{arch}.pooling_type"), "mean")
    context = metadata.get(f"{arch}.context_length")
    prompt = metadata.get(gguf.PROMPT_KEY.format(name="query")) or ""
    model = Path(name).stem.lower()
    prompt_note = (f"# queries take the model's prompt {json.dumps(prompt)} (Ollama and llama.cpp add no prompt)\n"
                   if prompt else "")
    shell = (
        "# Ollama: a Modelfile beside the downloaded file, then create the model and embed with it\n"
        f"printf 'FROM ./{name}\\n' > Modelfile\n"
        f"ollama create {model} -f Modelfile\n"
        f"{prompt_note}"
        "curl http://localhost:11434/api/embed -d "
        f"{_json_for_shell({'model': model, 'input': [prompt + EXAMPLE_QUERY]})}\n\n"
        "# llama.cpp's server (OpenAI-style /v1/embeddings)\n"
        f"llama-server -m {name} --embedding --pooling {pooling}" + (f" -c {context}" if context else "")
        + " --port 8080\n"
        "curl http://localhost:8080/v1/embeddings -H 'Content-Type: application/json' "
        f"-d {_json_for_shell({'input': [prompt + EXAMPLE_QUERY]})}"
    )
    python = (
        "# pip install llama-cpp-python  (the pooling comes from the file)\n"
        "from llama_cpp import Llama\n\n"
        f"model = Llama({name!r}, embedding=True, n_ctx={context or 512}, verbose=False)\n"
        f"embeddings = model.embed([{(prompt + EXAMPLE_QUERY)!r}, {EXAMPLE_DOCUMENT!r}])\n"
        "print(len(embeddings), len(embeddings[0]))\n"
    )
    return shell, python


def _gguf_reranker(path: Path, name: str) -> tuple[str, str]:
    """llama-server's rerank endpoint for a reranker's GGUF file (Ollama has no reranking API)."""
    from engine.export import gguf

    context = gguf.read_metadata(path).get("bert.context_length")
    body = {"query": EXAMPLE_QUERY, "documents": [EXAMPLE_DOCUMENT, OTHER_DOCUMENT]}
    shell = (
        "# llama.cpp's server: scores (query, document) pairs as the model does (Ollama has no reranking API)\n"
        f"llama-server -m {name} --reranking" + (f" -c {context}" if context else "") + " --port 8080\n"
        "curl http://localhost:8080/v1/rerank -H 'Content-Type: application/json' "
        f"-d {_json_for_shell(body)}"
    )
    python = (
        "# the llama-server above; relevance_score is the model's raw score (apply a sigmoid for 0..1)\n"
        "import json\nimport urllib.request\n\n"
        f"body = json.dumps({body!r}).encode()\n"
        "request = urllib.request.Request(\"http://localhost:8080/v1/rerank\", body, "
        "{\"Content-Type\": \"application/json\"})\n"
        "print(json.load(urllib.request.urlopen(request))[\"results\"])\n"
    )
    return shell, python


def _onnx_file(folder: Path) -> str:
    from engine.export.onnx import FILES

    return next((file for file in FILES.values() if (folder / file).exists()), FILES["fp32"])


def _onnx(kind: str, folder: Path, name: str) -> str:
    file = _onnx_file(folder)
    kwargs = "" if file.endswith("/model.onnx") else f', model_kwargs={{"file_name": {file!r}}}'
    backend = ("# sentence-transformers' ONNX backend (pip install \"sentence-transformers[onnx]\"). It runs through\n"
               "# optimum-onnx, and no release of optimum-onnx works with transformers 5 (which\n"
               "# sentence-transformers 6 needs) yet: until one does, the onnxruntime lines below run the same file.\n")
    if kind == "embedding":
        return (backend + "from sentence_transformers import SentenceTransformer\n\n"
                f"model = SentenceTransformer({name!r}, backend=\"onnx\"{kwargs})\n"
                f"queries = model.encode_query([{EXAMPLE_QUERY!r}])\n"
                f"documents = model.encode_document([{EXAMPLE_DOCUMENT!r}])\n"
                "print(model.similarity(queries, documents))\n\n" + _onnxruntime_embedding(folder, name, file))
    if kind == "reranker":
        return (backend + "from sentence_transformers import CrossEncoder\n\n"
                f"model = CrossEncoder({name!r}, backend=\"onnx\"{kwargs})\n"
                f"print(model.predict([({EXAMPLE_QUERY!r}, {EXAMPLE_DOCUMENT!r})]))\n\n"
                + _onnxruntime_scores(name, file, "scores = 1 / (1 + np.exp(-logits[:, 0]))  # the reranker's "
                                      "sigmoid\nprint(scores)\n", pair=True))
    return _onnxruntime_scores(name, file, "config = json.load(open(f\"{folder}/config.json\"))\n"
                               "print([config[\"id2label\"][str(i)] for i in logits.argmax(1)])\n", pair=False)


def _onnxruntime_head(name: str, file: str, reads_config: bool = False) -> str:
    return ("# plain onnxruntime (pip install onnxruntime transformers)\n"
            + ("import json\n\n" if reads_config else "")
            + "import numpy as np\nimport onnxruntime\nfrom transformers import AutoTokenizer\n\n"
            f"folder = {name!r}\n"
            "tokenizer = AutoTokenizer.from_pretrained(folder)\n"
            f"session = onnxruntime.InferenceSession(f\"{{folder}}/{file}\")\n"
            "inputs = {i.name for i in session.get_inputs()}\n")


def _onnxruntime_scores(name: str, file: str, tail: str, pair: bool) -> str:
    texts = f"[{EXAMPLE_QUERY!r}], [{EXAMPLE_DOCUMENT!r}]" if pair else f"[{EXAMPLE_QUERY!r}]"
    return (_onnxruntime_head(name, file, reads_config=not pair)
            + f"batch = tokenizer({texts}, padding=True, truncation=True, return_tensors=\"np\")\n"
            "logits = session.run([\"logits\"], {k: v for k, v in batch.items() if k in inputs})[0]\n" + tail)


def _onnxruntime_embedding(folder: Path, name: str, file: str) -> str:
    modules = json.loads((folder / "modules.json").read_text()) if (folder / "modules.json").exists() else []
    pooling_path = next((m["path"] for m in modules if m["type"].endswith("Pooling")), None)
    pooling = json.loads((folder / pooling_path / "config.json").read_text()).get("pooling_mode", "mean") \
        if pooling_path is not None else "mean"
    if any(not m["type"].endswith(("Transformer", "Pooling", "Normalize")) for m in modules):
        return "# the model's layers after pooling run in sentence-transformers: use the lines above\n"
    settings = folder / "config_sentence_transformers.json"
    prompts = (json.loads(settings.read_text()).get("prompts") or {}) if settings.exists() else {}
    prompt = prompts.get("query") or ""
    pooled = {"mean": "mask = batch[\"attention_mask\"][..., None]\n"
                      "embeddings = (hidden * mask).sum(1) / mask.sum(1)  # mean pooling, as the model pools\n",
              "cls": "embeddings = hidden[:, 0]  # the first token, as the model pools\n",
              "lasttoken": "embeddings = hidden[:, -1]  # the last token (the tokenizer pads on the left)\n"}[pooling]
    normalize = any(m["type"].endswith("Normalize") for m in modules)
    return (_onnxruntime_head(name, file)
            + f"batch = tokenizer([{(prompt + EXAMPLE_QUERY)!r}], padding=True, truncation=True, "
            "return_tensors=\"np\")\n"
            "hidden = session.run([\"last_hidden_state\"], {k: v for k, v in batch.items() if k in inputs})[0]\n"
            + pooled
            + ("embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)\n" if normalize else "")
            + "print(embeddings.shape)\n")


def tei_snippet(kind: str, merged_name: str) -> str:
    """TEI's docker line for the merged folder, and the request that asks it for what `kind` gives."""
    route, body = {
        "embedding": ("embed", {"inputs": EXAMPLE_QUERY}),
        "reranker": ("rerank", {"query": EXAMPLE_QUERY, "texts": [EXAMPLE_DOCUMENT]}),
        "classifier": ("predict", {"inputs": EXAMPLE_QUERY}),
    }[kind]
    return (f"# Text Embeddings Inference, from the merged model (download it as a zip, unzip it here)\n"
            f"docker run -p 8080:80 -v \"$PWD/{merged_name}:/data\" {TEI_IMAGE} --model-id /data\n"
            f"curl http://localhost:8080/{route} -H 'Content-Type: application/json' -d {_json_for_shell(body)}")
