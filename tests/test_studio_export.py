"""What the Export tab tells a user when an export cannot happen, in the page's words and beside the button
pressed: a push with no token, a token the Hub refuses, a Hub that cannot be reached, a folder outside the
allowed ones. The model card and the weights of a good export are in test_model_card.py."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import huggingface_hub.constants
import pytest

from hub_standin import HubStandIn
from studio.exporting import HUB_UNREACHABLE, NO_TOKEN, push_model, save_model
from studio.settings import PathNotAllowed, Settings
from studio.store import Run

MODEL_FILES = {"modules.json": "[]", "README.md": 'model = SentenceTransformer("somewhere")\n'}


@pytest.fixture
def home(tmp_path) -> Path:
    return tmp_path / "runs"


@pytest.fixture
def run(home) -> Run:
    """A finished run whose merged/ holds what an export copies (the files' contents do not matter here)."""
    merged = home / "run-7" / "merged"
    merged.mkdir(parents=True)
    for name, text in MODEL_FILES.items():
        (merged / name).write_text(text)
    return Run(id="run-7", created=time.time(), status="completed", model="sentence-transformers/all-MiniLM-L6-v2",
               data="pairs.csv", method="lora", run_dir=str(home / "run-7"))


@pytest.fixture
def no_stored_token(monkeypatch, tmp_path):
    """No HF_TOKEN and no token saved by `hf auth login`, as on a fresh machine."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_push_without_a_token_says_where_to_get_one_and_asks_nothing_of_the_hub(run, no_stored_token, monkeypatch):
    with HubStandIn() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        with pytest.raises(RuntimeError) as refused:
            push_model(run, "merged", "someone/model", token="  ", private=True)
    assert str(refused.value) == NO_TOKEN
    assert "token box" in NO_TOKEN and "huggingface.co/settings/tokens" in NO_TOKEN
    assert hub.tokens == [] and hub.repos == {}


def test_a_push_with_no_network_says_the_hub_cannot_be_reached(run, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(RuntimeError) as failed:
        push_model(run, "merged", "someone/model", token="hf_test_token", private=True)
    assert str(failed.value) == HUB_UNREACHABLE
    assert "cannot be reached" in HUB_UNREACHABLE and "download" in HUB_UNREACHABLE
    monkeypatch.setenv("HF_ENDPOINT", "http://no-such-host.invalid")  # the "Name or service not known" case
    with pytest.raises(RuntimeError, match="cannot be reached") as failed:
        push_model(run, "merged", "someone/model", token="hf_test_token", private=True)
    assert "Errno" not in str(failed.value)


def test_a_token_the_hub_refuses_is_named_as_the_problem_without_showing_it(run, monkeypatch):
    with HubStandIn(write_tokens=("hf_good_token",)) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        with pytest.raises(RuntimeError) as refused:
            push_model(run, "merged", "someone/model", token="hf_read_only_token", private=True)
        message = str(refused.value)
        assert "refused the token" in message and "write access" in message and "someone/model" in message
        assert "hf_read_only_token" not in message and "someone/model" not in hub.repos

        url = push_model(run, "merged", "someone/model", token="hf_good_token", private=True)
    assert url.endswith("someone/model") and "README.md" in hub.repos["someone/model"]["files"]


def test_saving_outside_the_allowed_folders_names_the_folders_that_are(run, home, tmp_path):
    operator = tmp_path / "shared-models"
    settings = Settings.from_env({"LACKER_HOME": str(home), "LACKER_ALLOWED_DIRS": str(operator)})
    for typed in ("/etc/models", str(tmp_path / "elsewhere"), str(home / "downloads" / "x")):
        with pytest.raises(PathNotAllowed) as refused:
            save_model(run, "merged", typed, settings)
        message = str(refused.value)
        assert f"may not save to `{typed}`" in message
        assert f"`{home.resolve()}` or `{operator.resolve()}`" in message
        assert f"`{home.resolve() / 'exports' / 'lacker-run-7-merged'}`" in message
        assert "Upload" not in message and "LACKER_ALLOWED_DIRS" not in message

    copy = save_model(run, "merged", str(operator / "mine"), settings)
    assert (copy / "modules.json").exists()
    assert (copy / "README.md").read_text() == f'model = SentenceTransformer("{copy}")\n'


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished embedding run of a tiny BERT on the bundled sample (its held-out split checks the exports)."""
    import json

    from engine.data import SAMPLE_DIR
    from engine.models import FastSentenceTransformer
    from tests.tiny_models import build_tiny_model

    home = tmp_path_factory.mktemp("runs")
    run_dir = home / "run-tiny"
    base = build_tiny_model("bert", tmp_path_factory.mktemp("base") / "bert")
    FastSentenceTransformer.from_pretrained(str(base), device="cpu").save_pretrained(str(run_dir / "merged"))
    (run_dir / "config.json").write_text(json.dumps({"data": str(SAMPLE_DIR / "train.jsonl"),
                                                     "output_dir": str(run_dir), "eval_size": 0.1}))
    (run_dir / "events.jsonl").write_text("")
    run = Run(id="run-tiny", created=time.time(), status="completed", model="tiny-bert", data="train.jsonl",
              method="lora", run_dir=str(run_dir))
    return run, Settings.from_env({"LACKER_HOME": str(home)})


def test_a_gguf_and_an_onnx_export_of_a_run_show_parity_size_and_serving_lines(tiny_run, tmp_path):
    import subprocess
    import sys
    import zipfile

    from studio.exporting import conversions_table, convert, parity_markdown

    run, settings = tiny_run
    steps = []
    gguf = convert(run, "gguf:q8_0", settings, progress=lambda message, fraction: steps.append(message))
    assert gguf.report["passed"] and gguf.report["texts_from"] == "the run's held-out split (run-tiny)"
    assert gguf.download == settings.downloads_dir / "lacker-run-tiny-gguf-q8_0.gguf" and gguf.download.stat().st_size
    assert "checking the gguf file in llama.cpp" in steps
    shown = parity_markdown("gguf:q8_0", gguf.report)
    assert "GGUF q8_0: ✅ parity passed" in shown and "cosine min" in shown and "NDCG@10" in shown
    assert "ollama create lacker-run-tiny-gguf-q8_0 -f Modelfile" in gguf.snippets["shell"]
    assert "llama-server -m lacker-run-tiny-gguf-q8_0.gguf --embedding --pooling mean -c 64" in gguf.snippets["shell"]
    assert '-v "$PWD/lacker-run-tiny-merged:/data"' in gguf.snippets["shell"]  # TEI serves the merged folder
    assert str(settings.home) not in gguf.snippets["shell"] + gguf.snippets["python"]  # no server paths

    onnx = convert(run, "onnx:int8", settings)
    with zipfile.ZipFile(onnx.download) as zipped:
        zipped.extractall(tmp_path)
    assert (tmp_path / "lacker-run-tiny-onnx-int8" / "onnx" / "model_qint8.onnx").is_file()
    assert 'SentenceTransformer(\'lacker-run-tiny-onnx-int8\', backend="onnx"' in onnx.snippets["python"]
    onnxruntime_lines = "# plain onnxruntime" + onnx.snippets["python"].split("# plain onnxruntime")[1]
    ran = subprocess.run([sys.executable, "-c", onnxruntime_lines], cwd=tmp_path, capture_output=True, text=True)
    assert ran.returncode == 0 and ran.stdout.strip() == "(1, 64)", ran.stderr[-2000:]  # as the unzipped folder runs
    table = conversions_table(run)
    assert "| GGUF q8_0 |" in table and "| ONNX int8 |" in table and table.count("passed") == 2


def test_gguf_of_an_architecture_llama_cpp_does_not_run_is_refused_in_the_pages_words(tmp_path):
    import json

    from engine.models import FastSentenceTransformer
    from studio.exporting import convert
    from tests.tiny_models import build_tiny_model

    run_dir = tmp_path / "runs" / "run-mpnet"
    base = build_tiny_model("mpnet", tmp_path / "mpnet")
    FastSentenceTransformer.from_pretrained(str(base), device="cpu").save_pretrained(str(run_dir / "merged"))
    (run_dir / "config.json").write_text(json.dumps({"data": "pairs.csv", "output_dir": str(run_dir)}))
    (run_dir / "events.jsonl").write_text("")
    run = Run(id="run-mpnet", created=time.time(), status="completed", model="tiny-mpnet", data="pairs.csv",
              method="lora", run_dir=str(run_dir))

    with pytest.raises(ValueError) as refused:
        convert(run, "gguf:f16", Settings.from_env({"LACKER_HOME": str(tmp_path / "runs")}))
    assert "llama.cpp does not run mpnet models" in str(refused.value) and "export to ONNX" in str(refused.value)
    assert "--format" not in str(refused.value)


def test_the_formats_offered_leave_gguf_out_where_the_export_would_refuse_it_and_say_why(tiny_run, tmp_path):
    """A BERT cross-encoder reads the document as token type 1, which llama.cpp's bert graph never gives: the tab
    offers such a run ONNX only, saying why, by the rule the export itself refuses by."""
    import json

    from engine.models import FastCrossEncoder
    from studio.exporting import conversions_for, convert
    from tests.tiny_models import build_tiny_model

    embedding_run, settings = tiny_run
    choices, note = conversions_for(embedding_run)
    assert [value for _, value in choices] == ["gguf:f16", "gguf:q8_0", "onnx:fp32", "onnx:int8"] and note == ""

    run_dir = tmp_path / "runs" / "run-reranker"
    reranker = FastCrossEncoder.from_pretrained(str(build_tiny_model("bert", tmp_path / "bert")), device="cpu")
    reranker.save_pretrained(str(run_dir / "merged"))
    config = {"task": "reranker", "data": "pairs.csv", "output_dir": str(run_dir)}
    (run_dir / "config.json").write_text(json.dumps(config))
    (run_dir / "events.jsonl").write_text("")
    run = Run(id="run-reranker", created=time.time(), status="completed", model="tiny-bert", data="pairs.csv",
              method="lora", run_dir=str(run_dir), config=config)

    choices, note = conversions_for(run)
    assert [value for _, value in choices] == ["onnx:fp32", "onnx:int8"]
    assert note.startswith("GGUF is not offered for this run: the reranker reads the document as the second segment")
    assert "Export the reranker to ONNX instead" in note
    with pytest.raises(ValueError, match="second segment"):  # asked anyway (the API): the same refusal
        convert(run, "gguf:f16", settings)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    from tests.tiny_models import build_tiny_model

    return build_tiny_model("bert", tmp_path_factory.mktemp("tiny") / "bert")


def _trained(task: str, base: Path):
    """A LoRA model of `task` over `base` whose adapter and head have moved off their start (as after training),
    and what it gives for the snippets' example text: embeddings, scores or class probabilities by label."""
    import torch

    from engine.export.serving import EXAMPLE_DOCUMENT, EXAMPLE_QUERY, OTHER_DOCUMENT
    from engine.models import FastClassifier, FastCrossEncoder, FastSentenceTransformer

    torch.manual_seed(0)
    if task == "classifier":
        model = FastClassifier.from_pretrained(str(base), labels=["admin", "games", "web"], device="cpu")
        FastClassifier.get_peft_model(model, r=4)
    else:
        fast = FastSentenceTransformer if task == "embedding" else FastCrossEncoder
        model = fast.from_pretrained(str(base), device="cpu")
        fast.get_peft_model(model, r=4)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter) * 0.2)
    model.eval()
    if task == "embedding":
        return model, model.encode([EXAMPLE_QUERY])
    if task == "reranker":
        return model, model.predict([(EXAMPLE_QUERY, EXAMPLE_DOCUMENT), (EXAMPLE_QUERY, OTHER_DOCUMENT)])
    with torch.no_grad():
        probabilities = model(**model.tokenizer([EXAMPLE_QUERY], return_tensors="pt")).logits.softmax(-1)[0]
    return model, {model.config.id2label[i]: p.item() for i, p in enumerate(probabilities)}


@pytest.mark.parametrize("task", ["embedding", "reranker", "classifier"])
@pytest.mark.parametrize("what", ["merged", "adapter"])
def test_the_export_tabs_load_snippet_loads_each_tasks_model_without_this_package(task, what, tiny_bert, tmp_path,
                                                                                 capsys):
    """The Python the Export tab shows under "Load the result", run as a user pastes it: plain sentence-transformers,
    transformers and PEFT (for an adapter, over the run's base), giving what the trained model gives."""
    import numpy as np

    from engine.export.serving import EXAMPLE_DOCUMENT, EXAMPLE_QUERY, OTHER_DOCUMENT, loading_snippet

    model, expected = _trained(task, tiny_bert)
    folder = tmp_path / what
    if what == "merged":
        model.save_pretrained_merged(str(folder), dtype="float32")
    else:
        model.save_pretrained(str(folder))
    snippet = loading_snippet(task, str(folder), str(tiny_bert) if what == "adapter" else None)
    assert "engine" not in snippet and "lacker" not in snippet.lower()

    pasted = {}
    exec(compile(snippet, "snippet.py", "exec"), pasted)  # noqa: S102 (the snippet is what the page shows)

    assert capsys.readouterr().out.strip(), "the snippet prints what the model gives"
    if task == "embedding":
        np.testing.assert_allclose(pasted["model"].encode([EXAMPLE_QUERY]), expected, atol=1e-4)
    elif task == "reranker":
        scores = pasted["model"].predict([(EXAMPLE_QUERY, EXAMPLE_DOCUMENT), (EXAMPLE_QUERY, OTHER_DOCUMENT)])
        np.testing.assert_allclose(scores, expected, atol=1e-4)
    else:
        predicted = {row["label"]: row["score"] for row in pasted["classify"]([EXAMPLE_QUERY], top_k=None)[0]}
        assert predicted.keys() == expected.keys()  # the class names, not LABEL_0 ...
        np.testing.assert_allclose([predicted[k] for k in expected], list(expected.values()), atol=1e-4)
