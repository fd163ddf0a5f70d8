"""How a multi-host run finds its peers: the `jax.distributed.initialize` arguments, decided from
the environment that a launcher in launch/ sets up.

`distributed_kwargs(env)` is a pure function of an environment mapping (tested under simulated
SLURM environments); `maybe_initialize_distributed()` applies it to `os.environ`. Nothing is
initialised unless JAXGEN_DISTRIBUTED=1. Then, in this order:

- JAX_COORDINATOR_ADDRESS set: JAX_NUM_PROCESSES and JAX_PROCESS_ID give the rest
  (launch/local_multiprocess.sh, or any machines without a cluster manager).
- Inside a SLURM step (the variables jax's `SlurmCluster.is_env_present` reads): jax finds the
  coordinator (first node of SLURM_STEP_NODELIST), the process count (SLURM_NTASKS) and id
  (SLURM_PROCID); this module chooses the GPUs of each process, because jax 0.10.2 otherwise gives
  every process the single GPU numbered SLURM_LOCALID (`ClusterEnv.auto_detect_unset_distributed_
  params`), which leaves 7 of 8 GPUs idle with one task per node. See `slurm_local_device_ids`.
- Anything else (Cloud TPU pod slices): `jax.distributed.initialize()` detects it by itself.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from jaxgen.errors import UserError

# The variables jax's SlurmCluster.is_env_present() requires (jax/_src/clusters/slurm_cluster.py).
SLURM_STEP_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
                   "SLURM_LOCALID")


def distributed_kwargs(env: Mapping[str, str]) -> dict | None:
    """The keyword arguments for `jax.distributed.initialize`, or None for a single-host run."""
    if env.get("JAXGEN_DISTRIBUTED") != "1":
        return None
    if "JAX_COORDINATOR_ADDRESS" in env:
        missing = [v for v in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if v not in env]
        if missing:
            raise UserError(f"JAX_COORDINATOR_ADDRESS is set but {' and '.join(missing)} "
                            "is not: set all three on every host (JAX_PROCESS_ID from 0)")
        return dict(coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
                    num_processes=_int(env, "JAX_NUM_PROCESSES"),
                    process_id=_int(env, "JAX_PROCESS_ID"))
    if all(v in env for v in SLURM_STEP_VARS):
        kwargs = dict(cluster_detection_method="slurm")
        ids = slurm_local_device_ids(env)
        if ids is not None:
            kwargs["local_device_ids"] = ids
        return kwargs
    return {}


def slurm_local_device_ids(env: Mapping[str, str]) -> list[int] | None:
    """The GPU ordinals (as this process numbers them) this SLURM task should use.

    JAX_LOCAL_DEVICE_IDS, when set, is taken as given. Otherwise the task sees `visible` GPUs
    (CUDA_VISIBLE_DEVICES, else SLURM_GPUS_ON_NODE) of the `on_node` GPUs the step holds on its
    node (SLURM_GPUS_ON_NODE):
    - visible < on_node: SLURM bound this task to its own GPUs (`--gpus-per-task`): use them all;
    - else every task of the node sees all of them: the node's k tasks split them evenly, task
      SLURM_LOCALID taking block number SLURM_LOCALID (k = 1: all GPUs; k = GPUs: one each).
    None (jax's default) when the task has no GPUs or the environment does not say how many.
    """
    if env.get("JAX_LOCAL_DEVICE_IDS"):
        return [int(x) for x in env["JAX_LOCAL_DEVICE_IDS"].split(",")]
    visible = _visible_gpus(env)
    if not visible:
        return None
    on_node = _int(env, "SLURM_GPUS_ON_NODE") if env.get("SLURM_GPUS_ON_NODE") else visible
    if visible < on_node:
        return list(range(visible))
    tasks = slurm_tasks_on_node(env)
    if tasks is None:
        raise UserError("cannot tell how many SLURM tasks share this node (no "
                        "SLURM_STEP_TASKS_PER_NODE): set JAX_LOCAL_DEVICE_IDS to the GPUs of each "
                        "task, or launch with launch/gpu_slurm.sh")
    if visible % tasks:
        raise UserError(f"{tasks} SLURM tasks on node {env.get('SLURM_NODEID', '?')} cannot split "
                        f"its {visible} GPUs evenly: use --ntasks-per-node=1 or one task per GPU")
    per_task = visible // tasks
    local = _int(env, "SLURM_LOCALID")
    return list(range(local * per_task, (local + 1) * per_task))


def slurm_tasks_on_node(env: Mapping[str, str]) -> int | None:
    """Tasks of this step on this node: SLURM_STEP_TASKS_PER_NODE (e.g. '8(x2)' or '2,1') at
    SLURM_NODEID, else SLURM_NTASKS over the step's node count when it divides evenly."""
    layout = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
    if layout and "SLURM_NODEID" in env:
        counts = []
        for part in layout.split(","):
            m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
            if m is None:
                raise UserError(f"cannot read SLURM tasks per node {layout!r}")
            counts += [int(m.group(1))] * int(m.group(2) or 1)
        node = _int(env, "SLURM_NODEID")
        if node < len(counts):
            return counts[node]
    nodes = env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_JOB_NUM_NODES")
    if nodes and _int(env, "SLURM_NTASKS") % int(nodes) == 0:
        return _int(env, "SLURM_NTASKS") // int(nodes)
    return None


def maybe_initialize_distributed(env: Mapping[str, str] | None = None) -> dict | None:
    """Call `jax.distributed.initialize` with `distributed_kwargs(env)` (default os.environ) when
    JAXGEN_DISTRIBUTED=1; returns the kwargs used, or None when nothing was initialised."""
    kwargs = distributed_kwargs(os.environ if env is None else env)
    if kwargs is None:
        return None
    import jax

    try:
        jax.distributed.initialize(**kwargs)
    except ValueError as e:  # jax found no cluster: coordinator/process count/id undefined
        raise UserError(f"JAXGEN_DISTRIBUTED=1 but {e} Outside a TPU pod or a SLURM step, set "
                        "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID") from e
    return kwargs


def _visible_gpus(env: Mapping[str, str]) -> int | None:
    cvd = env.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None:
        ids = [x for x in cvd.split(",") if x.strip()]
        return 0 if ids == ["NoDevFiles"] else len(ids)
    return _int(env, "SLURM_GPUS_ON_NODE") if env.get("SLURM_GPUS_ON_NODE") else None


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise UserError(f"{name}={env[name]!r} is not an integer") from None
