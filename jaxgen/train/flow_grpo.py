"""Flow-GRPO on the diffusion path: GRPO over the denoising steps of the flow decoder.

One iteration, with GRPO's shared stages (jaxgen.train.grpo_stages: prompts, rewards,
advantages, minibatches) and loop (jaxgen.train.loop.run_rl: resume, SIGTERM, NaN stop); what
is specific to the diffusion path is the rollout and the scoring of its steps:

  rollout     G images per prompt: the frozen LLM writes the reasoning, then the flow decoder
              samples with Flow-GRPO's SDE (same marginals as the ODE; `sampling.noise_level`)
              on `sampling.num_steps` steps, keeping every latent and each step's log-prob as
              the old policy's; steps outside `grpo.sde_window` are deterministic ODE steps
  rewards     the reward tree (jaxgen.rewards) on the decoded images (nearest VQ codes -> pixels)
  advantages  a registered estimator over each prompt's G images (GRPO's: clip, dynamic
              sampling and its tolerance, negative-advantage scale)
  reference   the frozen starting decoder's step means (only when beta > 0)
  update      per stochastic step k and image i: ratio = exp(logp_new - logp_old) of the
              transition x_k -> x_{k+1} under the CFG-guided SDE step (the distribution the
              sampler draws from), loss = -min(r A, clip(r, 1 - eps, 1 + eps) A)
              + beta ||mean_new - mean_ref||^2 / (2 std^2) (per-dimension mean), averaged over
              steps and images; `grpo.inner_epochs` x `grpo.minibatches` optimizer steps per
              rollout, each on a shuffled share of the images with all their trained steps
              (Flow-GRPO steps twice per rollout: after the first step the ratio leaves 1 and
              its clip acts)

Only the flow parameters (queries, connector, DiT) train; the unified model and its tokenizer
stay as loaded from config.policy (a checkpoint written by `jaxgen train flow`). Shapes are fixed
by the config, so nothing recompiles between iterations. Checkpoints hold the flow params,
the optimizer state and the step; a rerun resumes. Result: <workdir>/final, loadable by
`jaxgen.checkpoint.load_flow_checkpoint`.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxgen import checkpoint as ckpt_lib
from jaxgen import parallel
from jaxgen.errors import UserError
from jaxgen.models import flow, janus
from jaxgen.rewards import CompositeReward, RewardContext
from jaxgen.rewards.base import plain_spec
from jaxgen.sampling import flow as flow_sampling
from jaxgen.sampling import flow_generate
from jaxgen.train import advantages as adv_lib
from jaxgen.data.tokenizer import tokenize_prompts
from jaxgen.train import loop as loop_lib
from jaxgen.train.grpo_stages import (PromptSource, group_advantages, mean_metrics,
                                      microbatch_sums, minibatch_rows, reward_summary,
                                      score_rewards)
from jaxgen.train.optim import make_optimizer
from jaxgen.train.xla_options import train_step_compiler_options


@dataclasses.dataclass(frozen=True)
class FlowUpdateSettings:
    """Static settings of the jitted update."""
    jc: janus.JanusConfig
    fc: flow.FlowConfig
    cfg_weight: float
    noise_level: float
    window: tuple  # (first, last + 1) of the trained (stochastic) steps
    clip_eps: float
    beta: float
    accum_steps: int = 1  # micro-batches of images whose gradients one optimizer step sums


def step_means_and_logprobs(janus_params, flow_params, rollout, s: FlowUpdateSettings):
    """Recompute the trained steps under `flow_params`.

    Returns (log_probs [K', B], means [K', B, h, w, C], std [K']) for the K' steps of s.window.
    All K' x B transitions run as one batch through the DiT (x2 with CFG).
    """
    first, stop = s.window
    ts = rollout.timesteps
    x_kb = rollout.latents[first:stop]  # [K', B, h, w, C]
    x_next = rollout.latents[first + 1:stop + 1]
    k, b = x_kb.shape[:2]
    cfg = float(s.cfg_weight) != 1.0
    ctx = flow_generate.contexts(janus_params, s.jc, flow_params, s.fc, rollout.prefix_ids_bp,
                                 rollout.prefix_mask_bp, cfg)  # [B or 2B, N, D]
    if cfg:  # tile over steps as [cond of every step; uncond of every step]
        c, u = jnp.split(ctx, 2, axis=0)
        ctx = jnp.concatenate([jnp.tile(c, (k, 1, 1)), jnp.tile(u, (k, 1, 1))], 0)
    else:
        ctx = jnp.tile(ctx, (k, 1, 1))
    t = jnp.repeat(ts[first:stop], b)  # [K' B], step-major like the reshape below
    t_next = jnp.repeat(ts[first + 1:stop + 1], b)
    x = x_kb.reshape((k * b,) + x_kb.shape[2:])
    v = flow_generate.guided_velocity(flow_params, s.fc, s.jc, x, t, ctx, s.cfg_weight)
    expand = lambda a: a[:, None, None, None]  # noqa: E731
    mean, std = flow_sampling.sde_step_mean_std(x, v, expand(t), expand(t_next),
                                                noise_level=s.noise_level, t_cap=ts[1])
    logp = flow_sampling.gaussian_step_logprob(x_next.reshape(x.shape), mean, std)
    std_k = jnp.broadcast_to(std, x.shape).reshape(k, b, -1)[:, 0, 0]
    return logp.reshape(k, b), mean.reshape(x_kb.shape), std_k


def loss_denominator(keep_b, steps: int):
    """What flow_grpo_loss divides by: the kept (step, image) pairs, at least 1."""
    return jnp.maximum(jnp.broadcast_to(keep_b[None], (steps,) + keep_b.shape).sum(), 1.0)


def flow_grpo_loss(logp_kb, old_logp_kb, adv_b, keep_b, clip_eps: float, beta: float,
                   mean_kb=None, ref_mean_kb=None, std_k=None, denom=None):
    """Clipped-ratio loss (and KL on the step means) averaged over steps and kept images.

    logp / old_logp [K, B]; adv, keep [B]; means [K, B, ...], std [K]; denom: the whole
    minibatch's `loss_denominator` when these images are one of its micro-batches (then the
    micro-batches' losses and metrics sum to the minibatch's). Returns (loss, metrics).
    """
    ratio = jnp.exp(logp_kb - old_logp_kb)
    adv = adv_b[None]
    surrogate = jnp.minimum(ratio * adv, jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv)
    weight = jnp.broadcast_to(keep_b[None], ratio.shape)
    if denom is None:
        denom = loss_denominator(keep_b, ratio.shape[0])
    policy = -(surrogate * weight).sum() / denom
    metrics = {"policy_loss": policy,
               "clip_frac": ((jnp.abs(ratio - 1.0) > clip_eps) * weight).sum() / denom,
               "ratio_mean": (ratio * weight).sum() / denom}
    loss = policy
    if beta > 0:
        sq = jnp.square(mean_kb - ref_mean_kb).reshape(mean_kb.shape[:2] + (-1,)).mean(-1)
        kl = sq / (2.0 * jnp.square(std_k)[:, None])
        kl = (kl * weight).sum() / denom
        loss = loss + beta * kl
        metrics["kl"] = kl
    return loss, metrics


def select_images(batch, rows):
    """The images `rows` [b] of an update batch (the rollout, old_logp [K', B], adv, keep [B])."""
    take = lambda x, axis=0: jnp.take(x, rows, axis=axis)  # noqa: E731
    r = batch["rollout"]
    rollout = r.replace(prefix_ids_bp=take(r.prefix_ids_bp), prefix_mask_bp=take(r.prefix_mask_bp),
                        think_ids_bt=take(r.think_ids_bt), think_mask_bt=take(r.think_mask_bt),
                        latents=take(r.latents, 1), log_probs=take(r.log_probs, 1),
                        codes_bn=take(r.codes_bn))
    return dict(rollout=rollout, old_logp=take(batch["old_logp"], 1), adv=take(batch["adv"]),
                keep=take(batch["keep"]))


def update_step(flow_params, opt_state, janus_params, ref_flow_params, batch, rows=None, *,
                settings, optimizer):
    """One optimizer step on the images `rows` of a rollout (all when None).

    Returns (flow_params, opt_state, metrics). The gather runs inside the jitted step, so every
    minibatch reuses one compiled update.
    """
    s = settings
    if rows is not None:
        batch = select_images(batch, rows)

    def objective(fp, b, denom=None):
        ref_mean = None
        if s.beta > 0:
            _, ref_mean, _ = step_means_and_logprobs(janus_params, ref_flow_params, b["rollout"], s)
            ref_mean = jax.lax.stop_gradient(ref_mean)
        logp, mean, std = step_means_and_logprobs(janus_params, fp, b["rollout"], s)
        return flow_grpo_loss(logp, b["old_logp"], b["adv"], b["keep"], s.clip_eps, s.beta, mean,
                              ref_mean, std, denom)

    if s.accum_steps > 1:  # micro-batches of images, each gathered inside the scan
        denom = loss_denominator(batch["keep"], batch["old_logp"].shape[0])
        images = jnp.arange(batch["keep"].shape[0], dtype=jnp.int32)
        loss, metrics, grads = microbatch_sums(
            lambda fp, idx: objective(fp, select_images(batch, idx), denom), flow_params, images,
            s.accum_steps)
    else:
        (loss, metrics), grads = jax.value_and_grad(objective, has_aux=True)(flow_params, batch)
    updates, opt_state = optimizer.update(grads, opt_state, flow_params)
    flow_params = optax.apply_updates(flow_params, updates)
    return flow_params, opt_state, dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))


class FlowGRPORunner:
    """Mesh, frozen unified model, flow params / reference / optimizer, rewards of one run."""

    def __init__(self, config, mesh=None):
        self.config = config
        g, s = config.grpo, config.sampling
        self.group_size = int(g.group_size)
        self.num_prompts = int(g.prompts_per_step)
        self.batch_size = self.group_size * self.num_prompts
        if not config.get("policy"):
            raise UserError("config.policy is empty: pass a flow checkpoint written by "
                            "`jaxgen train flow` (its <workdir>/final)")
        janus_params, self.jc, self.tokenizer, flow_params, self.fc = \
            ckpt_lib.load_flow_checkpoint(config.policy)
        if self.tokenizer is None:
            raise UserError(f"{config.policy} has no tokenizer files; Flow-GRPO tokenises prompts")
        steps = int(s.num_steps)
        first, stop = (tuple(g.sde_window) if g.get("sde_window") else (0, steps))
        if not 0 <= first < stop <= steps:
            raise UserError(f"grpo.sde_window={tuple(g.sde_window)} must be (first, stop) with "
                            f"0 <= first < stop <= sampling.num_steps={steps}")
        if float(s.noise_level) <= 0:
            raise UserError("Flow-GRPO needs stochastic steps: set sampling.noise_level > 0 "
                            "(Flow-GRPO uses 0.7)")
        self.window = (first, stop)
        self.sde_steps = tuple(first <= k < stop for k in range(steps))
        self.options = flow_generate.FlowSampleOptions(
            max_think_tokens=int(s.max_think_tokens), temperature=float(s.temperature),
            cfg_weight=float(s.cfg_weight), num_steps=steps, shift=float(s.shift),
            noise_level=float(s.noise_level))
        self.settings = FlowUpdateSettings(self.jc, self.fc, float(s.cfg_weight),
                                           float(s.noise_level), self.window,
                                           float(g.clip_eps), float(g.beta),
                                           int(g.get("grad_accum_steps", 1)))
        if mesh is None:
            mesh, layout = parallel.mesh_from_config(config.mesh)
        else:
            layout = config.mesh.get("layout", "fsdp")
        self.mesh, self.layout = mesh, layout
        parallel.check_batch_divides(self.batch_size, mesh, "prompts_per_step * group_size")
        self.minibatches, self.inner_epochs = int(g.minibatches), int(g.inner_epochs)
        if self.minibatches < 1 or self.inner_epochs < 1 or self.batch_size % self.minibatches:
            raise UserError(f"grpo.minibatches={g.minibatches} must divide the "
                            f"{self.batch_size} images of a rollout (prompts_per_step x "
                            f"group_size), and grpo.inner_epochs={g.inner_epochs} be >= 1")
        mb = self.batch_size // self.minibatches
        if self.settings.accum_steps < 1 or mb % self.settings.accum_steps:
            raise UserError(f"grpo.grad_accum_steps={self.settings.accum_steps} must be >= 1 and "
                            f"divide the {mb} images of a minibatch")
        self.negative_scale = adv_lib.check_negative_scale(g.get("negative_advantage_scale", 1.0))
        self.optimizer = make_optimizer(config, int(config.total_steps))
        j_sh = parallel.param_shardings(janus_params, janus.param_logical_axes(self.jc), mesh,
                                        layout)
        self.janus_params = jax.device_put(janus_params, j_sh)
        self.flow_shardings = parallel.param_shardings(
            flow_params, flow.param_logical_axes(self.fc, self.jc), mesh, layout)
        copy = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=self.flow_shardings)
        self.flow_params = copy(flow_params)
        self.ref_flow_params = copy(flow_params) if self.settings.beta > 0 else None
        opt_shape = jax.eval_shape(self.optimizer.init, self.flow_params)
        self.opt_shardings = parallel.tree_shardings_like_params(
            opt_shape, self.flow_params, self.flow_shardings, mesh)
        self.opt_state = jax.jit(self.optimizer.init,
                                 out_shardings=self.opt_shardings)(self.flow_params)
        self.batch_sharding = parallel.batch_sharding(mesh)
        # rollout and update trace with the activations split over the batch (like SFT's step)
        self._update = jax.jit(
            parallel.with_activation_sharding(
                functools.partial(update_step, settings=self.settings, optimizer=self.optimizer),
                mesh, layout),
            out_shardings=(self.flow_shardings, self.opt_shardings, None), donate_argnums=(0, 1),
            compiler_options=train_step_compiler_options(mesh))
        self._rollout = jax.jit(parallel.with_activation_sharding(self._rollout_impl, mesh, layout))
        # uint8 in the graph, rounded like the token path's rewards (grpo.decode_images_uint8)
        self._pixels = jax.jit(lambda jp, x: jnp.clip(jnp.round(
            (flow.latents_to_pixels(jp, self.jc, x) + 1.0) * 127.5), 0, 255).astype(jnp.uint8))
        self.context = RewardContext(mesh=mesh, layout=layout, policy_config=self.jc,
                                     policy_params_fn=lambda: self.janus_params,
                                     policy_tokenizer=self.tokenizer)
        self.reward = CompositeReward(plain_spec(config.rewards), self.context)
        self.prompts = PromptSource(config.data, int(config.seed))

    # ------------------------------------------------------------------------------ stages

    def _rollout_impl(self, janus_params, flow_params, ids, mask, rng):
        """generate() with the configured SDE window (jitted once per run)."""
        return flow_generate.generate_traced(janus_params, flow_params, ids, mask, rng, self.jc,
                                             self.fc, self.options, sde_steps=self.sde_steps)

    def rollout(self, iteration: int, records):
        texts = [r["prompt"] for r in records for _ in range(self.group_size)]
        metadata = [r.get("metadata", {}) for r in records for _ in range(self.group_size)]
        ids, mask = tokenize_prompts(self.tokenizer, self.jc, texts,
                                     int(self.config.data.max_prompt_tokens))
        flow_generate.check_context(self.jc, self.fc, ids.shape[1], self.options.max_think_tokens)
        rng = jax.random.fold_in(jax.random.PRNGKey(int(self.config.seed)), iteration)
        put = lambda x: jax.device_put(x, self.batch_sharding)  # noqa: E731
        out = self._rollout(self.janus_params, self.flow_params, put(ids), put(mask), rng)
        return out, texts, metadata

    def rewards(self, rollout, texts, metadata):
        """The shared reward stage on the decoded images -> grpo_stages.RewardOutput."""
        images = self._pixels(self.janus_params, rollout.latents[-1])
        return score_rewards(self.reward, None, self.tokenizer, self.mesh, rollout.think_ids_bt,
                             rollout.think_mask_bt, rollout.codes_bn, texts, metadata, images)

    def advantages(self, streams, weights):
        return group_advantages(streams, weights, self.group_size, self.config.grpo,
                                self.negative_scale)

    def update(self, batch, iteration: int) -> dict:
        """inner_epochs x minibatches optimizer steps on one rollout; returns the mean metrics.

        Each epoch shuffles the images (from seed and iteration, so a resumed run repeats it)
        and splits them into `minibatches` equal shares; old log-probs stay the sampler's.
        """
        history = []
        replicated = parallel.replicated(self.mesh)  # every host passes the same indices
        for rows in minibatch_rows(int(self.config.seed), iteration, self.batch_size,
                                   self.minibatches, self.inner_epochs):
            if rows is not None:
                rows = jax.device_put(rows, replicated)
            self.flow_params, self.opt_state, m = self._update(
                self.flow_params, self.opt_state, self.janus_params, self.ref_flow_params, batch,
                rows)
            history.append(m)
        return mean_metrics(history)

    def iteration(self, iteration: int) -> dict:
        t0 = time.perf_counter()
        rollout, texts, metadata = self.rollout(iteration, self.prompts.batch(iteration,
                                                                              self.num_prompts))
        jax.block_until_ready(rollout)
        t1 = time.perf_counter()
        rw = self.rewards(rollout, texts, metadata)
        total, streams = rw.total, rw.streams
        t2 = time.perf_counter()
        adv, keep = self.advantages(streams, rw.weights)
        first, stop = self.window
        put = lambda x: jax.device_put(x, self.batch_sharding)  # noqa: E731
        batch = dict(rollout=rollout, old_logp=rollout.log_probs[first:stop], adv=put(adv),
                     keep=put(keep))
        metrics = self.update(batch, iteration)
        t3 = time.perf_counter()
        metrics.update(reward_mean=float(np.mean(total)), reward_std=float(np.std(total)),
                       keep_frac=float(np.mean(keep)), time_rollout=t1 - t0,
                       time_reward=t2 - t1, time_update=t3 - t2, time_iteration=t3 - t0)
        for name, col in zip(self.reward.stream_names, np.asarray(streams).T):
            metrics[f"reward/{name}"] = float(col.mean())
        return metrics

    # ---------------------------------------------------------------------------- state io

    def state(self):
        return {"params": self.flow_params, "opt_state": self.opt_state}

    def load_state(self, state):
        self.flow_params, self.opt_state = state["params"], state["opt_state"]

    def abstract_state(self):
        shard = {"params": self.flow_shardings, "opt_state": self.opt_shardings}
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s),
                            self.state(), shard)


def train(config, workdir) -> dict:
    """Run (or resume) Flow-GRPO in `workdir`; returns a summary with the per-iteration rewards."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    runner = FlowGRPORunner(config)
    run = loop_lib.run_rl(
        runner, config, workdir, "flow_grpo",
        lambda m: {"reward": f"{m['reward_mean']:.3f}", "clip": f"{m['clip_frac']:.2f}"})
    out = {"workdir": str(workdir), "status": run["status"], "step": run["step"],
           **reward_summary(run["history"], run["start"], int(config.total_steps))}
    if run["status"] != "done":
        return out
    final = workdir / "final"  # every host takes part in the gather, process 0 writes
    ckpt_lib.export_from_mesh(
        "flow_grpo_final",
        lambda jp, fp: ckpt_lib.save_flow_checkpoint(final, jp, runner.jc, runner.tokenizer, fp,
                                                     runner.fc),
        runner.janus_params, runner.flow_params)
    return dict(out, checkpoint=str(final))
