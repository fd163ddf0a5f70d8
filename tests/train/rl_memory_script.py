"""Per-device XLA temporaries of the GRPO and Flow-GRPO jits (tiny models, 32 rows; GRPO
rewarded by the policy judging its own images yes / no) on a mesh of 1 and of N fake CPU
devices (one process); prints them as JSON.

Usage: python rl_memory_script.py N WORKDIR   (sets XLA_FLAGS before importing jax)
"""
import json
import os
import sys

n = int(sys.argv[1])
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n}"
os.environ["JAX_PLATFORMS"] = "cpu"
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "rewards"))
sys.path.insert(0, os.path.join(HERE, "..", ".."))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from tiny_tokenizer import make_tokenizer  # noqa: E402
from jaxgen import parallel  # noqa: E402
from jaxgen.config import load_config  # noqa: E402
from jaxgen.models import flow, janus  # noqa: E402
from jaxgen.rewards import register_reward, vlm_judge  # noqa: E402
from jaxgen.sampling import sampler  # noqa: E402
from jaxgen.train import flow_grpo, flow_matching, grpo  # noqa: E402
from xla_memory import temporaries_mib  # noqa: E402


@register_reward("dark_image")
def _dark_image(context):
    return lambda b: 1.0 - np.asarray(b.images, np.float32).mean(axis=(1, 2, 3)) / 255.0


def main():
    workdir = sys.argv[2]
    jc = janus.config_from_configdict(load_config("janus:tiny").model)
    params = jax.jit(janus.init_params, static_argnums=0)(jc, jax.random.PRNGKey(0))
    grpo_config = load_config("grpo:tiny", [
        "--config.grpo.loss.beta=0.05", "--config.grpo.prompts_per_step=8",
        "--config.sampling.max_think_tokens=8"])
    grpo_config.rewards = {"name": "vlm_yes_no",
                           "kwargs": {"judge": "policy", "max_text_tokens": 48}}
    fc = flow.FlowConfig.from_dict(load_config("flow:tiny").flow)
    fp = flow.init_flow_params(fc, jc, jax.random.PRNGKey(1))
    policy = flow_matching.save_flow_checkpoint(os.path.join(workdir, "policy"), params, jc,
                                                make_tokenizer(), fp, fc)
    flow_config = load_config("flow_grpo:tiny", [
        f"--config.policy={policy}", "--config.grpo.beta=0.04",
        "--config.grpo.prompts_per_step=8", "--config.sampling.max_think_tokens=8"])
    flow_config.rewards = {"name": "dark_image"}
    out = {}
    for devices in (1, n):
        mesh = parallel.make_mesh({"fsdp": devices}, devices=jax.devices()[:devices])
        r = grpo.GRPORunner(grpo_config, policy=(params, jc, make_tokenizer()), mesh=mesh)
        g = temporaries_mib([(r, "_update"), (r, "_score"), (sampler, "_sample_jit"),
                                (vlm_judge, "yes_no_logit_from_codes")],
                            lambda: r.iteration(0))
        f = flow_grpo.FlowGRPORunner(flow_config, mesh=mesh)
        fl = temporaries_mib([(f, "_update"), (f, "_rollout")], lambda: f.iteration(0))
        out[str(devices)] = {"rows": r.rows, "grpo": g, "flow_grpo": fl}
    print(json.dumps(out))


main()
