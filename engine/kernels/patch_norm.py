"""`patch_rms_norms`: Qwen3's and Gemma3's RMSNorm modules run the Triton RMSNorm of engine.kernels.norm.

transformers 5.17 writes the two norms differently, and each row of `RMS_NORMS` says how:

    Qwen3RMSNorm  (eps in .variance_epsilon): weight * (x.float() * rsqrt(mean(x^2) + eps)).to(x.dtype)
    Gemma3RMSNorm (eps in .eps):              (x.float() * rsqrt(mean(x^2) + eps) * (1 + weight.float())).type_as(x)

`add_rms_norm(x, None, weight, eps, offset)` computes normed * (offset + weight) in fp32 and
rounds once to x's dtype. For Gemma3 that is the same computation. For Qwen3 it is the same
formula with one rounding where transformers has two, and the same output dtype only while weight
and x share a dtype: a float32 weight under autocast gets a bf16 x and gives a float32 product, so
such calls keep transformers' forward (logged once). So do calls where Triton does not run (CPU
without TRITON_INTERPRET=1), so a patched model's outputs do not change there.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

from . import norm
from .patching import install_forward
from .runtime import log_once, triton_runs_on, why_not

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RmsNormRow:
    module: str  # transformers modeling module defining the class
    name: str  # the RMSNorm class
    eps: str  # attribute holding its epsilon
    offset: float  # the scale is (offset + weight)
    output_in_weight_dtype: bool  # weight * normed.to(x.dtype): the product promotes to weight's dtype


RMS_NORMS = (
    RmsNormRow("transformers.models.qwen3.modeling_qwen3", "Qwen3RMSNorm", eps="variance_epsilon", offset=0.0,
               output_in_weight_dtype=True),
    RmsNormRow("transformers.models.gemma3.modeling_gemma3", "Gemma3RMSNorm", eps="eps", offset=1.0,
               output_in_weight_dtype=False),
)
_ROW_OF = {(row.module, row.name): row for row in RMS_NORMS}


def _kernel_applies(row: RmsNormRow, module, x) -> bool:
    if not triton_runs_on(x):
        log_once(logger, f"{why_not(x)}; {row.name} runs transformers' forward")
        return False
    if row.output_in_weight_dtype and module.weight.dtype != x.dtype:
        log_once(logger, f"{row.name} with a {module.weight.dtype} weight and {x.dtype} input (autocast) returns "
                  f"{module.weight.dtype}; those calls run transformers' forward")
        return False
    return True


def _rms_norm_in_layout(x, weight, eps: float, offset: float):
    """add_rms_norm over x's rows taken in x's own memory order, so a transposed view (Gemma3 norms
    q and k as (batch, heads, tokens, head_dim) views of (batch, tokens, heads, head_dim)) is read
    in place and the output laid out like it, as transformers' elementwise code lays it out."""
    order = sorted(range(x.dim() - 1), key=lambda d: -x.stride(d)) + [x.dim() - 1]
    if not x.permute(order).is_contiguous():
        order = list(range(x.dim()))
    normed = norm.add_rms_norm(x.permute(order), None, weight, eps, offset)[0]
    return normed.permute([order.index(d) for d in range(x.dim())])


@functools.cache
def _patched_forward(row: RmsNormRow):
    def forward(self, x):
        if not _kernel_applies(row, self, x):
            return type(self).forward(self, x)
        return _rms_norm_in_layout(x, self.weight, getattr(self, row.eps), row.offset)

    return forward


def patch_rms_norms(hf_model) -> int:
    """Give every Qwen3RMSNorm and Gemma3RMSNorm inside `hf_model` (PEFT wrappers included) a forward
    that runs `add_rms_norm`; returns how many modules are covered. Per instance: the classes, and
    other models in the process, keep transformers' forward. Patching twice is harmless; a module
    whose forward someone else has already replaced is left alone and not counted."""
    covered = 0
    for module in hf_model.modules():
        row = _ROW_OF.get((type(module).__module__, type(module).__name__))
        if row is None:
            continue
        patched = _patched_forward(row)
        covered += install_forward(module, patched)
    return covered
