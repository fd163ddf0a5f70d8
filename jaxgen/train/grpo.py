"""GRPO for reasoning-then-image generation, split the Tunix way, on one mesh.

One iteration (each stage a pure function of jaxgen.train.grpo_stages; the jitted ones compile
once per run; settings validated by jaxgen.train.grpo_settings; the loop is
jaxgen.train.loop.run_rl):

  rollout     G completions per prompt with the jitted sampler (reasoning text, then image
              tokens); the sampler's log-probs can serve as the old policy's
  reference   teacher-forced log-probs of the frozen reference model (only when beta > 0)
  rewards     the configured reward tree (jaxgen.rewards) on prompts, reasoning, images
              (optionally a second tree, `grpo.text_rewards`, for the reasoning tokens alone)
  advantages  a registered estimator (jaxgen.train.advantages), dynamic-sampling mask
  update      inner epochs x minibatches of the clipped-ratio loss (jaxgen.train.policy_loss)

With `reflection.max_images = T > 0` (Janus-Pro-R1) the rollout is the self-reflection loop of
jaxgen.train.reflection: T images per row, each judged by the policy itself; the reward tree
scores every image (R_QA), a trajectory's advantage comes from R_Gen and R_Comp, and the loss
covers the images it produced and its yes/no answers.

Policy, reference and reward judge live on the same `jax.sharding.Mesh` with their own
shardings (parameters never travel to the host). Shapes are fixed by the config (prompts are
left-padded to data.max_prompt_tokens, reasoning to sampling.max_think_tokens), so nothing
recompiles between iterations.

The image log-prob convention is `grpo.cfg_mode`: 'conditional'
(T2I-R1), 'cfg' (CFG-combined, Janus-Pro-R1) or 'none' (sample with CFG weight 1, ReasonGen-R1);
`sampling.uncond_hides` says what the unconditional row hides.

Entry point: `train(config, workdir) -> dict` (resumable from workdir; metrics in
workdir/metrics.jsonl; final policy saved as a jaxgen checkpoint in workdir/final).
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import checkpoint as ckpt_lib
from jaxgen import parallel
from jaxgen.convert.load import load_model
from jaxgen.data.tokenizer import load_tokenizer, tokenize_prompts
from jaxgen.errors import UserError
from jaxgen.models import janus
from jaxgen.rewards import CompositeReward, RewardContext
from jaxgen.rewards.base import plain_spec
from jaxgen.sampling import sampler as sampler_lib
from jaxgen.train import loop as loop_lib
from jaxgen.train import reflection as reflection_lib
from jaxgen.train.grpo_settings import (CFG_MODES, OLD_LOGPROBS, apply_aliases, grpo_settings,
                                        update_settings)
from jaxgen.train.grpo_stages import (HOST_IMAGE_REWARDS, PromptSource, decode_images_uint8,
                                      group_advantages, leaf_names, mean_metrics, minibatch_rows,
                                      reflection_advantages, resolve_judges, reward_summary,
                                      score_rewards, score_rollout, update_step)
from jaxgen.train.optim import make_optimizer
from jaxgen.train.xla_options import train_step_compiler_options

__all__ = ["CFG_MODES", "OLD_LOGPROBS", "PromptSource", "GRPORunner", "StepResult",
           "load_policy", "export_step", "train", "score_rollout"]


def load_policy(config):
    """(params, JanusConfig, tokenizer) from config.policy_checkpoint (a jaxgen checkpoint or a
    Hugging Face Janus directory), else random init."""
    if config.get("policy_checkpoint"):
        params, model_config, tokenizer = load_model(config.policy_checkpoint)
        if tokenizer is None:
            raise UserError(f"policy checkpoint {config.policy_checkpoint} has no tokenizer files")
        options = dict(config.get("model_options") or {})
        if options:
            params, model_config = janus.with_execution_options(params, model_config, **options)
        return params, model_config, tokenizer
    if not config.get("tokenizer"):
        raise UserError("GRPO needs a tokenizer: set --config.policy_checkpoint=DIR (an SFT'd "
                        "jaxgen checkpoint) or --config.tokenizer=PATH with a random init")
    model_config = janus.config_from_configdict(config.model)
    params = jax.jit(janus.init_params, static_argnums=0)(model_config,
                                                          jax.random.PRNGKey(config.seed))
    return params, model_config, load_tokenizer(config.tokenizer)


@dataclasses.dataclass
class StepResult:
    """What one iteration produced: its metrics and the values behind them."""
    metrics: dict
    reasoning: list  # the rollout's reasoning text per row
    reflection: reflection_lib.Reflection | None  # the self-reflection rollout, if any


class GRPORunner:
    """Everything one GRPO run holds: mesh, policy / reference params, optimizer, rewards."""

    def __init__(self, config, policy=None, mesh=None):
        self.config = config
        st = self.settings = grpo_settings(config)
        self.group_size, self.num_prompts, self.batch_size = (st.group_size, st.num_prompts,
                                                              st.batch_size)
        self.max_images, self.rows = st.max_images, st.rows
        self.options, self.score = st.options, st.score
        if mesh is None:
            mesh, layout = parallel.mesh_from_config(config.mesh)
        else:
            layout = config.mesh.get("layout", "fsdp")
        self.mesh, self.layout = mesh, layout
        parallel.check_batch_divides(self.rows // st.minibatches, mesh,
                                     "grpo minibatch (prompts_per_step*group_size/minibatches)")
        params, self.model_config, self.tokenizer = policy or load_policy(config)
        rc = config.get("reflection") or {}
        self.self_judge, self_eval = None, None
        if self.max_images:  # the policy judges its own images with its current params
            self.self_judge = reflection_lib.self_eval_judge(
                lambda: self.params, self.model_config, self.tokenizer, mesh, layout,
                int(rc.get("max_text_tokens", 64)))
            weight = float(rc.get("self_eval_weight", 1.0))
            if weight:  # 0: the answers do not train, and the update skips their pass
                self_eval = reflection_lib.SelfEvalSettings(
                    self.self_judge.yes_ids, self.self_judge.no_ids, weight)
        self.update_settings = update_settings(st, self_eval)
        self.optimizer = make_optimizer(config, int(config.total_steps) * st.inner_epochs *
                                        st.minibatches)

        # Shardings: policy params by logical axes; optimizer state like its params.
        axes = janus.param_logical_axes(self.model_config)
        self.param_shardings = parallel.param_shardings(params, axes, mesh, layout)
        # A fresh sharded copy: the update donates its params, which must not be the caller's.
        copy = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=self.param_shardings)
        self.params = copy(params)
        opt_shape = jax.eval_shape(self.optimizer.init, self.params)
        self.opt_shardings = parallel.tree_shardings_like_params(opt_shape, self.params,
                                                                 self.param_shardings, mesh)
        self.opt_state = jax.jit(self.optimizer.init, out_shardings=self.opt_shardings)(self.params)
        # The reference model: a frozen copy with the same shardings (its own buffers).
        self.ref_params = copy(self.params) if st.loss.beta > 0 else None
        self.batch_sharding = parallel.batch_sharding(mesh)
        self.psi = np.zeros(2, np.float64)  # adaptive entropy state (text, image)

        # Update and scoring trace with the activations split over the batch (like SFT's step).
        self._update = jax.jit(
            parallel.with_activation_sharding(
                functools.partial(update_step, config=self.model_config,
                                  settings=self.update_settings, optimizer=self.optimizer),
                mesh, layout),
            out_shardings=(self.param_shardings, self.opt_shardings, None), donate_argnums=(0, 1),
            compiler_options=train_step_compiler_options(mesh))
        self._score = jax.jit(parallel.with_activation_sharding(score_rollout, mesh, layout),
                              static_argnums=(1, 3))
        self._decode = jax.jit(decode_images_uint8, static_argnums=1)

        judge_path = config.get("judge_checkpoint", "")
        spec = resolve_judges(plain_spec(config.rewards), judge_path)
        self.context = RewardContext(mesh=mesh, layout=layout, policy_config=self.model_config,
                                     policy_params_fn=lambda: self.params,
                                     policy_tokenizer=self.tokenizer)
        self.reward = CompositeReward(spec, self.context)
        # Reasoning tokens can have their own reward (e.g. the plan's layout): then the image
        # tokens' advantages come from `rewards` and the reasoning tokens' from `text_rewards`.
        text_spec = resolve_judges(plain_spec(config.grpo.get("text_rewards") or {}), judge_path)
        self.text_reward = CompositeReward(text_spec, self.context) if text_spec else None
        names = leaf_names(spec) | (leaf_names(text_spec) if text_spec else set())
        self.needs_host_images = bool(names & HOST_IMAGE_REWARDS)
        self.prompts = PromptSource(config.data, int(config.seed))

    # -------------------------------------------------------------------------------- stages

    def _put_batch(self, x):
        return jax.device_put(x, self.batch_sharding)

    def rollout(self, iteration: int, records):
        """Sample G completions per prompt (the self-reflection loop's T rounds when
        reflection.max_images > 0): (Rollout, prompts_b, metadata_b, Reflection or None)."""
        texts = [r["prompt"] for r in records for _ in range(self.group_size)]
        metadata = [r.get("metadata", {}) for r in records for _ in range(self.group_size)]
        ids, mask = tokenize_prompts(self.tokenizer, self.model_config, texts,
                                     int(self.config.data.max_prompt_tokens))
        rng = jax.random.fold_in(jax.random.PRNGKey(int(self.config.seed)), iteration)
        if self.max_images:
            rc = self.config.reflection
            refl = reflection_lib.reflect(
                self.params, self.model_config, self.self_judge, self._put_batch(ids),
                self._put_batch(mask), texts, rng, self.options, self.max_images,
                float(rc.yes_threshold), rc.question,
                answer_rng=np.random.default_rng([int(self.config.seed), iteration, 13]),
                activations=(self.mesh, self.layout))
            t = self.max_images  # rows are round-major: row i * B + b is image i of row b
            return refl.rollout, texts * t, metadata * t, refl
        rollout = sampler_lib.sample(self.params, self.model_config, self._put_batch(ids),
                                     self._put_batch(mask), rng, self.options,
                                     activations=(self.mesh, self.layout))
        return rollout, texts, metadata, None

    def rewards(self, rollout, texts, metadata):
        """The reward stage on one rollout -> grpo_stages.RewardOutput."""
        images = None
        if self.needs_host_images:
            images = self._decode(self.params, self.model_config, rollout.image_ids_bn)
        return score_rewards(self.reward, self.text_reward, self.tokenizer, self.mesh,
                             rollout.think_ids_bt, rollout.think_mask_bt, rollout.image_ids_bn,
                             texts, metadata, images)

    def advantages(self, streams, weights):
        """(float32[B] advantages, float32[B] keep weights) of one reward tree's streams."""
        return group_advantages(streams, weights, self.group_size, self.config.grpo,
                                self.settings.negative_scale)

    def reference(self, rollout):
        if self.ref_params is None:
            return None, None
        think_lp, image_lp, _, _ = self._score(self.ref_params, self.model_config, rollout,
                                               self.score)
        return think_lp, image_lp

    def old_logprobs(self, rollout):
        if self.settings.old_mode == "sampler":
            return rollout.think_logprobs_bt, rollout.image_logprobs_bn
        if self.settings.old_mode == "recompute":
            think_lp, image_lp, _, _ = self._score(self.params, self.model_config, rollout,
                                                   self.score)
            return think_lp, image_lp
        return None, None

    def entropy_coefs(self):
        e = self.config.grpo.entropy
        if e.adaptive:
            coefs = np.clip(np.sinh(self.psi), -float(e.max_coef), float(e.max_coef))
        else:
            coefs = np.array([float(e.text_coef), float(e.image_coef)])
        return jnp.asarray(coefs, jnp.float32)

    def update(self, batch, iteration: int):
        """Inner epochs x minibatches of optimizer steps; returns the mean metrics."""
        st = self.settings
        history = []
        for rows in minibatch_rows(int(self.config.seed), iteration, self.rows, st.minibatches,
                                   st.inner_epochs):
            part = batch
            if rows is not None:
                idx = self._put_batch(rows)
                part = jax.tree.map(lambda x: None if x is None else x[idx], batch)
            self.params, self.opt_state, m = self._update(
                self.params, self.opt_state, part, self.entropy_coefs())
            history.append(m)
        metrics = mean_metrics(history)
        e = self.config.grpo.entropy
        if e.adaptive and "entropy_text" in metrics:
            self.psi[0] -= float(e.lr) * np.cosh(self.psi[0]) * (metrics["entropy_text"] -
                                                                  float(e.text_target))
            self.psi[1] -= float(e.lr) * np.cosh(self.psi[1]) * (metrics["entropy_image"] -
                                                                  float(e.image_target))
        coefs = np.asarray(self.entropy_coefs())
        metrics.update(entropy_coef_text=float(coefs[0]), entropy_coef_image=float(coefs[1]))
        return metrics

    def _self_eval_batch(self, refl):
        """The self-evaluation part of the update batch: the policy's yes/no answers."""
        return dict(question_ids=refl.question_ids, question_mask=refl.question_mask,
                    said_yes=self._put_batch(refl.rows(refl.said_yes)),
                    old_logp=self._put_batch(refl.rows(refl.answer_logprob())))

    def step(self, iteration: int) -> StepResult:
        """One GRPO iteration: metrics (with the per-stage wall times, seconds) and outputs."""
        t0 = time.perf_counter()
        records = self.prompts.batch(iteration, self.num_prompts)
        rollout, texts, metadata, refl = self.rollout(iteration, records)
        jax.block_until_ready(rollout)
        t1 = time.perf_counter()
        rw = self.rewards(rollout, texts, metadata)
        total, text = rw.total, rw.text
        t2 = time.perf_counter()
        ref_think, ref_image = self.reference(rollout)
        old_think, old_image = self.old_logprobs(rollout)
        jax.block_until_ready((ref_think, ref_image, old_think, old_image))
        t3 = time.perf_counter()
        reflection_metrics = {}
        if refl is not None:
            adv, keep, total, reflection_metrics = reflection_advantages(
                rw.total, refl, self.max_images, self.config.reflection.reward_weights,
                self.advantages)
            image_keep = keep
        else:
            adv, keep = image_adv, image_keep = self.advantages(rw.streams, rw.weights)
        if text is not None:  # (reasoning tokens, image tokens)
            text_adv, text_keep = self.advantages(text[1], text[2])
            adv, keep = (text_adv, image_adv), (text_keep, image_keep)
        batch = dict(rollout=rollout, adv=jax.tree.map(self._put_batch, adv),
                     keep=jax.tree.map(self._put_batch, keep), old_think=old_think,
                     old_image=old_image, ref_think=ref_think, ref_image=ref_image)
        if refl is not None:
            batch["self_eval"] = self._self_eval_batch(refl)
        metrics = self.update(batch, iteration)
        jax.block_until_ready(self.params)
        t4 = time.perf_counter()
        metrics.update(
            reward_mean=float(total.mean()), reward_std=float(total.std()),
            keep_frac=float(np.mean(image_keep)),
            think_len=float(parallel.to_host(rollout.think_mask_bt).sum(1).mean()),
            time_rollout=t1 - t0, time_reward=t2 - t1, time_reference=t3 - t2,
            time_update=t4 - t3, time_iteration=t4 - t0)
        for name, col in zip(self.reward.stream_names, rw.streams.T):
            metrics[f"reward/{name}"] = float(col.mean())
        metrics.update(reflection_metrics)
        for name, secs in self.reward.timings.items():
            metrics[f"time_reward/{name}"] = secs
        if text is not None:
            metrics.update(text_reward_mean=float(text[0].mean()),
                           text_keep_frac=float(np.mean(text_keep)))
            for name, col in zip(self.text_reward.stream_names, text[1].T):
                key = f"reward/{name}"
                metrics[key if key not in metrics else f"reward/text:{name}"] = float(col.mean())
        return StepResult(metrics, rw.reasoning, refl)

    def iteration(self, iteration: int) -> dict:
        """One GRPO iteration's metrics (the loop's interface)."""
        return self.step(iteration).metrics

    # ------------------------------------------------------------------------- state io

    def state(self):
        return {"params": self.params, "opt_state": self.opt_state}

    def load_state(self, state):
        self.params, self.opt_state = state["params"], state["opt_state"]

    def host_state(self) -> dict:
        """What lives on the host (JSON, so float64 psi round-trips exactly)."""
        return {"psi": [float(x) for x in self.psi]}

    def load_host_state(self, host_state: dict):
        self.psi = np.asarray(host_state["psi"], np.float64)

    def abstract_state(self):
        shard = {"params": self.param_shardings, "opt_state": self.opt_shardings}
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s),
                            self.state(), shard)


def export_policy(runner, out, name: str) -> pathlib.Path:
    """Write the runner's policy as a jaxgen checkpoint (every host takes part in the gather),
    with the processor files of the checkpoint it started from."""
    source = runner.config.get("policy_checkpoint") or None
    ckpt_lib.export_from_mesh(
        name, lambda p: ckpt_lib.save_checkpoint(out, p, runner.model_config, runner.tokenizer,
                                                 processor_from=source), runner.params)
    return pathlib.Path(out)


def export_step(config, workdir, step: int, policy=None) -> pathlib.Path:
    """Write the policy of kept checkpoint `step` of the run in `workdir` as `<workdir>/step_<N>`
    (the layout of `final`, loadable by jaxgen.load and the eval commands), e.g. to evaluate a
    run's trajectory (keep_checkpoint_every). Needs the run's config."""
    workdir = pathlib.Path(workdir)
    apply_aliases(config)
    kept = []
    if (workdir / "checkpoints").is_dir():
        kept = sorted(int(d.name) for d in (workdir / "checkpoints").iterdir() if d.name.isdigit())
    if int(step) not in kept:
        raise UserError(f"no checkpoint of step {step} in {workdir / 'checkpoints'} (kept: "
                        f"{kept or 'none'}); a run keeps its newest keep_checkpoints steps and "
                        "every multiple of keep_checkpoint_every")
    runner = GRPORunner(config, policy=policy)
    with ckpt_lib.CheckpointManager(workdir / "checkpoints") as ckpt:
        state, host_state, _ = ckpt.restore(int(step), runner.abstract_state())
    runner.load_state(state)
    if host_state is not None:
        runner.load_host_state(host_state)
    return export_policy(runner, workdir / f"step_{int(step)}", "grpo_export_step")


def train(config, workdir, policy=None) -> dict:
    """Run (or resume) GRPO; returns a summary with the per-iteration mean rewards and the
    status ('preempted' after SIGTERM: rerun the same command to continue).

    policy: optional (params, JanusConfig, tokenizer) instead of config.policy_checkpoint.
    """
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    apply_aliases(config)
    runner = GRPORunner(config, policy=policy)
    run = loop_lib.run_rl(
        runner, config, workdir, "grpo",
        lambda m: {"reward": f"{m['reward_mean']:.3f}", "kl": f"{m.get('kl', 0.0):.4f}"})
    out = {"workdir": str(workdir), "status": run["status"], "step": run["step"],
           **reward_summary(run["history"], run["start"], int(config.total_steps))}
    if run["status"] == "done":  # same layout as SFT's final checkpoint
        out["policy_checkpoint"] = str(export_policy(runner, workdir / "final", "grpo_final"))
    return out
