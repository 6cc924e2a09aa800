"""GGUF and ONNX exports checked where users run them: GGUF in llama.cpp (node-llama-cpp's prebuilt build, installed
from npm by the `llama_runtime` fixture when it is missing), ONNX in onnxruntime.

The real all-MiniLM-L6-v2 goes through every format and quantization on the 200 held-out texts; tiny random models
cover the other architectures; broken and truncated files show that the check catches what users complain about.
"""

from __future__ import annotations

import json

import pytest

from engine.export import ExportError, export, verify
from engine.export import gguf as gguf_export
from engine.export import llama_cpp
from engine.export.parity import HeldOut
from tests.tiny_models import build_tiny_model

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(scope="session")
def llama_runtime():
    return llama_cpp.install()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    built = {}

    def folder(family, vocabulary="wordpiece"):
        if (family, vocabulary) not in built:
            built[family, vocabulary] = build_tiny_model(family, tmp_path_factory.mktemp(family) / family,
                                                         vocabulary=vocabulary)
        return built[family, vocabulary]

    return folder


def _saved_report(result) -> dict:
    folder = result.path.parent if result.format == "gguf" else result.path
    return json.loads((folder / "parity.json").read_text())


# Texts a tokenizer can get wrong: accents, capitals, runs of spaces, leading and trailing ones, tabs and newlines,
# Cyrillic and CJK (characters the tiny vocabulary lacks: unknown tokens), compatibility forms NFKC folds, long words
TRICKY = HeldOut(["Café crème à Noël", "HELLO World, the QUICK brown fox", "several    spaces   between  words",
                  "Привет мир, как дела", "unbelievableness of ﬁne ｆｕｌｌwidth text", "Tōkyō 東京 and 日本語"],
                 ["Grüße aus München", "BTree implementation for Go", "  leading and trailing spaces  ",
                  "Москва и Санкт-Петербург", "antidisestablishmentarianism", "tabs\tand\nnewlines"],
                 "texts that exercise the tokenizer")


@pytest.mark.parametrize("quantize", ["f16", "q8_0"])
def test_minilm_gguf_matches_the_model_in_llama_cpp(llama_runtime, tmp_path, quantize):
    result = export(MINILM, "gguf", quantize, tmp_path)

    assert result.path == tmp_path / f"all-MiniLM-L6-v2-{quantize}.gguf"
    report = _saved_report(result)
    assert report["passed"], report["problems"]
    assert report["texts"] == 200 and report["cosine_min"] >= {"f16": 0.999, "q8_0": 0.99}[quantize]
    assert report["retrieval"]["exported"]["ndcg@10"] >= report["retrieval"]["pytorch"]["ndcg@10"] - 0.02
    metadata = gguf_export.read_metadata(result.path)
    assert metadata["general.architecture"] == "bert"
    assert metadata["bert.pooling_type"] == 1  # mean, as the model's Pooling module says
    assert metadata[gguf_export.NORMALIZE_KEY] is True
    assert metadata["bert.context_length"] == 256  # the model's max_seq_length


@pytest.mark.parametrize("quantize, file", [("fp32", "onnx/model.onnx"), ("int8", "onnx/model_qint8.onnx")])
def test_minilm_onnx_matches_the_model_in_onnxruntime(tmp_path, quantize, file):
    result = export(MINILM, "onnx", quantize, tmp_path / "onnx")

    assert (result.path / file).is_file() and (result.path / "modules.json").is_file()
    report = _saved_report(result)
    assert report["passed"], report["problems"]
    assert report["cosine_min"] >= {"fp32": 0.999, "int8": 0.99}[quantize]


@pytest.mark.parametrize("family, vocabulary, arch", [
    ("bert", "wordpiece", "bert"), ("xlm-roberta", "wordpiece", "bert"), ("qwen3", "bpe", "qwen3"),
    ("modernbert", "wordpiece", "modern-bert")])
def test_tiny_model_gguf_matches_in_llama_cpp(llama_runtime, tiny, tmp_path, family, vocabulary, arch):
    result = export(tiny(family, vocabulary), "gguf", "f16", tmp_path / "out.gguf")

    assert result.passed, result.report["problems"]
    assert result.report["cosine_min"] >= 0.999
    metadata = gguf_export.read_metadata(result.path)
    assert metadata["general.architecture"] == arch
    if family == "qwen3":  # Qwen3-Embedding's shape: a byte-level BPE split as Qwen's, pooled by the last token
        assert metadata["tokenizer.ggml.model"] == "gpt2" and metadata["tokenizer.ggml.pre"] == "qwen2"
        assert metadata["qwen3.pooling_type"] == 3 and metadata[gguf_export.PROMPT_KEY.format(name="query")]


@pytest.mark.parametrize("vocabulary", ["wordpiece", "gemma"])
def test_an_embedding_gemma_with_its_dense_layers_matches_in_llama_cpp(llama_runtime, tmp_path, vocabulary):
    """EmbeddingGemma's shape: Gemma3 attending both ways (a global layer every sixth, local ones between), mean
    pooling, two Dense layers back to the hidden size, normalization, and its task prompts; with a WordPiece
    vocabulary, and with Gemma's own (SentencePiece BPE, bytes for what it lacks)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer

    base = build_tiny_model("gemma3", tmp_path / "gemma3", num_hidden_layers=6, vocabulary=vocabulary)
    torch.manual_seed(0)
    dense = [Dense(64, 128, bias=False, activation_function=torch.nn.Identity()),
             Dense(128, 64, bias=False, activation_function=torch.nn.Identity())]
    SentenceTransformer(modules=[Transformer(str(base)), Pooling(64, "mean"), *dense, Normalize()],
                        device="cpu").save(str(tmp_path / "embedding-gemma"))

    result = export(tmp_path / "embedding-gemma", "gguf", "f16", tmp_path / "out.gguf")

    assert result.passed, result.report["problems"]
    assert result.report["cosine_min"] >= 0.999
    metadata = gguf_export.read_metadata(result.path)
    assert metadata["general.architecture"] == "gemma-embedding"
    assert metadata["gemma-embedding.dense_2_feat_out"] == 128
    assert metadata["gemma-embedding.attention.sliding_window"] == 8  # the checkpoint's, not transformers' half
    assert metadata[gguf_export.PROMPT_KEY.format(name="query")] == "task: search result | query: "
    if vocabulary == "gemma":
        assert metadata["tokenizer.ggml.model"] == "llama"
        tricky = verify(tmp_path / "embedding-gemma", result.path, "gguf", "f16", TRICKY)
        assert tricky.passed, tricky.report["problems"]  # the same tokens for every text, and the same vectors


@pytest.fixture(scope="module")
def xlm_roberta(tmp_path_factory):
    """bge-m3's and multilingual-e5's shape, tiny: XLM-RoBERTa (positions numbered after padding_idx, one token type)
    with a SentencePiece Unigram vocabulary and its NFKC character map, mean pooling, normalization."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    folder = tmp_path_factory.mktemp("xlm-roberta")
    base = build_tiny_model("xlm-roberta", folder / "base", vocabulary="unigram", pad_token_id=1, type_vocab_size=1)
    SentenceTransformer(modules=[Transformer(str(base)), Pooling(64, "mean"), Normalize()],
                        device="cpu").save(str(folder / "model"))
    return folder / "model"


def test_an_xlm_roberta_with_a_sentencepiece_vocabulary_matches_in_llama_cpp(llama_runtime, xlm_roberta, tmp_path):
    """f16 only: the tokenizer is what this file differs in, and q8_0's parity is the MiniLM test's above."""
    result = export(xlm_roberta, "gguf", "f16", tmp_path / "out.gguf")

    assert result.passed, result.report["problems"]
    assert result.report["cosine_min"] >= 0.999
    tricky = verify(xlm_roberta, result.path, "gguf", "f16", TRICKY)
    assert tricky.passed, tricky.report["problems"]  # the same tokens for every text, and the same vectors
    metadata = gguf_export.read_metadata(result.path)
    assert metadata["general.architecture"] == "bert" and metadata["tokenizer.ggml.model"] == "t5"
    assert len(metadata["tokenizer.ggml.precompiled_charsmap"]) > 1000
    assert metadata["bert.context_length"] == 64  # the positions after padding_idx, cut to max_seq_length


def test_an_xlm_roberta_with_the_hubs_tokenizer_json_exports_alike(llama_runtime, xlm_roberta, tmp_path):
    """bge-m3's tokenizer.json as the Hub has it (written by transformers 4: the character map then a Replace of runs
    of spaces, Metaspace alone) gives llama.cpp the same settings as the one transformers 5 writes."""
    import shutil

    folder = shutil.copytree(xlm_roberta, tmp_path / "model")
    spec = json.loads((folder / "tokenizer.json").read_text())
    spec["normalizer"] = {"type": "Sequence", "normalizers": [
        spec["normalizer"], {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}]}
    spec["pre_tokenizer"] = spec["pre_tokenizer"]["pretokenizers"][-1]
    (folder / "tokenizer.json").write_text(json.dumps(spec))

    result = export(folder, "gguf", "f16", tmp_path / "out.gguf")

    assert result.passed, result.report["problems"]
    metadata = gguf_export.read_metadata(result.path)
    assert metadata["tokenizer.ggml.remove_extra_whitespaces"] and metadata["tokenizer.ggml.add_space_prefix"]


def test_a_file_that_tokenizes_otherwise_fails_and_names_the_tokens(llama_runtime, xlm_roberta, tmp_path):
    import gguf

    result = export(xlm_roberta, "gguf", "f16", tmp_path / "out.gguf")
    reader = gguf.GGUFReader(str(result.path), "r+")
    field = reader.fields["tokenizer.ggml.remove_extra_whitespaces"]
    field.parts[field.data[0]][0] = False  # the model's tokenizer merges runs of spaces
    reader.data.flush()
    del reader

    broken = verify(xlm_roberta, result.path, "gguf", "f16", TRICKY)

    assert not broken.passed
    assert "tokenizer splits 2 of 12 held-out inputs otherwise" in broken.report["problems"][0]
    assert "several    spaces" in broken.report["problems"][0]


@pytest.mark.parametrize("family", ["mpnet", "distilbert"])
def test_gguf_of_an_architecture_llama_cpp_does_not_run_is_refused_with_onnx_named(tiny, tmp_path, family):
    with pytest.raises(ExportError, match=f"llama.cpp does not run {family}") as caught:
        export(tiny(family), "gguf", "f16", tmp_path)
    assert "onnx" in caught.value.fix
    assert not list(tmp_path.iterdir())


def test_a_file_that_pools_otherwise_fails_and_names_pooling(llama_runtime, tiny, tmp_path):
    import gguf

    result = export(tiny("bert"), "gguf", "f16", tmp_path)
    assert result.passed
    reader = gguf.GGUFReader(str(result.path), "r+")
    field = reader.fields["bert.pooling_type"]
    field.parts[field.data[0]][0] = int(gguf.PoolingType.CLS)  # the model pools by mean
    reader.data.flush()
    del reader

    broken = verify(tiny("bert"), result.path, "gguf", "f16")

    assert not broken.passed
    assert "pools by cls where the model pools by mean" in broken.report["problems"][0]
    assert json.loads((tmp_path / "parity.json").read_text())["passed"] is False


def test_a_truncated_file_fails_the_check(llama_runtime, tiny, tmp_path):
    result = export(tiny("bert"), "gguf", "q8_0", tmp_path)
    data = result.path.read_bytes()
    result.path.write_bytes(data[: len(data) // 2])

    broken = verify(tiny("bert"), result.path, "gguf", "q8_0")

    assert not broken.passed
    assert "damaged or incomplete" in broken.report["problems"][0]


def test_cli_export_prints_the_parity_result(llama_runtime, tiny, tmp_path, capsys):
    from engine.cli import main

    code = main(["export", "--model", str(tiny("bert")), "--format", "gguf", "--quantize", "q8_0",
                 "--output", str(tmp_path)])

    assert code == 0
    assert "parity passed" in capsys.readouterr().out
    assert (tmp_path / "parity.json").is_file()


def test_save_pretrained_gguf_on_a_loaded_model(llama_runtime, tiny, tmp_path):
    from engine import FastSentenceTransformer

    model = FastSentenceTransformer.from_pretrained(str(tiny("bert")), device="cpu")
    result = model.save_pretrained_gguf(tmp_path, quantization_method="q8_0")

    assert result.passed and result.path.parent == tmp_path and result.path.suffix == ".gguf"


def test_unknown_quantization_is_refused_with_the_choices(tiny):
    with pytest.raises(ExportError, match="no quantization 'q4_0'") as caught:
        export(tiny("bert"), "gguf", "q4_0")
    assert "f16, q8_0" in caught.value.fix


@pytest.fixture(scope="module")
def scorers(tiny, tmp_path_factory):
    """A tiny reranker (sentence-transformers CrossEncoder) and a tiny three-class classifier (transformers), saved."""
    from engine.models import FastClassifier, FastCrossEncoder

    folder = tmp_path_factory.mktemp("scorers")
    FastCrossEncoder.from_pretrained(str(tiny("bert")), device="cpu").save_pretrained(str(folder / "reranker"))
    FastClassifier.from_pretrained(str(tiny("bert")), labels=["admin", "games", "web"],
                                   device="cpu").save_pretrained_merged(str(folder / "classifier"))
    return folder


@pytest.fixture(scope="module")
def scorer_onnx(scorers, tmp_path_factory):
    """Each scorer's fp32 ONNX export, made once."""
    made = {}

    def exported(kind):
        if kind not in made:
            made[kind] = export(scorers / kind, "onnx", "fp32", tmp_path_factory.mktemp(kind) / "onnx")
        return made[kind]

    return exported


def _run_onnxruntime_lines(result, tmp_path) -> str:
    """The Export tab's onnxruntime lines for `result`, run where the user has the folder under its shown name."""
    import shutil
    import subprocess
    import sys

    from engine.export.serving import serving_snippets

    shutil.copytree(result.path, tmp_path / "served" / "my-model")
    lines = serving_snippets(result.report["task"], result.path, "my-model", "merged")["python"]
    code = "# plain onnxruntime" + lines.split("# plain onnxruntime")[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path / "served", capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.parametrize("kind", ["reranker", "classifier"])
def test_a_reranker_or_classifier_exports_to_onnx_with_its_head_and_its_scores_match(scorer_onnx, tmp_path, kind):
    result = scorer_onnx(kind)

    report = _saved_report(result)
    assert report["task"] == kind and report["passed"], report["problems"]
    assert report["score_correlation"] >= 0.999 and report["score_max_diff"] < 1e-3 and report["agreement"] == 1.0
    assert report["texts"] == 200
    printed = _run_onnxruntime_lines(result, tmp_path)
    if kind == "classifier":
        assert printed.strip().strip("[]'") in ("admin", "games", "web")
    else:
        assert 0 < float(printed.strip().strip("[]")) < 1  # a sigmoid score


def test_a_damaged_reranker_file_fails_its_check(scorers, scorer_onnx, tmp_path):
    import shutil

    copy = shutil.copytree(scorer_onnx("reranker").path, tmp_path / "copy")
    file = copy / "onnx" / "model.onnx"
    file.write_bytes(file.read_bytes()[:1000])

    broken = verify(scorers / "reranker", copy, "onnx", "fp32")

    assert not broken.passed and "damaged or incomplete" in broken.report["problems"][0]


def test_gguf_of_a_bert_reranker_that_reads_two_segments_is_refused_with_onnx_named(scorers, tmp_path):
    """ms-marco-MiniLM's shape: BERT gives the document token type 1, which llama.cpp's bert graph never does."""
    with pytest.raises(ExportError, match="second segment") as caught:
        export(scorers / "reranker", "gguf", "f16", tmp_path)
    assert "ONNX" in caught.value.fix
    assert not list(tmp_path.iterdir())


def test_gguf_of_a_classifier_is_refused_with_onnx_named(scorers, tmp_path):
    with pytest.raises(ExportError, match="GGUF export of classifier models") as caught:
        export(scorers / "classifier", "gguf", "f16", tmp_path)
    assert "ONNX" in caught.value.fix


def _tiny_reranker(folder, family: str, vocabulary: str, **config):
    """A tiny CrossEncoder (one score a pair), its weights drawn wider than transformers' default (0.02): so that its
    scores differ between pairs as a trained reranker's do, where at 0.02 every pair scores nearly alike and f16
    rounding alone decides the correlation."""
    import torch

    from engine.models import FastCrossEncoder

    base = build_tiny_model(family, folder / "base", vocabulary=vocabulary, initializer_range=0.1, **config)
    return FastCrossEncoder.from_pretrained(str(base), device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def xlm_roberta_reranker(tmp_path_factory):
    """bge-reranker-v2-m3's shape, tiny: XLMRobertaForSequenceClassification (its head dense, tanh, out_proj) with a
    SentencePiece Unigram vocabulary and one token type."""
    folder = tmp_path_factory.mktemp("xlm-roberta-reranker")
    _tiny_reranker(folder, "xlm-roberta", "unigram", pad_token_id=1, type_vocab_size=1).save_pretrained(
        str(folder / "reranker"))
    return folder / "reranker"


@pytest.mark.parametrize("quantize", ["f16", "q8_0"])
def test_an_xlm_roberta_reranker_gguf_scores_pairs_as_the_cross_encoder_in_llama_cpp(llama_runtime,
                                                                                    xlm_roberta_reranker, tmp_path,
                                                                                    quantize):
    from engine.export.serving import serving_snippets

    result = export(xlm_roberta_reranker, "gguf", quantize, tmp_path / "reranker.gguf")

    report = _saved_report(result)
    assert report["task"] == "reranker" and report["passed"], report["problems"]  # tokens alike, scores correlated
    assert report["texts"] == 200 and report["score_correlation"] >= {"f16": 0.999, "q8_0": 0.99}[quantize]
    assert report["score_spearman"] >= {"f16": 0.999, "q8_0": 0.98}[quantize]
    assert report["agreement"] >= {"f16": 1.0, "q8_0": 0.9}[quantize]
    metadata = gguf_export.read_metadata(result.path)
    assert metadata["bert.pooling_type"] == 4  # rank
    assert metadata["tokenizer.chat_template.rerank"] == "<s>{query}</s></s>{document}</s>"
    shell = serving_snippets("reranker", result.path, "reranker.gguf", "merged")["shell"]
    assert "llama-server -m reranker.gguf --reranking -c 64" in shell and "/v1/rerank" in shell


def test_a_bert_reranker_that_reads_both_segments_alike_scores_pairs_as_the_cross_encoder(llama_runtime, tmp_path):
    """BERT's head in llama.cpp's rank pooling: the pooler (dense, tanh) as cls, the classifier as cls.output; its pair
    joined as BERT's tokenizer joins it, where node-llama-cpp would put two [SEP] between query and document."""
    import torch

    model = _tiny_reranker(tmp_path, "bert", "wordpiece")
    types = model[0].auto_model.bert.embeddings.token_type_embeddings.weight
    with torch.no_grad():
        types[1] = types[0]
    model.save_pretrained(str(tmp_path / "reranker"))

    result = export(tmp_path / "reranker", "gguf", "f16", tmp_path / "reranker.gguf")

    assert result.passed, result.report["problems"]
    assert result.report["score_correlation"] >= 0.999 and result.report["agreement"] == 1.0
    assert gguf_export.read_metadata(result.path)["tokenizer.chat_template.rerank"] == \
        "[CLS]{query}[SEP]{document}[SEP]"


def test_a_modernbert_reranker_scores_pairs_as_the_cross_encoder_in_llama_cpp(llama_runtime, tmp_path):
    """gte-reranker-modernbert's shape: the mean of the tokens through ModernBERT's head (dense, GELU, norm) and its
    classifier, which llama.cpp's modern-bert ranking runs."""
    _tiny_reranker(tmp_path, "modernbert", "wordpiece", classifier_pooling="mean").save_pretrained(
        str(tmp_path / "reranker"))

    result = export(tmp_path / "reranker", "gguf", "f16", tmp_path / "reranker.gguf")

    assert result.passed, result.report["problems"]
    assert result.report["score_correlation"] >= 0.999 and result.report["agreement"] == 1.0
    assert gguf_export.read_metadata(result.path)["general.architecture"] == "modern-bert"


def test_a_modernbert_reranker_that_pools_its_first_token_is_refused(tmp_path):
    _tiny_reranker(tmp_path, "modernbert", "wordpiece", classifier_pooling="cls").save_pretrained(
        str(tmp_path / "reranker"))

    with pytest.raises(ExportError, match="mean pooling") as caught:
        export(tmp_path / "reranker", "gguf", "f16", tmp_path / "out")
    assert "ONNX" in caught.value.fix


def test_cli_exports_a_reranker_run_to_gguf_checked_on_its_held_out_pairs(llama_runtime, xlm_roberta_reranker,
                                                                          tmp_path, capsys):
    import shutil

    from engine.cli import main
    from engine.data import SAMPLE_DIR

    run_dir = tmp_path / "run-reranker"
    shutil.copytree(xlm_roberta_reranker, run_dir / "merged")
    (run_dir / "config.json").write_text(json.dumps({"task": "reranker", "data": str(SAMPLE_DIR / "train.jsonl"),
                                                     "output_dir": str(run_dir), "eval_size": 0.1}))
    (run_dir / "events.jsonl").write_text("")

    code = main(["export", "--model", str(run_dir), "--format", "gguf", "--quantize", "f16"])

    assert code == 0
    assert "parity passed: score correlation" in capsys.readouterr().out
    report = json.loads((run_dir / "export" / "gguf-f16" / "parity.json").read_text())
    assert report["task"] == "reranker" and report["texts_from"] == "the run's held-out split (run-reranker)"
    assert (run_dir / "export" / "gguf-f16" / "run-reranker-f16.gguf").is_file()


@pytest.fixture(scope="module")
def qwen3_reranker(tmp_path_factory):
    """Qwen3-Reranker's sentence-transformers form (tomaarsen/Qwen3-Reranker-0.6B-seq-cls), tiny:
    Qwen3ForSequenceClassification with one score from the last token, and a byte-level BPE vocabulary split as
    Qwen's that joins a pair as its two texts' tokens, nothing added."""
    folder = tmp_path_factory.mktemp("qwen3-reranker")
    _tiny_reranker(folder, "qwen3", "bpe").save_pretrained(str(folder / "reranker"))
    return folder / "reranker"


@pytest.mark.parametrize("quantize", ["f16", "q8_0"])
def test_a_qwen3_reranker_gguf_scores_pairs_as_the_cross_encoder_in_llama_cpp(llama_runtime, qwen3_reranker,
                                                                              tmp_path, quantize):
    from engine.export.serving import serving_snippets

    result = export(qwen3_reranker, "gguf", quantize, tmp_path / "reranker.gguf")

    report = _saved_report(result)
    assert report["passed"], report["problems"]  # llama.cpp's token ids are the tokenizer's, scores correlated
    assert report["score_correlation"] >= {"f16": 0.999, "q8_0": 0.99}[quantize]
    assert report["agreement"] >= {"f16": 1.0, "q8_0": 0.9}[quantize]
    metadata = gguf_export.read_metadata(result.path)
    assert metadata["general.architecture"] == "qwen3" and metadata["qwen3.pooling_type"] == 4  # rank
    assert metadata["qwen3.classifier.output_labels"] == ["yes", "no"]
    assert metadata["tokenizer.chat_template.rerank"] == "{query}{document}"
    shell = serving_snippets("reranker", result.path, "reranker.gguf", "merged")["shell"]
    assert "llama-server -m reranker.gguf --reranking" in shell and "/v1/rerank" in shell


def test_a_qwen3_reranker_whose_pairs_end_with_its_padding_token_is_refused(tmp_path):
    """Qwen3-Embedding's tokenizer ends a text with <|endoftext|>, its padding token: the model then scores the token
    before it, and llama.cpp the last."""
    from tokenizers import processors

    model = _tiny_reranker(tmp_path, "qwen3", "bpe")
    end = "<|endoftext|>"
    model.tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {end}", pair=f"$A {end} $B {end}", special_tokens=[(end, model.tokenizer.convert_tokens_to_ids(end))])
    model.save_pretrained(str(tmp_path / "reranker"))

    with pytest.raises(ExportError, match="padding token") as caught:
        export(tmp_path / "reranker", "gguf", "f16", tmp_path / "out")
    assert "ONNX" in caught.value.fix
