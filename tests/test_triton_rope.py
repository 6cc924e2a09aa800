"""engine.kernels.rope (apply_rope, patch_rope) and engine.kernels.patch_norm (patch_rms_norms): the
RoPE kernel against its reference, and tiny Qwen3 / ModernBERT / Gemma3 models patched at the sites
of their engine.families rows against unpatched ones.

As in tests/test_triton_kernels.py (whose helpers and fixtures these are): without CUDA the
kernels run in Triton's interpreter, uninitialized memory is NaN, and forward and every gradient
are compared by ‖out − ref‖ / ‖ref‖ against a float64 reference on the same rounded inputs.
tests/gpu/test_rope_gpu.py repeats the checks at real sizes and captures them in CUDA graphs.
"""

from __future__ import annotations

import copy

import pytest
import torch

# First: it sets TRITON_INTERPRET on a machine without CUDA (before engine.kernels decorates its kernels)
# and skips the module where triton is missing.
from test_triton_kernels import (
    check,
    device,
    generator,
    interpreter_fixes,
    nan_filled_empty_memory,
    rel_error,
)
from tiny_models import CONFIGS, VOCAB

from engine.families import family_by_name, family_of_model
from engine.kernels import norm, rope
from engine.kernels import patch_norm

poisoned_memory = pytest.fixture(autouse=True)(nan_filled_empty_memory)
pytestmark = pytest.mark.usefixtures(interpreter_fixes.__name__)
DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# name -> (batch, q_heads, k_heads, tokens, head_dim, layout, angles)
#   layout "tokens": q, k transposed views of (batch, tokens, heads, head_dim) projections (Qwen3, Gemma3)
#          "qkv":    q, k unbound from one (batch, tokens, 3, heads, head_dim) projection (ModernBERT)
#          "heads":  contiguous (batch, heads, tokens, head_dim)
#   angles "rotary": positions 0.. per row; "packed": batch 1, positions restarting per sequence;
#          "random": cos and sin independent noise, halves unequal, batch 1 broadcast
CASES = {
    "gqa": (2, 4, 2, 37, 64, "tokens", "rotary"),  # three token blocks a row
    "packed-gqa": (1, 6, 2, 40, 32, "tokens", "packed"),
    "modernbert-qkv": (2, 3, 3, 11, 24, "qkv", "rotary"),
    "odd-half-broadcast": (3, 2, 1, 5, 10, "heads", "random"),
    "two-head-blocks": (1, 40, 8, 3, 128, "tokens", "random"),
}


def angles(gen, kind, batch, tokens, head_dim, dtype):
    """(cos, sin) as transformers' rotary embeddings make them: fp32 math, cast to the model dtype."""
    if kind == "random":
        return [torch.randn(1, tokens, head_dim, generator=gen).to(device(), dtype) for _ in range(2)]
    if kind == "packed":
        cuts = sorted(torch.randperm(tokens - 1, generator=gen)[:3].add(1).tolist())
        positions = torch.cat([torch.arange(b - a) for a, b in zip([0] + cuts, cuts + [tokens])])[None]
    else:
        positions = torch.arange(tokens).expand(batch, tokens)
    inv_freq = 1.0 / 10000 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    freqs = positions[..., None].float() * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1).to(device())
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rope_inputs(gen, dtype, case):
    """Leaves (ours, float64 twins) and the q, k views of each that the attention layer would pass."""
    batch, q_heads, k_heads, tokens, head_dim, layout, _ = case
    if layout == "qkv":
        shapes = [(batch, tokens, 3, q_heads, head_dim)]
    elif layout == "tokens":
        shapes = [(batch, tokens, q_heads, head_dim), (batch, tokens, k_heads, head_dim)]
    else:
        shapes = [(batch, q_heads, tokens, head_dim), (batch, k_heads, tokens, head_dim)]
    values = [torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype) for shape in shapes]
    ours = [v.to(device(), copy=True).requires_grad_() for v in values]
    refs = [v.to(device(), torch.float64, copy=True).requires_grad_() for v in values]

    def views(leaves):
        if layout == "qkv":
            q, k, _ = leaves[0].unbind(dim=2)
            return q.transpose(1, 2), k.transpose(1, 2)
        return tuple(t.transpose(1, 2) for t in leaves) if layout == "tokens" else tuple(leaves)

    return ours, refs, views(ours), views(refs)


def check_rope(dtype, case):
    """`case` a value of CASES."""
    gen = generator(dtype, case)
    ours, refs, (q, k), (ref_q, ref_k) = rope_inputs(gen, dtype, case)
    batch, _, _, tokens, head_dim, _, kind = case
    cos, sin = angles(gen, kind, batch, tokens, head_dim, dtype)
    outs = rope.apply_rope(q, k, cos, sin)
    expected = rope.apply_rope_reference(ref_q, ref_k, cos.double(), sin.double())
    assert all(o.grad_fn is not None and type(o.grad_fn).__name__ == "RopeFunctionBackward" for o in outs)
    check(outs, expected, ours, refs, dtype, gen)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(CASES))
def test_rope_matches_reference(dtype, case):
    check_rope(dtype, CASES[case])


def test_rope_keeps_only_cos_and_sin_and_lays_out_outputs_like_inputs():
    gen = generator("saved")
    _, _, (q, k), _ = rope_inputs(gen, torch.float32, CASES["gqa"])
    cos, sin = angles(gen, "rotary", 2, 37, 64, torch.float32)
    q_embed, k_embed = rope.apply_rope(q, k, cos, sin)
    assert [t.data_ptr() for t in q_embed.grad_fn.saved_tensors] == [cos.data_ptr(), sin.data_ptr()]
    assert (q_embed.stride(), k_embed.stride()) == (q.stride(), k.stride())  # transposing back is free


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ["gqa", "packed-gqa", "modernbert-qkv"])
def test_rope_takes_q_and_k_tokens_first(dtype, case):
    """unsqueeze_dim=2, as transformers names it: q and k (batch, tokens, heads, head_dim), the layout the packed
    attention forwards keep, rotated in place of those views (no copy in) into outputs laid out like them."""
    gen = generator(dtype, case, "tokens first")
    ours, refs, heads_first, ref_heads_first = rope_inputs(gen, dtype, CASES[case])
    (q, k), (ref_q, ref_k) = ([t.transpose(1, 2) for t in pair] for pair in (heads_first, ref_heads_first))
    batch, _, _, tokens, head_dim, _, kind = CASES[case]
    cos, sin = angles(gen, kind, batch, tokens, head_dim, dtype)
    outs = rope.apply_rope(q, k, cos, sin, unsqueeze_dim=2)
    expected = rope.apply_rope_reference(ref_q, ref_k, cos.double(), sin.double(), unsqueeze_dim=2)
    assert all(type(o.grad_fn).__name__ == "TransposeBackward0" for o in outs)  # of the kernel's outputs
    assert [o.is_contiguous() for o in outs] == [True, True]
    check(outs, expected, ours, refs, dtype, gen)


def test_rope_rejects_mismatched_shapes():
    q, k = torch.randn(1, 4, 8, 16), torch.randn(1, 2, 8, 16)
    with pytest.raises(ValueError, match=r"got q \(1, 4, 8, 16\), k \(1, 2, 8, 16\), cos \(1, 8, 8\)"):
        rope.apply_rope(q, k, torch.randn(1, 8, 8), torch.randn(1, 8, 8))


# transformers' apply_rotary_pos_emb in each patched family, and the dtype combinations they see:
# (q and k, cos and sin); bf16 q with fp32 cos is Gemma3 under autocast with fp32 weights
ROTARY_FAMILIES = ["qwen3", "modernbert", "gemma3"]
DTYPE_PAIRS = [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16), (torch.bfloat16, torch.float32),
               (torch.float32, torch.bfloat16)]


@pytest.mark.parametrize("family", ROTARY_FAMILIES)
@pytest.mark.parametrize("qk_dtype,angle_dtype", DTYPE_PAIRS)
def test_drop_in_returns_what_transformers_returns(family, qk_dtype, angle_dtype):
    import importlib

    (site,) = family_by_name(family).rope
    original = importlib.import_module(site.cls.rpartition(".")[0]).apply_rotary_pos_emb
    drop_in = rope._kernel_in_place_of(original, site.upcasts)
    gen = generator(family, qk_dtype, angle_dtype)
    _, _, (q, k), _ = rope_inputs(gen, qk_dtype, CASES["packed-gqa"])
    cos, sin = angles(gen, "packed", 1, 40, 32, angle_dtype)
    expected = original(q, k, cos, sin)
    outs = drop_in(q, k, cos, sin)
    for out, ref in zip(outs, expected):
        assert out.dtype == ref.dtype and out.stride() == ref.stride()
        assert type(out.grad_fn).__name__ == "RopeFunctionBackward"
        # transformers rounds q * cos, rotate_half(q) * sin and their sum in bf16; the kernel once
        assert rel_error(out, ref) < (1e-6 if ref.dtype == torch.float32 else 5e-3)


# ---- patched tiny models ----------------------------------------------------------------------

def patch_rope(model) -> int:
    """engine.kernels.rope.patch_rope at the RoPE sites of the model's family row."""
    return rope.patch_rope(model, family_of_model(model).rope)


def patch_rms_norms(model) -> int:
    """engine.kernels.patch_norm.patch_rms_norms at the RMSNorm sites of the model's family row."""
    return patch_norm.patch_rms_norms(model, family_of_model(model).rms_norms)


# family -> (attention layers, RMSNorm modules: per layer input/post-attention (+ Gemma3's two
# feed-forward norms) and q/k norms, plus the final norm)
PATCHED = {"qwen3": (2, 2 * 4 + 1), "modernbert": (3, 0), "gemma3": (2, 2 * 6 + 1)}


def tiny_model(family: str):
    """A tiny random `family` model whose parameters, norm weights included, are off their init."""
    import transformers

    config_class, values = CONFIGS[family]
    config = getattr(transformers, config_class)(vocab_size=VOCAB, **values)
    torch.manual_seed(0)
    model = transformers.AutoModel.from_config(config, attn_implementation="eager").eval()
    gen = generator("params", family)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen), alpha=0.1)
    return model


def model_inputs(family):
    """A padded batch (two rows, the second shorter) and a packed one (batch 1, positions restarting)."""
    gen = generator("inputs", family)
    padded = dict(input_ids=torch.randint(1000, 2000, (2, 12), generator=gen),
                  attention_mask=torch.tensor([[1] * 12, [1] * 7 + [0] * 5]))
    packed = dict(input_ids=torch.randint(1000, 2000, (1, 20), generator=gen),
                  position_ids=torch.cat([torch.arange(12), torch.arange(8)])[None])
    return [padded, packed]


def outputs_and_gradients(model, inputs):
    """last_hidden_state, and each parameter's gradient after backward of a fixed random weighting."""
    model.zero_grad(set_to_none=True)
    out = model(**inputs).last_hidden_state
    weights = torch.randn(out.shape, generator=generator("weights", tuple(out.shape))).to(out.device)
    (out * weights).sum().backward()
    return out.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.fixture
def kernel_calls(monkeypatch):
    """How often each Triton-backed autograd function ran (RopeFunction, AddNormFunction)."""
    calls = {"rope": 0, "norm": 0}
    for key, function in (("rope", rope.RopeFunction), ("norm", norm.AddNormFunction)):
        def counted(*args, _apply=function.apply, _key=key):
            calls[_key] += 1
            return _apply(*args)

        monkeypatch.setattr(function, "apply", counted)
    return calls


def check_patched_model(family, dtype, kernel_calls):
    """Outputs and parameter gradients of the patched model against the unpatched one: in fp32
    within 1e-5 / 1e-4; in bf16 (CUDA) no further from a float32 twin than twice the unpatched
    model's distance, since transformers' own bf16 arithmetic (more roundings) differs more. (Not
    a float64 twin: eager attention's float32 softmax turns float64's mask value into -inf, and
    padding rows that a sliding window leaves without keys into NaN. Not bf16 on a CPU: triton
    3.6's interpreter truncates to bf16 where a GPU rounds, doubling the kernels' error.)"""
    model = tiny_model(family).to(device(), dtype)
    patched = copy.deepcopy(model)
    layers, norms = PATCHED[family]
    assert patch_rope(patched) == layers
    assert patch_rms_norms(patched) == norms
    assert (patch_rope(patched), patch_rms_norms(patched)) == (layers, norms)  # idempotent
    precise = copy.deepcopy(model).float() if dtype != torch.float32 else None

    def assert_close(what, ours, theirs, precise_value, tolerance):
        if precise is None:
            assert rel_error(ours, theirs) < tolerance, what
        else:
            assert rel_error(ours, precise_value) < 2 * rel_error(theirs, precise_value) + 1e-3, what

    for inputs in model_inputs(family):
        inputs = {name: t.to(device()) for name, t in inputs.items()}
        expected_out, expected_grads = outputs_and_gradients(model, inputs)
        precise_out, precise_grads = outputs_and_gradients(precise, inputs) if precise is not None else (None, {})
        assert kernel_calls == {"rope": 0, "norm": 0}  # the unpatched twins run transformers' code
        out, grads = outputs_and_gradients(patched, inputs)
        assert kernel_calls == {"rope": layers, "norm": norms}
        kernel_calls.update(rope=0, norm=0)
        assert_close("last_hidden_state", out, expected_out, precise_out, 1e-5)
        assert grads.keys() == expected_grads.keys()
        for name, grad in grads.items():
            assert_close(name, grad, expected_grads[name], precise_grads.get(name), 1e-4)


@pytest.mark.parametrize("family", ROTARY_FAMILIES)
def test_patched_model_matches_unpatched(family, kernel_calls):
    check_patched_model(family, torch.float32, kernel_calls)


def test_patched_gemma3_under_autocast_matches_unpatched(kernel_calls):
    """fp32 weights, bf16 autocast: q/k bf16 with fp32 cos/sin, so RoPE returns fp32 as transformers does."""
    model = tiny_model("gemma3")
    patched = copy.deepcopy(model)
    patch_rope(patched)
    patch_rms_norms(patched)
    inputs = model_inputs("gemma3")[1]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected_out, expected_grads = outputs_and_gradients(model, inputs)
        out, grads = outputs_and_gradients(patched, inputs)
    assert kernel_calls == {"rope": 2, "norm": 13}
    assert rel_error(out, expected_out) < 2e-2
    for name, grad in grads.items():
        assert rel_error(grad, expected_grads[name]) < 5e-2, name


def test_patch_changes_neither_other_models_nor_cpu_runs(monkeypatch, kernel_calls):
    """Another model of the same family keeps transformers' code; without Triton (a CPU, no
    interpreter) a patched model gives exactly its unpatched outputs."""
    from transformers.models.qwen3 import modeling_qwen3

    original = modeling_qwen3.apply_rotary_pos_emb
    model, other = tiny_model("qwen3"), tiny_model("qwen3")
    patched = copy.deepcopy(model)
    patch_rope(patched)
    patch_rms_norms(patched)
    assert modeling_qwen3.apply_rotary_pos_emb is original
    inputs = model_inputs("qwen3")[0]
    outputs_and_gradients(other, inputs)
    assert kernel_calls == {"rope": 0, "norm": 0}

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    expected_out, expected_grads = outputs_and_gradients(model, inputs)
    out, grads = outputs_and_gradients(patched, inputs)
    assert kernel_calls == {"rope": 0, "norm": 0}
    assert torch.equal(out, expected_out)
    assert all(torch.equal(grad, expected_grads[name]) for name, grad in grads.items())


def test_patched_norm_keeps_a_transposed_layout():
    """Gemma3 norms q and k after transposing them; the output stays a view the attention can
    transpose back for free, as transformers' own forward leaves it."""
    model = tiny_model("gemma3")
    q_norm = model.layers[0].self_attn.q_norm
    x = torch.randn(1, 10, 4, 16, generator=generator("layout")).transpose(1, 2)
    expected = q_norm(x)
    assert patch_rms_norms(model) == PATCHED["gemma3"][1]
    out = q_norm(x)
    assert out.stride() == expected.stride() == x.stride()
    assert rel_error(out, expected) < 1e-6


def test_patched_model_compiles_once(monkeypatch):
    """torch.compile traces the patched forwards and guards their globals without recompiling
    (eager backend, transformers' functions: Triton kernels off on a CPU)."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    model = tiny_model("qwen3")
    patch_rope(model)
    patch_rms_norms(model)
    inputs = model_inputs("qwen3")[1]
    expected = model(**inputs).last_hidden_state
    torch._dynamo.reset()
    try:
        with torch._dynamo.config.patch(error_on_recompile=True):
            compiled = torch.compile(model, backend="eager", fullgraph=True)
            for _ in range(2):
                assert torch.equal(compiled(**inputs).last_hidden_state, expected)
    finally:
        torch._dynamo.reset()


def test_patch_skips_models_and_modules_it_does_not_cover():
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64))
    assert (patch_rope(bert), patch_rms_norms(bert)) == (0, 0)
    model = tiny_model("qwen3")
    model.layers[0].self_attn.forward = lambda *args, **kwargs: None  # someone else's patch
    assert patch_rope(model) == 1


def test_patch_reaches_modules_under_peft_lora(kernel_calls):
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(tiny_model("qwen3"), peft.LoraConfig(
        r=4, target_modules=["q_proj", "k_proj", "v_proj"], init_lora_weights=False))
    inputs = model_inputs("qwen3")[1]
    expected_out, expected_grads = outputs_and_gradients(model, inputs)
    assert (patch_rope(model), patch_rms_norms(model)) == PATCHED["qwen3"]
    out, grads = outputs_and_gradients(model, inputs)
    assert kernel_calls == {"rope": 2, "norm": 9}
    assert rel_error(out, expected_out) < 1e-5
    for name, grad in grads.items():
        assert rel_error(grad, expected_grads[name]) < 1e-4, name


@pytest.mark.parametrize("family", ROTARY_FAMILIES)
def test_kernel_goes_inside_the_packed_attention_forward(family, kernel_calls):
    """Where the packed path has put its own forward on the attention modules (engine.attention.packed_forward:
    q and k tokens first), patch_rope puts the kernel inside that forward, once however often it is called, and
    the packed model's outputs and gradients do not change."""
    from engine.attention import ATTN_IMPLEMENTATION, register
    from engine.attention.packed_forward import patch_packed_attention
    from engine.kernels.patching import installed, remove_patches

    layers = PATCHED[family][0]
    model = tiny_model(family)
    register()
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    assert patch_packed_attention(model, family_by_name(family).packed_attention) == layers
    patched = copy.deepcopy(model)
    cu = torch.tensor([0, 12, 20], dtype=torch.int32)
    inputs = dict(model_inputs(family)[1], cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=12, max_length_k=12,
                  **family_by_name(family).forward_kwargs)
    expected_out, expected_grads = outputs_and_gradients(model, inputs)
    assert patch_rope(patched) == layers
    forwards = [installed(m) for m in patched.modules() if installed(m) is not None]
    assert patch_rope(patched) == layers and [installed(m) for m in patched.modules() if installed(m)] == forwards
    out, grads = outputs_and_gradients(patched, inputs)
    assert kernel_calls["rope"] == layers
    assert rel_error(out, expected_out) < 1e-5
    for name, grad in grads.items():
        assert rel_error(grad, expected_grads[name]) < 1e-4, name
    assert remove_patches(patched) == layers  # the kernel took the packed forward's place, one forward a module


@pytest.mark.parametrize("family, expected", [
    ("qwen3", "Triton RoPE in 2, RMSNorm in 9, gated activation in 2 layers"),
    ("gemma3", "Triton RoPE in 2, RMSNorm in 13, gated activation in 2 layers"),
    ("modernbert", "Triton RoPE in 3, gated activation in 3 layers"),
    ("bert", None),
])
def test_patch_layers_says_what_the_loop_gets_and_changes_no_output(family, expected):
    """What the packed loop patches in on a GPU (engine.kernels.patch_layers): the RoPE, RMSNorm and
    gated-activation kernels, never BERT's lone GELU (no faster than PyTorch's on an H100)."""
    from engine.kernels import patch_layers

    model = tiny_model(family).to(device())
    patched = copy.deepcopy(model)
    assert patch_layers(patched, family_by_name(family)) == expected
    inputs = {name: t.to(device()) for name, t in model_inputs(family)[1].items()}
    with torch.no_grad():
        assert rel_error(patched(**inputs).last_hidden_state, model(**inputs).last_hidden_state) < 1e-5
