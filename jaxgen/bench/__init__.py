"""Benchmarks behind `jaxgen bench ...`: each prints jaxgen and its reference side by side."""

from jaxgen.errors import UserError


def require_torch():
    """The PyTorch module, or a clear error: the side-by-side benchmarks run `transformers` on
    PyTorch, which only the test requirements install."""
    try:
        import torch
    except ImportError:
        raise UserError("this benchmark compares against PyTorch, which is not installed; run "
                        "`pip install -r requirements-test.txt` (pins a CPU torch build)") from None
    return torch
