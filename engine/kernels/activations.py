"""GELU, GeGLU and SwiGLU in one pass over the tokens, forward and backward (Triton), and a patch
that routes Hugging Face MLPs through them.

Unfused, `act(gate) * up` is an activation kernel writing act(gate), a multiply reading it back,
and backward three more elementwise kernels; autograd also keeps act(gate) alive until backward.
Here forward reads gate (and up) once and writes the output; backward reads them again with the
output gradient, recomputes the activation and writes both gradients. Nothing but the inputs is
saved.

Layout: x, gate, up (..., n), leading dims flattened to rows; the last dim must be contiguous,
rows may be strided (the two halves of a fused `Wi(x).chunk(2, -1)` projection are read in place).
    gelu(x, "none")          = x * Phi(x)                                       (erf form)
    gelu(x, "tanh")          = 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))
    geglu(gate, up, approx)  = gelu(gate, approx) * up      (e.g. Gemma3MLP)
    swiglu(gate, up)         = silu(gate) * up               (e.g. Qwen3MLP)
Math in fp32; outputs and gradients come back in the input dtype (gate and up of different
dtypes are first promoted, as `act(gate) * up` would be). fp16, bf16 and fp32 run the kernels;
other dtypes, and devices Triton does not run on, the references. No host syncs: an op can be
captured in a CUDA graph.

`gelu_reference` / `geglu_reference` / `swiglu_reference` are plain PyTorch and define the
meaning; `gelu` / `geglu` / `swiglu` run Triton on CUDA (or under TRITON_INTERPRET=1) and the
references elsewhere. `patch_activations` swaps the forward of the MLPs a family row lists (its `mlps`).
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F

from .norm import _upcast
from .patching import class_path, install
from .runtime import log_once, triton_runs_on, why_not

try:
    import triton
    import triton.language as tl
except ImportError:  # the references serve
    triton = None

logger = logging.getLogger(__name__)

# What each activation name computes in torch; the kernel's `_activation` computes the same.
_TORCH_ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_tanh": functools.partial(F.gelu, approximate="tanh"),
    "silu": F.silu,
}
_GELU_BY_APPROXIMATE = {"none": "gelu", "tanh": "gelu_tanh"}
_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _reference(x, up, activation: str):
    out = _TORCH_ACTIVATIONS[activation](_upcast(x))
    if up is not None:
        out = out * _upcast(up)
    return out.to(x.dtype)


def _gelu_activation(approximate: str) -> str:
    if approximate not in _GELU_BY_APPROXIMATE:
        raise ValueError(f"approximate must be 'none' or 'tanh' (as in torch.nn.functional.gelu), got {approximate!r}")
    return _GELU_BY_APPROXIMATE[approximate]


def gelu_reference(x, approximate: str = "none"):
    """Plain PyTorch: F.gelu in fp32 (fp64 stays fp64), rounded to x.dtype."""
    return _reference(x, None, _gelu_activation(approximate))


def geglu_reference(gate, up, approximate: str = "none"):
    """Plain PyTorch: gelu(gate) * up in fp32 (fp64 stays fp64), rounded once to gate.dtype."""
    return _reference(gate, up, _gelu_activation(approximate))


def swiglu_reference(gate, up):
    """Plain PyTorch: silu(gate) * up in fp32 (fp64 stays fp64), rounded once to gate.dtype."""
    return _reference(gate, up, "silu")


if triton is not None:

    @triton.jit
    def _activation(x, ACTIVATION: tl.constexpr):
        """(act(x), act'(x)) for fp32 x; the unused one costs nothing once compiled."""
        if ACTIVATION == "gelu":
            cdf = 0.5 * (1.0 + tl.erf(x * 0.7071067811865476))  # Phi(x); 0.707... = 1 / sqrt(2)
            value = x * cdf
            slope = cdf + x * tl.exp(-0.5 * x * x) * 0.3989422804014327  # 1 / sqrt(2 pi)
        elif ACTIVATION == "gelu_tanh":
            # 0.5 * (1 + tanh(u)) = sigmoid(2u): no tanh, and no cancellation near 0
            s = tl.sigmoid(1.5957691216057308 * (x + 0.044715 * x * x * x))  # 1.59... = 2 sqrt(2/pi)
            value = x * s
            slope = s + x * s * (1.0 - s) * 1.5957691216057308 * (1.0 + 0.134145 * x * x)
        else:  # silu
            s = tl.sigmoid(x)
            value = x * s
            slope = s * (1.0 + x * (1.0 - s))
        return value, slope

    @triton.jit
    def _activation_fwd_kernel(X, UP, OUT, n_cols, x_row_stride, up_row_stride,
                               ACTIVATION: tl.constexpr, GATED: tl.constexpr, BLOCK: tl.constexpr):
        """Columns [pid1 * BLOCK, ...) of row pid0. OUT is contiguous."""
        row = tl.program_id(0).to(tl.int64)  # int64, so row * stride cannot overflow
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < n_cols
        out, _ = _activation(tl.load(X + row * x_row_stride + cols, mask=mask, other=0.0).to(tl.float32), ACTIVATION)
        if GATED:
            out *= tl.load(UP + row * up_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(OUT + row * n_cols + cols, out.to(OUT.dtype.element_ty), mask=mask)

    @triton.jit
    def _activation_bwd_kernel(DOUT, X, UP, DX, DUP, n_cols, x_row_stride, up_row_stride,
                               ACTIVATION: tl.constexpr, GATED: tl.constexpr, BLOCK: tl.constexpr):
        """dx = dout * [up] * act'(x), dup = dout * act(x). DOUT, DX, DUP are contiguous."""
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < n_cols
        offs = row * n_cols + cols
        dout = tl.load(DOUT + offs, mask=mask, other=0.0).to(tl.float32)
        value, slope = _activation(tl.load(X + row * x_row_stride + cols, mask=mask, other=0.0).to(tl.float32),
                                   ACTIVATION)
        if GATED:
            tl.store(DUP + offs, (dout * value).to(DUP.dtype.element_ty), mask=mask)
            dout *= tl.load(UP + row * up_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(DX + offs, (dout * slope).to(DX.dtype.element_ty), mask=mask)


def _launch(kernel, rows: int, n_cols: int, *args, **constexprs) -> None:
    """Grid (rows, column blocks). A row up to 2048 wide is one program; wider rows are split into
    blocks of 1024 (H100, bf16, forward + backward: 1152 columns ran 11-14% faster as one block of
    2048 than as 1024 + 128; 3072 columns 9% faster as three blocks of 1024 than as one of 4096).
    8 elements per thread: 16-byte loads in bf16."""
    block = triton.next_power_of_2(n_cols)
    block = block if block <= 2048 else 1024
    kernel[(rows, triton.cdiv(n_cols, block))](*args, BLOCK=block, num_warps=max(1, block // 256), **constexprs)


def _as_rows(t: torch.Tensor) -> torch.Tensor:
    """(..., n) -> (rows, n) with a contiguous last dim: a view wherever one exists."""
    rows = t.reshape(-1, t.shape[-1])
    return rows if rows.stride(-1) == 1 else rows.contiguous()


class ActivationFunction(torch.autograd.Function):
    """(x, up or None, activation) -> activation(x) * up, or activation(x) alone; activation is
    "gelu", "gelu_tanh" or "silu". x and up (..., n) of one shape and dtype; the output is
    contiguous, in that dtype. Saves only x and up."""

    @staticmethod
    def forward(ctx, x, up, activation: str):
        n_cols = x.shape[-1]
        x2 = _as_rows(x)
        up2 = None if up is None else _as_rows(up)
        out = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
        other = x2 if up2 is None else up2
        _launch(_activation_fwd_kernel, x2.shape[0], n_cols, x2, other, out, n_cols, x2.stride(0), other.stride(0),
                ACTIVATION=activation, GATED=up is not None)
        ctx.save_for_backward(x2, up2)
        ctx.activation = activation
        return out.view(x.shape)

    @staticmethod
    def backward(ctx, grad_out):
        x2, up2 = ctx.saved_tensors
        n_cols = x2.shape[1]
        dout = grad_out.reshape(x2.shape).contiguous()
        dx = torch.empty(x2.shape, dtype=x2.dtype, device=x2.device)
        dup = None if up2 is None else torch.empty_like(dx)
        other = x2 if up2 is None else up2
        _launch(_activation_bwd_kernel, x2.shape[0], n_cols, dout, x2, other, dx, dx if dup is None else dup, n_cols,
                x2.stride(0), other.stride(0), ACTIVATION=ctx.activation, GATED=up2 is not None)
        return dx.view(grad_out.shape), None if dup is None else dup.view(grad_out.shape), None


def _triton_runs_on(t: torch.Tensor) -> bool:
    if t.dtype in _KERNEL_DTYPES and triton_runs_on(t):
        return True
    if triton is not None and t.dtype not in _KERNEL_DTYPES:
        why = f"the activation kernels take fp16, bf16 or fp32, not {t.dtype}"
    else:
        why = why_not(t)
    log_once(logger, f"{why}; gelu / geglu / swiglu use the PyTorch reference")
    return False


def _activate(x, up, activation: str):
    """activation(x) * up (up None: activation(x)) through the kernel where it runs."""
    if up is not None:
        if up.shape != x.shape:
            raise ValueError(f"gate and up must have one shape, got {tuple(x.shape)} and {tuple(up.shape)}")
        dtype = torch.promote_types(x.dtype, up.dtype)
        x, up = x.to(dtype), up.to(dtype)
    if not _triton_runs_on(x):
        return _reference(x, up, activation)
    return ActivationFunction.apply(x, up, activation)


def gelu(x, approximate: str = "none"):
    """GELU of x (..., n): approximate "none" is the erf form, "tanh" the tanh approximation."""
    return _activate(x, None, _gelu_activation(approximate))


def geglu(gate, up, approximate: str = "none"):
    """gelu(gate, approximate) * up; gate and up (..., n) of one shape."""
    return _activate(gate, up, _gelu_activation(approximate))


def swiglu(gate, up):
    """silu(gate) * up; gate and up (..., n) of one shape."""
    return _activate(gate, up, "silu")


# The patch. Each forward below is one MLP layout of transformers 5.17 (a family row's `MlpSite.layout`)
# with its `act(...)` (and the multiply after it) replaced by one `_activate` of the kernel activation.

@functools.cache
def _mlp_forward(layout: str, activation: str):
    if layout == "dense":
        def forward(self, hidden_states):
            """act(dense(x)), e.g. BertIntermediate."""
            return _activate(self.dense(hidden_states), None, activation)
    elif layout == "fused_gate_up":
        def forward(self, hidden_states):
            """Wo(drop(act(input) * gate)), input and gate the halves of Wi(x), e.g. ModernBertMLP."""
            input, gate = self.Wi(hidden_states).chunk(2, dim=-1)
            return self.Wo(self.drop(_activate(input, gate, activation)))
    elif layout == "gate_up_down":
        def forward(self, x):
            """down_proj(act(gate_proj(x)) * up_proj(x)), e.g. Qwen3MLP."""
            return self.down_proj(_activate(self.gate_proj(x), self.up_proj(x), activation))
    else:
        raise ValueError(f"unknown MLP layout {layout!r}; engine.families.MlpSite lists the known ones")
    return forward


# transformers' activation names (ACT2FN) whose function a kernel activation computes exactly;
# gelu_new and the *_python ones are the same functions written out in torch ops.
_KERNEL_ACTIVATION = {
    "gelu": "gelu", "gelu_python": "gelu",
    "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu_python_tanh": "gelu_tanh",
    "silu": "silu", "swish": "silu",
}


def _kernel_activation(name, act_module) -> str | None:
    """The kernel activation for config activation `name`, if the module calls what ACT2FN builds
    for that name (not something put in its place since)."""
    from transformers.activations import ACT2CLS

    if not isinstance(name, str) or name not in _KERNEL_ACTIVATION:
        return None
    cls = ACT2CLS[name]
    cls = cls[0] if isinstance(cls, tuple) else cls
    return _KERNEL_ACTIVATION[name] if type(act_module) is cls else None


def _modules_with_config(module: torch.nn.Module, config=None):
    """(module, the config of it or of its nearest ancestor that has one) for the whole tree."""
    from transformers import PretrainedConfig

    own = getattr(module, "config", None)
    config = own if isinstance(own, PretrainedConfig) else config
    yield module, config
    for child in module.children():
        yield from _modules_with_config(child, config)


def patch_activations(hf_model: torch.nn.Module, sites, gated_only: bool = False) -> int:
    """Route the MLP activations of a Hugging Face model through gelu / geglu / swiglu.

    Patches each module whose class is one of `sites` (a family row's `mlps`) and whose configured
    activation (the site's config attribute) a kernel computes exactly: "gelu" (erf),
    "gelu_pytorch_tanh" / "gelu_new" (tanh), "silu" / "swish", and the *_python spellings of the
    gelus. Others are left alone. Only the instance's `forward` is replaced (engine.kernels.patching),
    so state dicts and PEFT wrappers on the linear layers (which the new forward calls as before) are
    untouched. Returns how many modules are covered; patching twice is harmless. `gated_only` leaves
    the plain GELU intermediates (layout "dense") alone: on an H100 one GELU kernel is no faster
    than PyTorch's, where the gated ones save a pass (BENCHMARKS.md).
    """
    by_class = {site.cls: site for site in sites if not (gated_only and site.layout == "dense")}
    covered = 0
    for module, config in _modules_with_config(hf_model):
        site = by_class.get(class_path(module))
        if site is None or config is None:
            continue
        activation = _kernel_activation(getattr(config, site.activation_config, None),
                                        getattr(module, site.activation_module, None))
        if activation is not None:
            covered += install(module, _mlp_forward(site.layout, activation))
    return covered
