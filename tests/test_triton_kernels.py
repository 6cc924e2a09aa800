"""The Triton kernels (engine.kernels.norm, .pooling, .contrastive) against their PyTorch references.

On a machine without CUDA the kernels run in Triton's interpreter (TRITON_INTERPRET=1, set
here), so shapes stay small; tests/gpu/test_triton_gpu.py repeats this at real sizes. Every check draws fresh random inputs, runs with uninitialized memory filled with NaN
(torch's deterministic mode) so an element a kernel forgets to write shows, and compares forward
and every gradient by ‖out − ref‖ / ‖ref‖ against a float64 reference on the same rounded inputs.

Interpreter limits (triton 3.6): a bf16 `tl.dot` returns garbage, so the contrastive kernel is
checked here in fp32 and fp16 (bf16 on the GPU only); two more gaps are patched by
`interpreter_fixes` below.
"""

from __future__ import annotations

import os
import zlib

import torch

# Set here, at import, and unset again once collection is over (tests/conftest.py): only the Triton test
# modules' own tests run with it (interpreter_fixes sets it for them), so every other CPU test, and the workers
# they start, runs what a user's CPU runs: the PyTorch references.
SET_FOR_THESE_TESTS = not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"
if SET_FOR_THESE_TESTS:
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

pytest.importorskip("triton")

from engine.kernels import contrastive, norm, pooling  # noqa: E402

TOLERANCE = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 2e-2}
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def rel_error(out, ref):
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def nan_filled_empty_memory():
    """torch.empty and friends return NaN-filled memory while deterministic mode is on."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.use_deterministic_algorithms(False)


poisoned_memory = pytest.fixture(autouse=True)(nan_filled_empty_memory)


@pytest.fixture(autouse=True, scope="module")
def interpreter_fixes():
    """TRITON_INTERPRET=1 while these tests run (see SET_FOR_THESE_TESTS), and two gaps of triton 3.6's
    interpreter, patched for these tests only.

    - TRITON_INTERPRET is read when a function is decorated, and torch._dynamo imports triton
      (so tl.sum, tl.zeros and friends are decorated) before this module can set it in a full
      test run; the same holds for our kernels if another module imported them first. Such
      compiled-mode functions are re-wrapped as interpreted ones.
    - Under numpy >= 2.4 a loop over a run-time bound calls int() on a 1-element array
      (triton-lang/triton#9171): squeeze it first, as the upstream fix does.
    """
    if not INTERPRETED:
        yield
        return
    import sys

    from triton.runtime import interpreter
    from triton.runtime.jit import JITFunction

    def patch_index(tensor, scope):
        original_patch_lang_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    original_patch_lang_tensor = interpreter._patch_lang_tensor
    patches = [(interpreter, "_patch_lang_tensor", patch_index)]
    wrapped = {}
    for name, module in list(sys.modules.items()):
        if module is not None and name.startswith(("triton.language", "engine.kernels.")):
            for attr, value in vars(module).items():
                if isinstance(value, JITFunction):
                    wrapped.setdefault(value, interpreter.InterpretedFunction(value.fn))
                    patches.append((module, attr, wrapped[value]))
    originals = [(owner, attr, getattr(owner, attr)) for owner, attr, _ in patches]
    for owner, attr, value in patches:
        setattr(owner, attr, value)
    os.environ["TRITON_INTERPRET"] = "1"  # engine.kernels.runtime reads it at each call
    yield
    if SET_FOR_THESE_TESTS:
        os.environ.pop("TRITON_INTERPRET", None)
    for owner, attr, value in originals:
        setattr(owner, attr, value)


def device():
    return "cuda" if torch.cuda.is_available() else "cpu"


def generator(*case):
    """A generator seeded from the test case, so a failure reproduces."""
    return torch.Generator().manual_seed(zlib.crc32(repr(case).encode()))


def leaves(gen, dtype, *shapes):
    """Random tensors rounded to `dtype`: (those, the same values in float64), all leaves on device()."""
    values = [torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype) for shape in shapes]
    ours = [v.to(device(), copy=True).requires_grad_() for v in values]
    ref = [v.to(device(), torch.float64, copy=True).requires_grad_() for v in values]
    return ours, ref


def unit_rows(gen, rows, dim):
    """Random L2-normalized float64 embeddings on the CPU."""
    return torch.nn.functional.normalize(torch.randn(rows, dim, generator=gen, dtype=torch.float64), dim=-1)


def check(outs, refs, ours_in, ref_in, dtype, grads_from):
    """Forward outputs and the gradient of every input, after backward of sum(out * random)."""
    for out, ref in zip(outs, refs):
        assert out.dtype == dtype and torch.isfinite(out).all()
        assert rel_error(out, ref) < TOLERANCE[dtype]
    weights = [torch.randn(ref.shape, generator=grads_from, dtype=torch.float64).to(device()) for ref in refs]
    sum(((o.double() * w).sum() for o, w in zip(outs, weights))).backward()
    sum(((r * w).sum() for r, w in zip(refs, weights))).backward()
    for mine, ref in zip(ours_in, ref_in):
        assert mine.grad.dtype == mine.dtype and torch.isfinite(mine.grad).all()
        assert rel_error(mine.grad, ref.grad) < TOLERANCE[dtype]


def check_add_norm(dtype, shape, kind, residual):
    gen = generator(dtype, shape, kind, residual)
    (x, r, w, b), (rx, rr, rw, rb) = leaves(gen, dtype, shape, shape, shape[-1:], shape[-1:])
    used = [(x, rx), (w, rw)] + ([(r, rr)] if residual else []) + ([(b, rb)] if kind == "layer" else [])
    if not residual:
        r = rr = None
    if kind.startswith("layer"):
        if kind == "layer-no-bias":
            b = rb = None
        outs = norm.add_layer_norm(x, r, w, b, 1e-5)
        refs = norm.add_layer_norm_reference(rx, rr, rw, rb, 1e-5)
    else:
        offset = 1.0 if kind == "rms-gemma" else 0.0
        outs = norm.add_rms_norm(x, r, w, 1e-6, offset)
        refs = norm.add_rms_norm_reference(rx, rr, rw, 1e-6, offset)
    check(outs, refs, *zip(*used), dtype, gen)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(3, 5, 48), (7, 100), (2, 1, 130)])
@pytest.mark.parametrize("kind", ["layer", "layer-no-bias", "rms", "rms-gemma"])
@pytest.mark.parametrize("residual", [True, False])
def test_add_norm_matches_reference(dtype, shape, kind, residual):
    check_add_norm(dtype, shape, kind, residual)


def check_mean_pool(dtype, lengths, hidden, normalize, fillers):
    """`fillers` tokens after the last sequence: ignored forward, zero gradient backward."""
    gen = generator(dtype, lengths, hidden, normalize)
    cu = torch.tensor([0] + lengths).cumsum(0).to(device(), torch.int32)
    (hidden_states,), (ref_hidden,) = leaves(gen, dtype, (sum(lengths) + fillers, hidden))
    out = pooling.mean_pool(hidden_states, cu, normalize=normalize)
    ref = pooling.mean_pool_reference(ref_hidden, cu, normalize=normalize)
    empty = [i for i, n in enumerate(lengths) if n == 0]
    assert (out[empty] == 0).all()  # a zero row, not NaN
    check([out], [ref], [hidden_states], [ref_hidden], dtype, gen)
    assert (hidden_states.grad[-fillers:] == 0).all()
    if normalize:
        kept = [i for i, n in enumerate(lengths) if n]
        assert torch.allclose(out[kept].double().norm(dim=-1), ref.new_ones(len(kept)), atol=1e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("hidden", [48, 100])
@pytest.mark.parametrize("normalize", [True, False])
def test_mean_pool_matches_reference(dtype, hidden, normalize):
    check_mean_pool(dtype, [3, 0, 17, 1, 40, 0, 9], hidden, normalize, fillers=5)


# bf16 only where tl.dot can take it (not the interpreter: see the module docstring)
CONTRASTIVE_DTYPES = [torch.float32, torch.float16] + ([] if INTERPRETED else [torch.bfloat16])


def check_contrastive(dtype, shape, scale):
    n_anchors, n_cands, dim = shape
    gen = generator(dtype, shape, scale)
    raw = [unit_rows(gen, n_anchors, dim), unit_rows(gen, n_cands, dim)]
    # positives lean towards their anchors, not so far that the loss (a difference) nears 0 and
    # fp32 itself loses digits to the cancellation
    raw[1][:n_anchors] = torch.nn.functional.normalize(raw[1][:n_anchors] + 0.2 * raw[0], dim=-1)
    ours = [t.to(device(), dtype).requires_grad_() for t in raw]
    refs = [t.to(device(), dtype).double().requires_grad_() for t in raw]
    loss = contrastive.contrastive_loss(*ours, scale=scale)
    ref = contrastive.contrastive_loss_reference(*refs, scale=scale)
    assert loss.dtype == torch.float32 and loss.ndim == 0
    assert rel_error(loss, ref) < TOLERANCE[dtype]
    loss.backward()
    ref.backward()
    for mine, r in zip(ours, refs):
        assert mine.grad.dtype == dtype and torch.isfinite(mine.grad).all()
        assert rel_error(mine.grad, r.grad) < TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", CONTRASTIVE_DTYPES)
@pytest.mark.parametrize("shape", [(5, 5, 24), (37, 70, 100), (64, 130, 48)])
@pytest.mark.parametrize("scale", [20.0, 1.0])
def test_contrastive_loss_matches_reference(dtype, shape, scale):
    check_contrastive(dtype, shape, scale)


def test_chunked_contrastive_torch_matches_reference():
    gen = generator("chunked")
    raw = [unit_rows(gen, 50, 32), unit_rows(gen, 90, 32)]
    grads = []
    for fn in (contrastive.contrastive_loss_reference,
               lambda a, c, s: contrastive.chunked_contrastive_loss_torch(a, c, s, chunk=16)):
        inputs = [t.clone().requires_grad_() for t in raw]
        loss = fn(*inputs, 20.0)
        loss.backward()
        grads.append([loss] + [t.grad for t in inputs])
    for chunked, ref in zip(grads[1], grads[0]):
        assert rel_error(chunked, ref) < 1e-12
