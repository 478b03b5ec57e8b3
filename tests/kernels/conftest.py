"""Kernel tests run Triton kernels on CPU tensors through Triton's interpreter.

Triton decides interpreter-or-compile when a kernel is defined (@triton.jit), so the variable
must be set before triton is first imported; pytest loads this conftest before the test
modules beside it.
"""

from __future__ import annotations

import os
import sys

# Triton reads the variable when it defines a kernel -- its own standard-library helpers
# (tl.max, tl.sum, ...) included, which happens when triton itself is imported.
if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
    raise RuntimeError(
        "triton was imported before TRITON_INTERPRET=1 was set; set it before that import "
        "(e.g. at the top of tests/conftest.py) so kernel tests can run in the interpreter"
    )
os.environ["TRITON_INTERPRET"] = "1"
