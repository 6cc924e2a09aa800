"""Session-wide test setup."""

import os
import sys


def pytest_collection_finish(session):
    """tests/test_triton_kernels.py sets TRITON_INTERPRET=1 at import, so that Triton's interpreter serves its
    kernels on a CPU; the rest of the suite must not inherit it (engine.kernels.runtime would run the kernels,
    interpreted, wherever a user's CPU runs the PyTorch references). The Triton modules' own fixture sets it
    again while their tests run."""
    module = sys.modules.get("test_triton_kernels")
    if module is not None and module.SET_FOR_THESE_TESTS:
        os.environ.pop("TRITON_INTERPRET", None)
