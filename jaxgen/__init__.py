"""jaxgen: reasoning-then-image generation (Janus-Pro, SFT, GRPO) in JAX."""

__version__ = "0.1.0"


def load(path, **kwargs):
    """Load a Hugging Face Janus directory or a jaxgen checkpoint; see `jaxgen.api.load`."""
    from jaxgen.api import load as _load
    return _load(path, **kwargs)
