"""engine.attention.packed_forward: the attention forwards that keep q, k and v as (tokens, heads, head_dim) views
from the projections to varlen attention give what the packed path gave before them (transformers' own forward
through the `lacker_varlen` interface), forward and LoRA gradients, in a model and in a packed-loop run, and make
no copy of q, k or v on the way, where that path makes one per tensor and layer in the backward.

On CPU varlen attention runs its PyTorch reference; tests/gpu/test_packed_forward_gpu.py runs the same
comparisons on CUDA in bf16, with the Triton RoPE.
"""

from __future__ import annotations

import collections
import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tiny_models import CONFIGS, VOCAB

import engine.attention.packed_forward as packed_forward
from engine.attention import ATTN_IMPLEMENTATION, enable, register
from engine.families import family_by_name
from engine.kernels.patching import class_path, is_patched, remove_patches

FAMILIES = ["bert", "xlm-roberta", "distilbert", "qwen3", "modernbert", "gemma3"]
LENGTHS = [12, 8, 5, 9]  # longer than the tiny ModernBERT's and Gemma3's windows of 8


def tiny_lora_model(family_name: str, **config):
    """A tiny random model of the family with LoRA on its row's targets, A and B both random (so both get
    gradients), on `lacker_varlen` attention and without the packed forwards: the path before them."""
    import transformers
    from peft import LoraConfig, get_peft_model

    config_class, values = CONFIGS[family_name]
    torch.manual_seed(0)
    model = transformers.AutoModel.from_config(getattr(transformers, config_class)(vocab_size=VOCAB,
                                                                                   **{**values, **config}))
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                             target_modules=list(family_by_name(family_name).lora_targets)))
    register()
    model.get_base_model().set_attn_implementation(ATTN_IMPLEMENTATION)
    return model


def with_packed_forwards(model, family_name: str):
    patched = copy.deepcopy(model)
    covered = packed_forward.patch_packed_attention(patched, family_by_name(family_name).packed_attention)
    assert covered == CONFIGS[family_name][1].get("num_hidden_layers", CONFIGS[family_name][1].get("n_layers"))
    return patched


def packed_inputs(family_name: str) -> dict:
    """One stream of LENGTHS sequences as DataCollatorWithFlattening hands it to the model."""
    gen = torch.Generator().manual_seed(1)
    first = 2 if family_name == "xlm-roberta" else 0  # RoBERTa-likes count from padding_idx + 1
    cu = torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()], dtype=torch.int32)
    return dict(input_ids=torch.randint(1000, 2000, (1, sum(LENGTHS)), generator=gen),
                position_ids=torch.cat([torch.arange(n) + first for n in LENGTHS])[None],
                cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max(LENGTHS), max_length_k=max(LENGTHS),
                **family_by_name(family_name).forward_kwargs)


def output_and_lora_grads(model, inputs, seed: int = 0):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = model(**inputs).last_hidden_state
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    (out * weights).sum().backward()
    # (BERT's pooler has LoRA too, and no gradient from the last hidden state)
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if "lora_" in name and p.grad is not None}
    assert len(grads) >= 2 * 4 * 2 and all(g.abs().sum() > 0 for g in grads.values())  # A and B, q k v o, 2 layers
    return out.detach(), grads


@pytest.fixture
def varlen_calls(monkeypatch):
    """(q, k, v) of every varlen_attention call, whichever path made it."""
    calls = []

    def recorded(q, k, v, *args, _original=packed_forward.varlen_attention, **kwargs):
        calls.append((q, k, v))
        return _original(q, k, v, *args, **kwargs)

    monkeypatch.setattr(packed_forward, "varlen_attention", recorded)
    return calls


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("family_name", FAMILIES)
def test_packed_forward_gives_the_earlier_outputs_and_lora_gradients(family_name, train, varlen_calls):
    """In train mode too: dropout draws the same masks (the tiny BERTs' hidden dropout is 0.1), since neither path
    has attention dropout."""
    before = tiny_lora_model(family_name)
    after = with_packed_forwards(before, family_name)
    inputs = packed_inputs(family_name)
    for model in (before, after):
        model.train(train)
    expected_out, expected_grads = output_and_lora_grads(before, inputs)
    layers = len(varlen_calls)
    out, grads = output_and_lora_grads(after, inputs)
    assert len(varlen_calls) == 2 * layers > 0
    torch.testing.assert_close(out, expected_out, atol=1e-5, rtol=1e-5)
    assert grads.keys() == expected_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], atol=1e-5, rtol=1e-5, msg=name)


def test_padded_calls_and_calls_with_a_cache_run_the_class_forward(monkeypatch):
    """A patched model answers calls the packed path does not take (padded rows with a mask, a decoder building
    its KV cache) with the class's forward, so exactly the unpatched model's outputs."""
    from transformers.models.qwen3.modeling_qwen3 import Qwen3Attention

    before = tiny_lora_model("qwen3").eval()
    after = with_packed_forwards(before, "qwen3")
    padded = dict(input_ids=torch.randint(1000, 2000, (2, 10), generator=torch.Generator().manual_seed(3)),
                  attention_mask=torch.tensor([[1] * 10, [1] * 6 + [0] * 4]))
    packed_with_cache = {**packed_inputs("qwen3"), "use_cache": True}
    class_calls = []

    def counted(self, *args, _original=Qwen3Attention.forward, **kwargs):
        class_calls.append(self)
        return _original(self, *args, **kwargs)

    with torch.no_grad():
        for inputs in (padded, packed_with_cache):
            expected = before(**inputs).last_hidden_state
            monkeypatch.setattr(Qwen3Attention, "forward", counted)
            assert torch.equal(after(**inputs).last_hidden_state, expected)
            monkeypatch.undo()
            assert len(class_calls) == 2  # each layer's
            class_calls.clear()


@pytest.mark.parametrize("family_name", FAMILIES)
def test_q_k_and_v_reach_varlen_attention_as_views_of_the_projections(family_name, varlen_calls):
    """What varlen attention is handed is, for each of q, k and v that nothing computes on between, the projection's
    own memory (its output tensor's storage: no copy); q and k after a norm or RoPE are that step's output,
    tokens-first and contiguous, so the CUDA kernel reads them in place too."""
    site = family_by_name(family_name).packed_attention[0]
    model = with_packed_forwards(tiny_lora_model(family_name), family_name).eval()
    projected = collections.defaultdict(list)  # attribute name -> storage of each layer's projection output
    attention = [m for m in model.modules() if class_path(m) == site.cls]
    hooks = [getattr(module, name).register_forward_hook(
        lambda m, args, out, name=name: projected[name].append(out.untyped_storage().data_ptr()))
        for module in attention for name in site.qkv]
    try:
        with torch.no_grad():
            model(**packed_inputs(family_name))
    finally:
        for hook in hooks:
            hook.remove()
    assert len(varlen_calls) == len(attention)
    computed_on = {"q", "k"} if site.rotary or site.norms else set()
    for layer, (q, k, v) in enumerate(varlen_calls):
        for which, t in zip("qkv", (q, k, v)):
            name = site.qkv[0] if len(site.qkv) == 1 else site.qkv["qkv".index(which)]
            if which in computed_on:
                assert t.is_contiguous() and t.shape[0] == sum(LENGTHS), which
            else:
                assert t.untyped_storage().data_ptr() == projected[name][layer], which


class CopiesOfQKV(TorchDispatchMode):
    """Counts the ops that write a copy of a whole q, k or v (or of its gradient): a tensor of `tokens` tokens,
    heads and head_dim, in any layout. Ops inside varlen attention's forward are not counted (`paused`): its CPU
    reference works on each sequence apart, which the CUDA kernel does not."""

    COPIES = {"clone", "copy_", "_to_copy", "select_backward"}

    def __init__(self, tokens: int, head_dim: int):
        super().__init__()
        self.tokens, self.head_dim, self.paused = tokens, head_dim, False
        self.copies = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        target = args[0] if args else None
        name = func.__name__.split(".")[0]
        if not self.paused and name in self.COPIES and isinstance(target, torch.Tensor):
            shape = tuple(target.shape) if name != "select_backward" else tuple(args[1])
            if shape[-1] == self.head_dim and self.tokens in shape and len(shape) in (3, 4):
                self.copies[name] += 1
        return func(*args, **(kwargs or {}))


def count_copies(model, family_name: str, inputs: dict, monkeypatch) -> collections.Counter:
    """CopiesOfQKV over a forward of `model` on packed `inputs` and a backward."""
    site = family_by_name(family_name).packed_attention[0]
    head_dim = next(getattr(m, site.head_dim) for m in model.modules() if class_path(m) == site.cls)
    mode = CopiesOfQKV(inputs["input_ids"].shape[1], head_dim)

    def paused(*args, _original=packed_forward.varlen_attention, **kwargs):
        mode.paused = True
        try:
            return _original(*args, **kwargs)
        finally:
            mode.paused = False

    monkeypatch.setattr(packed_forward, "varlen_attention", paused)
    with mode:
        out = model(**inputs).last_hidden_state
        out.float().sum().backward()
    monkeypatch.undo()
    return mode.copies


@pytest.mark.parametrize("family_name", FAMILIES)
def test_packed_forward_copies_no_q_k_or_v_where_the_earlier_path_copied_each(family_name, monkeypatch):
    """Forward and backward: the path through transformers' forward and `lacker_varlen` writes each of q's, k's
    and v's gradients twice more in every layer (a select's backward into a new zero-filled tensor, then the
    clone that reshaping its transposed layout needs; ModernBERT, whose fused projection's backward stacks the
    three anyway, the first only). The packed forward writes none."""
    before = tiny_lora_model(family_name)
    after = with_packed_forwards(before, family_name)
    layers = sum(class_path(m) == family_by_name(family_name).packed_attention[0].cls for m in before.modules())
    inputs = packed_inputs(family_name)
    old, new = (count_copies(model, family_name, inputs, monkeypatch) for model in (before, after))
    assert sum(new.values()) == 0, new
    assert old["select_backward"] == 3 * layers
    assert old["clone"] == (0 if family_name == "modernbert" else 3 * layers)


@pytest.mark.parametrize("family_name", ["bert", "qwen3"])
def test_packed_loop_run_gives_the_earlier_losses_and_weights(family_name, tmp_path, monkeypatch):
    """A few steps of the packed loop (MultipleNegativesRankingLoss, AdamW) with the packed forwards, which
    take every call (the class's forward never runs), and without them (the earlier path): the same losses and
    LoRA weights."""
    import importlib

    from peft import LoraConfig

    from bench import models
    from engine.loop import PackedTrainer

    name = f"tiny-{family_name}"
    checkpoint = models.build(name, tmp_path / name)
    family = family_by_name(family_name)
    anchors = [f"what does package {i} do for topic {i % 3}" for i in range(12)]
    positives = [f"package {i} is a tool about topic {i % 3} " * (1 + i % 3) for i in range(12)]
    module_name, _, class_name = family.packed_attention[0].cls.rpartition(".")
    attention_class = getattr(importlib.import_module(module_name), class_name)
    class_calls = []

    def counted(self, *args, _original=attention_class.forward, **kwargs):
        class_calls.append(1)
        return _original(self, *args, **kwargs)

    monkeypatch.setattr(attention_class, "forward", counted)
    runs = []
    for keep_packed_forwards in (True, False):
        model = models.load(name, checkpoint, device="cpu")
        torch.manual_seed(3)
        model.add_adapter(LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                     target_modules=list(family.lora_targets)))
        assert "q, k, v in its layout in 2 layers" in enable(model, family, allow_cpu=True)
        hf = model[0].model
        if not keep_packed_forwards:
            assert remove_patches(hf) == 2  # on a CPU the packed forwards are all enable patches in
        assert sum(is_patched(m) for m in hf.modules()) == (2 if keep_packed_forwards else 0)
        trainer = PackedTrainer(model, [anchors, positives], batch_size=4, learning_rate=5e-3, steps=4)
        records = []
        torch.manual_seed(4)
        trainer.fit(on_steps=records.extend)
        assert (len(class_calls) == 0) == keep_packed_forwards
        runs.append(([r[1] for r in records], {n: p.detach() for n, p in model.named_parameters() if "lora_" in n}))
    (losses, weights), (expected_losses, expected_weights) = runs
    assert len(losses) == 4
    assert losses == pytest.approx(expected_losses, rel=1e-5)
    for n, w in weights.items():
        torch.testing.assert_close(w, expected_weights[n], rtol=1e-5, atol=1e-6, msg=n)
