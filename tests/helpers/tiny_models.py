"""The tiny random unified model the tests build: `configs/janus.py:tiny` with random weights."""
import jax

from jaxgen.config import load_config
from jaxgen.models import janus


def tiny_janus(seed: int = 0):
    """(JanusConfig, params) of `janus:tiny`, initialised from PRNGKey(seed)."""
    config = janus.config_from_configdict(load_config("janus:tiny"))
    return config, jax.jit(janus.init_params, static_argnums=0)(config, jax.random.PRNGKey(seed))
