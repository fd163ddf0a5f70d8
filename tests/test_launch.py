"""Launching: which devices each process of a SLURM job drives (simulated 2-node x 8-GPU
environments, resolved by jax's own cluster detection), the JAX_* path, a plain host, and the
launch scripts' dry runs and quoting (with fake gcloud / sbatch / srun on PATH)."""

from __future__ import annotations

import json
import os
import pathlib
import shlex
import subprocess
import sys
from unittest import mock

import pytest

from jaxgen.errors import UserError
from jaxgen.launch import distributed_kwargs, maybe_initialize_distributed, slurm_tasks_on_node

ROOT = pathlib.Path(__file__).resolve().parent.parent
NODES, GPUS = 2, 8
JOB = ["jaxgen", "train", "sft", "--config", "configs/sft.py:shapes",
       '--config.name=a "quoted" value', "--config.note=it's $HOME; `x` & y"]


def _slurm_envs(nodes, tasks_per_node, gpus_per_node, bound=False, job_id=4242):
    """(node, env) of every process of one srun step, as SLURM sets them: all GPUs of the node
    visible to every task, or (bound, --gpus-per-task) each task seeing only its own."""
    per_task = gpus_per_node // tasks_per_node
    for node in range(nodes):
        for local in range(tasks_per_node):
            gpus = (range(local * per_task, (local + 1) * per_task) if bound
                    else range(gpus_per_node))
            yield node, {
                "JAXGEN_DISTRIBUTED": "1", "SLURM_JOB_ID": str(job_id),
                "SLURM_STEP_NODELIST": f"gpu[{17:03d}-{17 + nodes - 1:03d}]",
                "SLURM_NTASKS": str(nodes * tasks_per_node),
                "SLURM_PROCID": str(node * tasks_per_node + local), "SLURM_LOCALID": str(local),
                "SLURM_NODEID": str(node), "SLURM_STEP_NUM_NODES": str(nodes),
                "SLURM_STEP_TASKS_PER_NODE": f"{tasks_per_node}(x{nodes})",
                "SLURM_GPUS_ON_NODE": str(gpus_per_node),
                "CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus)),
            }


def _jax_resolves(env, kwargs):
    """What jax 0.10.2's jax.distributed.initialize would use, given our kwargs, in `env`:
    (coordinator, num_processes, process_id, local_device_ids) from its cluster detection."""
    from jax._src import clusters

    with mock.patch.dict(os.environ, env, clear=True):
        return clusters.ClusterEnv.auto_detect_unset_distributed_params(
            kwargs.get("coordinator_address"), kwargs.get("num_processes"),
            kwargs.get("process_id"), kwargs.get("local_device_ids"),
            kwargs.get("cluster_detection_method"), 300)


def _devices_used(layout, ours=True):
    """For every simulated process: its node, the physical GPUs it drives, and jax's resolution."""
    out = []
    for node, env in _slurm_envs(NODES, *layout):
        kwargs = distributed_kwargs(env) if ours else {}
        coord, n, pid, ids = _jax_resolves(env, kwargs)
        visible = env["CUDA_VISIBLE_DEVICES"].split(",")
        assert all(0 <= i < len(visible) for i in ids), f"ordinal out of range: {ids} of {visible}"
        out.append((node, [(node, int(visible[i])) for i in ids], coord, n, pid))
    return out


@pytest.mark.parametrize("layout", [(1, GPUS), (GPUS, GPUS), (GPUS, GPUS, True)],
                         ids=["task-per-node", "task-per-gpu", "task-per-gpu-bound"])
def test_slurm_uses_every_gpu_of_every_node_once(layout):
    procs = _devices_used(layout)
    pairs = [p for _, used, *_ in procs for p in used]
    assert len(pairs) == NODES * GPUS and set(pairs) == {
        (node, gpu) for node in range(NODES) for gpu in range(GPUS)}
    tasks = NODES * layout[0]
    assert {n for *_, n, _ in procs} == {tasks}
    assert sorted(pid for *_, pid in procs) == list(range(tasks))
    # One coordinator, on the first node, port from the job id (SlurmCluster.get_coordinator_address).
    assert {coord for _, _, coord, _, _ in procs} == {f"gpu017:{4242 % 4096 + 65535 - 4095}"}


def test_jax_default_alone_drives_one_gpu_per_node():
    """The bug this module fixes: one task per node, jax 0.10.2 picks local_device_ids=[LOCALID]."""
    procs = _devices_used((1, GPUS), ours=False)
    assert [used for _, used, *_ in procs] == [[(0, 0)], [(1, 0)]]


def test_slurm_layouts_that_cannot_be_split():
    env = next(_slurm_envs(1, 3, GPUS))[1]
    with pytest.raises(UserError, match="3 SLURM tasks on node 0 cannot split its 8 GPUs"):
        distributed_kwargs(env)
    env = {k: v for k, v in env.items() if k not in ("SLURM_STEP_TASKS_PER_NODE",
                                                     "SLURM_STEP_NUM_NODES")}
    with pytest.raises(UserError, match="JAX_LOCAL_DEVICE_IDS"):
        distributed_kwargs(env)
    assert distributed_kwargs({**env, "JAX_LOCAL_DEVICE_IDS": "2,3"})["local_device_ids"] == [2, 3]


def test_slurm_without_gpus_leaves_jax_default():
    env = next(_slurm_envs(2, 4, GPUS))[1]
    env.pop("SLURM_GPUS_ON_NODE")
    assert distributed_kwargs({**env, "CUDA_VISIBLE_DEVICES": ""}) == {
        "cluster_detection_method": "slurm"}


@pytest.mark.parametrize("layout, node, expected", [
    ("8(x2)", "1", 8), ("2(x3),1", "3", 1), ("2(x3),1", "2", 2), ("4,4", "0", 4)])
def test_tasks_per_node(layout, node, expected):
    assert slurm_tasks_on_node({"SLURM_STEP_TASKS_PER_NODE": layout, "SLURM_NODEID": node}) == expected


def test_jax_env_path():
    env = {"JAXGEN_DISTRIBUTED": "1", "JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234",
           "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
    expected = dict(coordinator_address="10.0.0.1:1234", num_processes=4, process_id=3)
    assert distributed_kwargs(env) == expected
    # Explicit variables win over a SLURM environment.
    assert distributed_kwargs({**next(_slurm_envs(2, 1, GPUS))[1], **env}) == expected
    with pytest.raises(UserError, match="JAX_PROCESS_ID is not"):
        distributed_kwargs({k: v for k, v in env.items() if k != "JAX_PROCESS_ID"})
    with pytest.raises(UserError, match="JAX_NUM_PROCESSES='four' is not an integer"):
        distributed_kwargs({**env, "JAX_NUM_PROCESSES": "four"})
    # A TPU pod: nothing to pass, jax detects it.
    assert distributed_kwargs({"JAXGEN_DISTRIBUTED": "1"}) == {}


def test_initialize_is_called_with_the_kwargs(monkeypatch):
    import jax

    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    env = next(_slurm_envs(2, 1, GPUS))[1]
    assert maybe_initialize_distributed(env) == calls[0] == {
        "cluster_detection_method": "slurm", "local_device_ids": list(range(GPUS))}


def test_plain_host_initialises_nothing(monkeypatch, capsys):
    import jax

    from jaxgen.cli import _maybe_initialize_distributed

    def fail(**kw):
        raise AssertionError("jax.distributed.initialize called on a single host")

    monkeypatch.setattr(jax.distributed, "initialize", fail)
    for env in ({}, {"JAXGEN_DISTRIBUTED": "0"}, {"JAX_COORDINATOR_ADDRESS": "h:1"},
                next(_slurm_envs(2, 1, GPUS))[1] | {"JAXGEN_DISTRIBUTED": ""}):
        assert distributed_kwargs(env) is None and maybe_initialize_distributed(env) is None
    monkeypatch.delenv("JAXGEN_DISTRIBUTED", raising=False)
    _maybe_initialize_distributed()  # the CLI's own call, on this (plain) host
    # A half-set JAX_* environment is one clear line and exit code 2, no traceback.
    monkeypatch.setenv("JAXGEN_DISTRIBUTED", "1")
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "h:1")
    monkeypatch.delenv("JAX_NUM_PROCESSES", raising=False)
    monkeypatch.delenv("JAX_PROCESS_ID", raising=False)
    with pytest.raises(SystemExit) as e:
        _maybe_initialize_distributed()
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("jaxgen: error: JAX_COORDINATOR_ADDRESS is set")


# ---- the launch scripts ----------------------------------------------------------------------

def _fake_bin(tmp_path, names, body='echo "$0 $*" >> "$FAKE_CALLS"; exit 97'):
    """A directory of stand-in commands, put first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in names:
        (bin_dir / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return bin_dir


def _script(args, tmp_path, bin_dir, **env):
    full_env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
                "FAKE_CALLS": str(tmp_path / "calls"), **env}
    return subprocess.run(["bash", *args], cwd=ROOT, env=full_env, capture_output=True,
                          text=True, timeout=120)


def _commands(stdout):
    return [shlex.split(line) for line in stdout.splitlines() if line and not line.startswith("#")]


def _job_argv(tokens):
    """The job's words in a worker/task command: after JAXGEN_DISTRIBUTED=1, before 2>&1."""
    start = tokens.index("JAXGEN_DISTRIBUTED=1") + 1
    return tokens[start:tokens.index("2>&1", start)]


def test_tpu_pod_dry_run(tmp_path):
    bin_dir = _fake_bin(tmp_path, ["gcloud", "ssh", "scp"])
    out = _script(["launch/tpu_pod.sh", "--dry-run", "--tpu", "my-pod", "--zone", "us-east5-a",
                   "--project", "proj", "--logdir", "logs/run1", "--venv", "/opt/my venv",
                   "--env", "LIBTPU_INIT_ARGS=--xla_tpu_a=1 --xla_tpu_b=2",
                   "--fetch-logs", str(tmp_path / "got"), "--", *JOB], tmp_path, bin_dir)
    assert out.returncode == 0, out.stderr
    assert not (tmp_path / "calls").exists() and not (tmp_path / "got").exists()  # ran nothing
    cmds = _commands(out.stdout)
    gcloud = [c for c in cmds if c[0] == "gcloud"]
    assert [c[4] for c in gcloud] == ["scp", "ssh", "ssh", "scp"]
    for c in gcloud:
        assert c[:4] == ["gcloud", "compute", "tpus", "tpu-vm"]
        assert {"--worker=all", "--zone=us-east5-a", "--project=proj"} <= set(c)
    upload, setup, job, fetch = gcloud
    assert upload[5].endswith(".tar.gz") and upload[6] == "my-pod:jaxgen-src.tar.gz"
    assert any("git ls-files" in " ".join(c) for c in cmds)  # the tarball's contents
    scripts = []
    for c in (setup, job):
        assert c[5] == "my-pod"
        (command,) = [a for a in c if a.startswith("--command=")]
        bash, dash_c, script = shlex.split(command[len("--command="):])
        assert (bash, dash_c) == ("bash", "-c")
        scripts.append(shlex.split(script))
    setup_s, job_s = scripts
    assert "tar" in setup_s and "$HOME/jaxgen" in setup_s  # unpacked into the default --repo
    assert "/opt/my venv/bin/pip" in setup_s and "jax[tpu]==0.10.2" in setup_s
    assert job_s[job_s.index("cd") + 1] == "$HOME/jaxgen"
    assert job_s[job_s.index("source") + 1] == "/opt/my venv/bin/activate"
    assert "LIBTPU_INIT_ARGS=--xla_tpu_a=1 --xla_tpu_b=2" in job_s
    assert _job_argv(job_s) == JOB  # every word intact, quotes and spaces included
    assert job_s[job_s.index("tee") + 1] == "logs/run1/worker-$id.log"
    assert fetch[5] == "my-pod:jaxgen/logs/run1/worker-*.log" and fetch[6] == f"{tmp_path}/got/"


FAKE_GCLOUD = r'''
# gcloud compute tpus tpu-vm scp|ssh ... on a fake pod: worker W's home is $FAKE_POD/wW.
echo "gcloud $*" >> "$FAKE_CALLS"
verb=$4; shift 4; rc=0
for w in 0 1; do
  home=$FAKE_POD/w$w
  case $verb in
    scp) src=$1 dst=$2
      if [[ $dst == *:* ]]; then cp "$src" "$home/${dst#*:}"
      else cp $home/${src#*:} "$dst"; fi ;;
    ssh) for a in "$@"; do [[ $a == --command=* ]] && cmd=${a#--command=}; done
      HOME=$home FAKE_WORKER=$w sh -c "$cmd" || rc=$? ;;
  esac
done
exit $rc
'''


def test_tpu_pod_runs_on_a_fake_pod(tmp_path):
    """Not a dry run: gcloud, curl (the worker number) and the venv are stand-ins; the scripts,
    quoting, tar, unpacking, logs and log fetching are the real ones."""
    bin_dir = _fake_bin(tmp_path, ["gcloud"], FAKE_GCLOUD)
    _fake_bin(tmp_path, ["curl"], 'echo "$FAKE_WORKER"')
    pod = tmp_path / "pod"
    for w in (0, 1):
        venv_bin = pod / f"w{w}" / "jaxgen-venv" / "bin"
        venv_bin.mkdir(parents=True)
        (venv_bin / "activate").write_text('PATH="$HOME/jaxgen-venv/bin:$PATH"\n')
        (venv_bin / "jaxgen").write_text(
            f"#!{sys.executable}\nimport json, os, sys\n"
            "print(json.dumps([os.environ.get('JAXGEN_DISTRIBUTED'), os.environ.get('MY_VAR'),"
            " os.getcwd(), sys.argv[1:]]))\nsys.exit(3 if 'fail' in sys.argv else 0)\n")
        (venv_bin / "jaxgen").chmod(0o755)
    got = tmp_path / "got"
    args = ["launch/tpu_pod.sh", "--tpu", "pod", "--zone", "z", "--logdir", "logs/r",
            "--env", "MY_VAR=a b", "--fetch-logs", str(got), "--"]
    out = _script([*args, *JOB], tmp_path, bin_dir, FAKE_POD=str(pod))
    assert out.returncode == 0, out.stdout + out.stderr
    for w in (0, 1):
        repo = pod / f"w{w}" / "jaxgen"
        assert (repo / "launch" / "tpu_pod.sh").exists() and (repo / "jaxgen" / "launch.py").exists()
        assert not (pod / f"w{w}" / "jaxgen-src.tar.gz").exists()
        line = (repo / "logs" / "r" / f"worker-{w}.log").read_text().strip()
        assert json.loads(line) == ["1", "a b", str(repo), JOB[1:]]
        assert (got / f"worker-{w}.log").read_text().strip() == line
    # A failing job fails the launch, and its logs are still fetched.
    out = _script([*args[:-1], "--no-sync", "--", "jaxgen", "fail"], tmp_path, bin_dir,
                  FAKE_POD=str(pod))
    assert out.returncode != 0 and "fail" in (got / "worker-1.log").read_text()


@pytest.mark.parametrize("per_gpu", [False, True])
def test_gpu_slurm_dry_run(tmp_path, per_gpu):
    bin_dir = _fake_bin(tmp_path, ["sbatch", "srun"])
    out = _script(["launch/gpu_slurm.sh", "--dry-run", "--nodes", str(NODES), "--venv",
                   "/shared/venv", "--logdir", "/shared/logs", "--partition", "gpu",
                   *(["--per-gpu"] if per_gpu else []), "--", *JOB], tmp_path, bin_dir)
    assert out.returncode == 0, out.stderr
    assert not (tmp_path / "calls").exists()
    cmds = _commands(out.stdout)
    (sbatch,) = [c for c in cmds if "sbatch" in c]
    (srun,) = [c for c in cmds if c[0] == "srun"]
    assert ["source", "/shared/venv/bin/activate"] in cmds
    assert "JAXGEN_VENV=/shared/venv" in sbatch and "JAXGEN_LOGDIR=/shared/logs" in sbatch
    script = next(i for i, a in enumerate(sbatch) if a.endswith("launch/gpu_slurm.sbatch"))
    assert sbatch[script + 1:] == JOB
    tasks = GPUS if per_gpu else 1
    assert {f"--nodes={NODES}", f"--ntasks-per-node={tasks}", f"--gpus-per-node={GPUS}",
            "--partition=gpu", "--output=/shared/logs/%j-batch.log"} <= set(sbatch)
    assert srun[srun.index("jaxgen"):] == JOB
    opts = dict(a[2:].split("=", 1) for a in srun[1:srun.index("jaxgen")])
    assert opts["nodes"] == str(NODES) and opts["gpus-per-node"] == str(GPUS)
    assert opts["ntasks-per-node"] == str(tasks) and opts["kill-on-bad-exit"] == "1"
    assert opts["output"] == "/shared/logs/%j-task%t-%N.log"
    assert opts["export"] == "ALL,JAXGEN_DISTRIBUTED=1"
    # That task layout, run through the device discovery: all 16 GPUs, each once.
    procs = _devices_used((int(opts["ntasks-per-node"]), int(opts["gpus-per-node"])))
    assert sorted(p for _, used, *_ in procs for p in used) == [
        (n, g) for n in range(NODES) for g in range(GPUS)]


def test_gpu_slurm_batch_script_runs_srun(tmp_path):
    """The batch script itself (as sbatch would run it), srun a stand-in that records its argv."""
    bin_dir = _fake_bin(tmp_path, ["srun"], f'exec {sys.executable} -c "import json, sys; '
                        f'print(json.dumps(sys.argv[1:]))" "$@"')
    out = _script(["launch/gpu_slurm.sbatch", *JOB], tmp_path, bin_dir,
                  JAXGEN_LOGDIR=str(tmp_path / "logs"), SLURM_NTASKS_PER_NODE="8",
                  SLURM_GPUS_PER_NODE="h100:8", SLURM_JOB_NUM_NODES="2", SLURM_CPUS_ON_NODE="96")
    assert out.returncode == 0, out.stderr
    argv = json.loads(out.stdout)
    assert argv[argv.index("jaxgen"):] == JOB
    assert {"--ntasks-per-node=8", "--gpus-per-node=8", "--nodes=2",
            "--cpus-per-task=12"} <= set(argv)
    assert (tmp_path / "logs").is_dir()
    bad = _script(["launch/gpu_slurm.sbatch", "train sft --config x"], tmp_path, bin_dir)
    assert bad.returncode == 2 and "separate words" in bad.stderr
