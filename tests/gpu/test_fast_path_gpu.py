"""The GPU fast path against the stock path, on CUDA in bf16: `pytest -m gpu tests/gpu`.

Each family's tiny random model, LoRA added the same way to both copies: packed (varlen kernel,
fused LoRA) vs padded SDPA + PEFT, forward embeddings and LoRA gradients; the CUDA ops against
float64 references; a short training run's loss curve against stock's.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

from bench import models  # noqa: E402
from engine.attention import enable  # noqa: E402
from engine.attention.varlen import varlen_attention, varlen_attention_reference  # noqa: E402
from engine.families import family_by_name  # noqa: E402
from engine.kernels.lora import LoraLinearFunction, lora_linear_reference  # noqa: E402

TEXTS = [
    "hello world",
    "a much longer sentence about debian packages, their synopses and long descriptions " * 3,
    "x",
    "Real-time strategy game of ancient warfare with a long name",
    "short one",
] * 3
FAMILIES = ["tiny-bert", "tiny-xlm-roberta", "tiny-distilbert", "tiny-modernbert", "tiny-qwen3", "tiny-gemma3", "tiny-mpnet"]


def on_cuda(features):
    return {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in features.items()}


def rel_error(out, ref):
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {name: models.build(name, root / name) for name in FAMILIES}


def _with_lora(name, checkpoint):
    from peft import LoraConfig

    family = family_by_name(models.FAMILY_OF[name])
    torch.manual_seed(0)
    model = models.load(name, checkpoint, device="cuda")
    model.add_adapter(LoraConfig(r=8, lora_alpha=16, target_modules=list(family.lora_targets)))
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.02)  # non-zero B so that A gets gradients too
    model.eval()
    return model, family


@pytest.mark.parametrize("name", FAMILIES)
def test_fast_path_matches_stock_in_bf16(name, checkpoints):
    stock, family = _with_lora(name, checkpoints[name])
    fast, _ = _with_lora(name, checkpoints[name])
    description = enable(fast, family)
    assert description is not None and "fused LoRA" in description
    assert ("packed" in description) == bool({"varlen", "flex"} & set(family.fast_paths))
    results = []
    for model in (stock, fast):
        model.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            embeddings = model(on_cuda(model.preprocess(TEXTS)))["sentence_embedding"].float()
        (embeddings * torch.linspace(-1, 1, embeddings.shape[-1], device="cuda")).sum().backward()
        grads = {n: p.grad.float() for n, p in model.named_parameters() if p.grad is not None}
        results.append((embeddings.detach(), grads))
    (ref, ref_grads), (out, out_grads) = results
    assert rel_error(out, ref) < 2e-2
    assert ref_grads.keys() == out_grads.keys() and ref_grads
    for n in ref_grads:
        assert rel_error(out_grads[n], ref_grads[n]) < 5e-2, n


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("window", [(-1, -1), (-1, 0), (7, 7)])
@pytest.mark.parametrize("kv_heads", [8, 2])
def test_varlen_kernel_matches_reference(dtype, window, kv_heads):
    lengths = torch.tensor([17, 1, 130, 64, 33])
    cu = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)]).to(torch.int32).cuda()
    total = int(lengths.sum())
    q = torch.randn(total, 8, 64, device="cuda", dtype=dtype, requires_grad=True)
    k = torch.randn(total, kv_heads, 64, device="cuda", dtype=dtype, requires_grad=True)
    v = torch.randn(total, kv_heads, 64, device="cuda", dtype=dtype, requires_grad=True)
    grad = torch.randn(total, 8, 64, device="cuda", dtype=dtype)
    out = varlen_attention(q, k, v, cu, cu, int(lengths.max()), int(lengths.max()), scale=0.125, window=window)
    out.backward(grad)
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = varlen_attention_reference(*leaves, cu.cpu(), cu.cpu(), scale=0.125, window=window)
    ref.backward(grad.double())
    assert rel_error(out, ref) < 1e-2
    for fast, slow in zip((q, k, v), leaves):
        assert rel_error(fast.grad, slow.grad) < 2e-2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mpnet_flex_attention_matches_reference_with_gradients(dtype, checkpoints):
    """Compiled FlexAttention with MPNet's bias table against the per-sequence reference in float64,
    every gradient included (the bias table's: full fine-tuning trains it); then the same call
    captured in a CUDA graph (block mask built from the boundaries on the device) and replayed."""
    from engine.attention.relative import packed_bias, relative_attention, relative_attention_reference

    encoder = models.load("tiny-mpnet", checkpoints["tiny-mpnet"], device="cuda")[0].model.encoder
    torch.nn.init.normal_(encoder.relative_attention_bias.weight)
    lengths = [17, 1, 300, 64, 140, 33]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    total = sum(lengths)
    q, k, v = (torch.randn(1, 4, total, 64, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3))
    grad = torch.randn(1, 4, total, 64, device="cuda", dtype=dtype)
    bias = packed_bias(encoder, cu, total)
    assert bias.block_mask is not None
    out = relative_attention(q, k, v, bias, scale=0.125)
    fast_grads = torch.autograd.grad(out, [q, k, v, encoder.relative_attention_bias.weight], grad)

    cpu_encoder = copy.deepcopy(encoder).cpu().double()
    reference = packed_bias(cpu_encoder, cu.cpu(), total)
    leaves = [t.detach().cpu().double().requires_grad_() for t in (q, k, v)]
    ref = relative_attention_reference(*leaves, reference, scale=0.125)
    slow_grads = torch.autograd.grad(ref, [*leaves, cpu_encoder.relative_attention_bias.weight], grad.cpu().double())
    assert rel_error(out.cpu(), ref) < 1e-2
    for fast, slow in zip(fast_grads, slow_grads):
        assert rel_error(fast.cpu(), slow.cpu()) < 2e-2

    static_cu = cu.clone()
    with torch.no_grad():
        relative_attention(q, k, v, packed_bias(encoder, static_cu, total), scale=0.125)  # warm
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = relative_attention(q, k, v, packed_bias(encoder, static_cu, total), scale=0.125)
        shuffled = [300, 17, 33, 1, 140, 64]  # same total, other boundaries: the graph must follow them
        static_cu.copy_(torch.tensor([0, *torch.tensor(shuffled).cumsum(0).tolist()], dtype=torch.int32))
        graph.replay()
        expected = relative_attention(q, k, v, packed_bias(encoder, static_cu, total), scale=0.125)
    assert rel_error(captured, expected) < 1e-3


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(4096, 384, 384, 16), (3000, 768, 3072, 16), (777, 1024, 128, 8)])
def test_fused_lora_matches_reference_on_cuda(dtype, shape):
    tokens, d_in, d_out, rank = shape
    x = torch.randn(tokens, d_in, device="cuda", dtype=torch.float64)
    weight = torch.randn(d_out, d_in, device="cuda", dtype=torch.float64) / d_in**0.5
    bias = torch.randn(d_out, device="cuda", dtype=torch.float64)
    a = torch.randn(rank, d_in, device="cuda", dtype=torch.float64) / d_in**0.5
    b = torch.randn(d_out, rank, device="cuda", dtype=torch.float64)
    grad = torch.randn(tokens, d_out, device="cuda", dtype=torch.float64)
    ref_leaves = [t.clone().requires_grad_() for t in (x, a, b)]
    ref = lora_linear_reference(ref_leaves[0], weight, bias, ref_leaves[1], ref_leaves[2], 2.0)
    ref.backward(grad)
    leaves = [x.to(dtype).requires_grad_(), a.float().requires_grad_(), b.float().requires_grad_()]
    out = LoraLinearFunction.apply(leaves[0], weight.to(dtype), bias.to(dtype), leaves[1], leaves[2], 2.0)
    out.backward(grad.to(dtype))
    assert out.dtype == dtype and rel_error(out, ref) < 1e-2
    for fast, slow in zip(leaves, ref_leaves):
        assert rel_error(fast.grad, slow.grad) < 2e-2


def test_compiled_layers_match_eager(checkpoints):
    eager, family = _with_lora("tiny-bert", checkpoints["tiny-bert"])
    compiled, _ = _with_lora("tiny-bert", checkpoints["tiny-bert"])
    enable(eager, family)
    assert "torch.compile" in enable(compiled, family, compile=True)
    for texts in (TEXTS, TEXTS[:4]):  # two token counts: dynamic shapes, no wrong reuse
        outs = []
        for model in (eager, compiled):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                outs.append(model(on_cuda(model.preprocess(texts)))["sentence_embedding"].float())
        assert rel_error(outs[1], outs[0]) < 1e-2


def _train_losses(name, checkpoint, fast: bool, steps=30):
    from datasets import Dataset
    from peft import LoraConfig
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers import set_seed

    from bench.speed import load_pairs

    family = family_by_name(models.FAMILY_OF[name])
    set_seed(0)
    model = models.load(name, checkpoint, device="cuda", max_seq_length=128)
    for module in model.modules():  # no dropout: the two paths draw different masks
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    model.add_adapter(LoraConfig(r=8, lora_alpha=16, target_modules=list(family.lora_targets)))
    if fast:
        assert enable(model, family) is not None
    queries, documents = load_pairs(128, 1)
    data = Dataset.from_dict({"anchor": queries[: steps * 32], "positive": documents[: steps * 32]})
    args = SentenceTransformerTrainingArguments(
        output_dir=str(checkpoint / "trainer"), max_steps=steps, per_device_train_batch_size=32, learning_rate=1e-3,
        bf16=True, logging_steps=1, save_strategy="no", report_to=[], seed=0, disable_tqdm=True,
    )
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data,
                                         loss=MultipleNegativesRankingLoss(model))
    trainer.train()
    return [log["loss"] for log in trainer.state.log_history if "loss" in log]


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-modernbert", "tiny-qwen3"])
def test_training_loss_curve_matches_stock(name, checkpoints):
    stock = _train_losses(name, checkpoints[name], fast=False)
    fast = _train_losses(name, checkpoints[name], fast=True)
    assert len(stock) == len(fast) == 30
    assert stock[-1] < stock[0]  # it learns
    gaps = [abs(f - s) / s for f, s in zip(fast, stock)]
    Path("/tmp/loss_curves.json").write_text(json.dumps({"stock": stock, "fast": fast}))
    assert max(gaps) < 0.02, gaps
