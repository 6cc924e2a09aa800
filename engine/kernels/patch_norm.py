"""`patch_rms_norms`: RMSNorm modules run the Triton RMSNorm of engine.kernels.norm.

transformers writes its RMSNorms in two ways, and each site (an `RmsNormSite` of engine.families: the
class, its eps attribute, its offset, whether its output takes the weight's dtype) says which:

    weight * (x.float() * rsqrt(mean(x^2) + eps)).to(x.dtype)                   (Qwen3RMSNorm, offset 0)
    (x.float() * rsqrt(mean(x^2) + eps) * (1 + weight.float())).type_as(x)      (Gemma3RMSNorm, offset 1)

`add_rms_norm(x, None, weight, eps, offset)` computes normed * (offset + weight) in fp32 and
rounds once to x's dtype. For the second form that is the same computation. For the first it is the
same formula with one rounding where transformers has two, and the same output dtype only while weight
and x share a dtype: a float32 weight under autocast gets a bf16 x and gives a float32 product, so
such calls keep transformers' forward (logged once). So do calls where Triton does not run (CPU
without TRITON_INTERPRET=1), so a patched model's outputs do not change there.
"""

from __future__ import annotations

import functools
import logging

from . import norm
from .patching import install, modules_at
from .runtime import log_once, triton_runs_on, why_not

logger = logging.getLogger(__name__)


def _kernel_applies(site, module, x) -> bool:
    if not triton_runs_on(x):
        log_once(logger, f"{why_not(x)}; {type(module).__name__} runs transformers' forward")
        return False
    if site.output_in_weight_dtype and module.weight.dtype != x.dtype:
        log_once(logger, f"{type(module).__name__} with a {module.weight.dtype} weight and {x.dtype} input (autocast) returns "
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
def _patched_forward(site):
    def forward(self, x):
        if not _kernel_applies(site, self, x):
            return type(self).forward(self, x)
        return _rms_norm_in_layout(x, self.weight, getattr(self, site.eps), site.offset)

    return forward


def patch_rms_norms(hf_model, sites) -> int:
    """Give every module inside `hf_model` (PEFT wrappers included) whose class is one of `sites` (a
    family row's `rms_norms`) a forward that runs `add_rms_norm`; returns how many modules are covered.
    Per instance (engine.kernels.patching): the classes, and other models in the process, keep
    transformers' forward. Patching twice is harmless; a module whose forward someone else has already
    replaced is left alone and not counted."""
    return sum(install(module, _patched_forward(site)) for module, site in modules_at(hf_model, sites))
