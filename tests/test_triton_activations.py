"""engine.kernels.activations: gelu / geglu / swiglu against their references, and patched tiny
Hugging Face models against unpatched ones.

As in tests/test_triton_kernels.py (whose helpers and fixtures these are): without CUDA the
kernels run in Triton's interpreter, uninitialized memory is NaN, and forward and every gradient
are compared by ‖out − ref‖ / ‖ref‖ against a float64 reference on the same rounded inputs.
tests/gpu/test_activations_gpu.py repeats the op checks at real sizes.
"""

from __future__ import annotations

import pytest
import torch

# First: it sets TRITON_INTERPRET on a machine without CUDA (before engine.kernels decorates its kernels)
# and skips the module where triton is missing.
from test_triton_kernels import (
    check,
    device,
    generator,
    interpreter_fixes,
    leaves,
    nan_filled_empty_memory,
    rel_error,
)
from tiny_models import CONFIGS, VOCAB

from engine.families import family_of_model
from engine.kernels import activations

poisoned_memory = pytest.fixture(autouse=True)(nan_filled_empty_memory)
pytestmark = [
    pytest.mark.usefixtures(interpreter_fixes.__name__),
    # the interpreter's numpy exp overflows to inf in sigmoid's tails, which is the right answer
    pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning"),
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# op name -> (ours, reference, gated)
OPS = {
    "gelu": (activations.gelu, activations.gelu_reference, False),
    "gelu-tanh": (lambda x: activations.gelu(x, "tanh"), lambda x: activations.gelu_reference(x, "tanh"), False),
    "geglu": (activations.geglu, activations.geglu_reference, True),
    "geglu-tanh": (lambda g, u: activations.geglu(g, u, "tanh"),
                   lambda g, u: activations.geglu_reference(g, u, "tanh"), True),
    "swiglu": (activations.swiglu, activations.swiglu_reference, True),
}


def check_activation(op, dtype, shape):
    ours, reference, gated = OPS[op]
    gen = generator(op, dtype, shape)
    inputs, ref_inputs = leaves(gen, dtype, *([shape] * (2 if gated else 1)))
    for t in inputs + ref_inputs:  # spread gate values over the activation's curved part and tails
        t.data.mul_(3.0)
    check([ours(*inputs)], [reference(*ref_inputs)], inputs, ref_inputs, dtype, gen)


def check_chunked(op, dtype, shape):
    """gate and up the two halves of one (..., 2n) tensor, as ModernBERT's Wi(x).chunk(2, -1)."""
    ours, reference, _ = OPS[op]
    gen = generator("chunked", op, dtype, shape)
    (packed,), (ref_packed,) = leaves(gen, dtype, (*shape[:-1], 2 * shape[-1]))
    check([ours(*packed.chunk(2, dim=-1))], [reference(*ref_packed.chunk(2, dim=-1))],
          [packed], [ref_packed], dtype, gen)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 5, 48), (7, 100), (2, 1, 2100)])  # 2100: three column blocks
@pytest.mark.parametrize("op", list(OPS))
def test_activation_matches_reference(op, dtype, shape):
    check_activation(op, dtype, shape)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("op", ["geglu", "swiglu"])
def test_gated_activation_reads_strided_halves_in_place(op, dtype):
    check_chunked(op, dtype, (2, 9, 72))


def test_kernel_runs_and_keeps_only_its_inputs():
    x = torch.randn(4, 32, device=device(), requires_grad=True)
    out = activations.gelu(x)
    assert type(out.grad_fn).__name__ == "ActivationFunctionBackward"
    assert [t.data_ptr() for t in out.grad_fn.saved_tensors if t is not None] == [x.data_ptr()]


def test_empty_input_gives_empty_output_and_gradient():
    x = torch.empty(0, 16, device=device(), requires_grad=True)
    activations.gelu(x).sum().backward()
    assert x.grad.shape == (0, 16)


def test_gated_activation_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"gate and up must have one shape, got \(4, 8\) and \(4, 1\)"):
        activations.swiglu(torch.randn(4, 8), torch.randn(4, 1))


def tiny_model(family: str, **overrides):
    import transformers

    config_class, values = CONFIGS[family]
    config = getattr(transformers, config_class)(vocab_size=VOCAB, **{**values, **overrides})
    torch.manual_seed(0)
    return transformers.AutoModel.from_config(config, attn_implementation="eager").to(device()).eval()


def outputs_and_gradients(model, input_ids):
    """last_hidden_state, and each parameter's gradient after backward of a fixed random weighting."""
    model.zero_grad(set_to_none=True)
    out = model(input_ids=input_ids).last_hidden_state
    weights = torch.randn(out.shape, generator=generator("weights", tuple(out.shape))).to(out.device)
    (out * weights).sum().backward()
    return out.detach(), {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


def assert_same_gradients(grads, expected):
    """Each within 1e-4 of its norm, or of a thousandth of the largest one: some (attention key
    biases) are zero in exact arithmetic and only rounding noise here."""
    assert grads.keys() == expected.keys()
    floor = 1e-3 * max(g.norm() for g in expected.values())
    for name, grad in grads.items():
        assert (grad - expected[name]).norm() < 1e-4 * max(expected[name].norm(), floor), name


def patch_activations(model) -> int:
    """engine.kernels.activations.patch_activations at the MLP sites of the model's family row."""
    return activations.patch_activations(model, family_of_model(model).mlps)


@pytest.fixture
def kernel_calls(monkeypatch):
    """The activation of every call of ActivationFunction's forward."""
    calls = []
    forward = activations.ActivationFunction.forward

    def counted(ctx, x, up, activation):
        calls.append(activation)
        return forward(ctx, x, up, activation)

    monkeypatch.setattr(activations.ActivationFunction, "forward", staticmethod(counted))
    return calls


@pytest.mark.parametrize("family,activation,layers", [
    ("bert", "gelu", 2), ("xlm-roberta", "gelu", 2), ("mpnet", "gelu", 2), ("modernbert", "gelu", 3),
    ("qwen3", "silu", 2), ("gemma3", "gelu_tanh", 2),
])
def test_patched_model_matches_unpatched(family, activation, layers, kernel_calls):
    model = tiny_model(family)
    input_ids = torch.randint(1, 1000, (2, 12), generator=generator(family)).to(device())
    expected_out, expected_grads = outputs_and_gradients(model, input_ids)
    state = {k: v.clone() for k, v in model.state_dict().items()}

    assert patch_activations(model) == layers
    assert patch_activations(model) == layers  # covered already: patched once (one kernel call a layer below)
    out, grads = outputs_and_gradients(model, input_ids)

    assert kernel_calls == [activation] * layers
    assert rel_error(out, expected_out) < 1e-5
    assert_same_gradients(grads, expected_grads)
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_patch_leaves_other_activations_alone():
    assert patch_activations(tiny_model("bert", hidden_act="relu")) == 0
    assert patch_activations(tiny_model("qwen3", hidden_act="gelu_fast")) == 0
    model = tiny_model("bert")
    model.encoder.layer[0].intermediate.intermediate_act_fn = torch.nn.ReLU()  # config still says gelu
    assert patch_activations(model) == 1


def test_patch_reaches_mlps_under_peft_lora(kernel_calls):
    """PEFT's lora.Linear on every MLP projection: called by the patched forward, gradients equal."""
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(tiny_model("qwen3"), peft.LoraConfig(
        r=4, target_modules=["gate_proj", "up_proj", "down_proj"], init_lora_weights=False))
    input_ids = torch.randint(1, 1000, (2, 12), generator=generator("peft")).to(device())
    expected_out, expected_grads = outputs_and_gradients(model, input_ids)
    assert expected_grads and all("lora_" in name for name in expected_grads)

    assert patch_activations(model) == 2
    out, grads = outputs_and_gradients(model, input_ids)
    assert kernel_calls == ["silu", "silu"]
    assert rel_error(out, expected_out) < 1e-5
    assert_same_gradients(grads, expected_grads)
