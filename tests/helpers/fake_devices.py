"""Split this process's CPU into N JAX devices, for the scripts the multi-device tests start.
Imports no JAX: call `use_cpu_devices` before the first `import jax`."""
import os

from jaxgen.cpu_devices import xla_flags_with_devices  # imports no jax


def use_cpu_devices(n: int) -> None:
    """Make JAX, once imported, run on `n` CPU devices (XLA_FLAGS keeps its other flags)."""
    os.environ["XLA_FLAGS"] = xla_flags_with_devices(n)
    os.environ["JAX_PLATFORMS"] = "cpu"
