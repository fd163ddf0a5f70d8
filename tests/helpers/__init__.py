"""What the tests share that is not a fixture: small models, tokenizers and checks they import
(`from tests.helpers import rl_hosts`), and the scripts they start as processes
(`script_command("grpo_mesh_script", ...)`: `python -m tests.helpers.grpo_mesh_script`, run from
the repository root so that the script imports these helpers the same way).

Importing this package imports no JAX: a script sets XLA_FLAGS before its first `import jax`.
"""

import pathlib
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def script_command(name: str, *args) -> list[str]:
    """The command line that runs the helper script `name` with `args`; start it with
    `cwd=REPO_ROOT`."""
    return [sys.executable, "-m", f"{__name__}.{name}", *map(str, args)]
