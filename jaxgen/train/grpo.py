"""GRPO for reasoning-then-image generation, split the Tunix way, on one mesh.

One iteration (each stage a pure function; the jitted ones compile once per run):

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

import contextlib
import dataclasses
import functools
import json
import pathlib
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxgen import checkpoint as ckpt_lib
from jaxgen import parallel
from jaxgen.convert.load import load_model
from jaxgen.data.tokenizer import detokenize_reasoning, tokenize_prompts
from jaxgen.errors import UserError
from jaxgen.models import janus
from jaxgen.rewards import CompositeReward, RewardBatch, RewardContext
from jaxgen.rewards.base import plain_spec
from jaxgen.sampling import sampler as sampler_lib
from jaxgen.sampling import scoring
from jaxgen.train import advantages as adv_lib
from jaxgen.train import policy_loss as loss_lib
from jaxgen.train import reflection as reflection_lib
from jaxgen.train.xla_options import train_step_compiler_options

CFG_MODES = ("conditional", "cfg", "none")
OLD_LOGPROBS = ("auto", "sampler", "recompute", "detached")
# Rewards that read host pixels (the others use image tokens on device or only text).
HOST_IMAGE_REWARDS = {"geneval", "scene_graph_iou", "got_box_iou", "vlm_boxed"}


@dataclasses.dataclass(frozen=True)
class ScoreSettings:
    """How log-probs are recomputed (static under jit)."""
    cfg_mode: str
    cfg_weight: float
    uncond_hides: str
    temperature: float
    image_temperature: float


@dataclasses.dataclass(frozen=True)
class UpdateSettings:
    score: ScoreSettings
    loss: loss_lib.LossConfig
    old_mode: str  # 'detached' | 'given'
    self_eval: reflection_lib.SelfEvalSettings | None = None  # the reflection loop's answers


# ---------------------------------------------------------------------------- pure stages


def score_rollout(params, config, rollout, s: ScoreSettings):
    """(think_lp [B,T], image_lp [B,N], think_entropy [B,T], image_entropy [B,N])."""
    return scoring.sequence_logprobs_and_entropy(
        params, config, rollout, s.cfg_mode, s.cfg_weight, s.uncond_hides,
        temperature=s.temperature, image_temperature=s.image_temperature)


def grpo_objective(params, config, batch, entropy_coefs, u: UpdateSettings):
    """Scalar loss and metrics of one minibatch's reasoning and image tokens.

    batch: dict(rollout, adv [B], keep [B], old_think, old_image (ignored when detached),
    ref_think, ref_image (None without KL)).
    """
    rollout = batch["rollout"]
    think_lp, image_lp, think_ent, image_ent = score_rollout(params, config, rollout, u.score)
    if u.old_mode == "detached":  # one update per rollout: the old policy is the current one
        old_think, old_image = jax.lax.stop_gradient(think_lp), jax.lax.stop_gradient(image_lp)
    else:
        old_think, old_image = batch["old_think"], batch["old_image"]
    text = loss_lib.TokenBatch(think_lp, old_think, rollout.think_mask_bt.astype(jnp.float32),
                               batch.get("ref_think"), think_ent)
    image = loss_lib.TokenBatch(image_lp, old_image, jnp.ones_like(image_lp),
                                batch.get("ref_image"), image_ent)
    return loss_lib.grpo_loss(text, image, batch["adv"], batch["keep"], u.loss,
                              entropy_coefs[0], entropy_coefs[1])


def self_eval_objective(params, config, batch, u: UpdateSettings, wait=0.0):
    """The self-reflection loop's answers (the policy judging its images): they take the image
    stream's advantage. batch as grpo_objective's, with batch['self_eval']; wait: a zero scalar
    the pass waits for (see update_step)."""
    return reflection_lib.self_eval_loss(
        params, config, dict(batch["self_eval"], codes=batch["rollout"].image_ids_bn),
        loss_lib.per_stream(batch["adv"])[1], loss_lib.per_stream(batch["keep"])[1],
        u.self_eval, u.loss.eps_low, u.loss.eps_high, wait=wait)


def update_step(params, opt_state, batch, entropy_coefs, *, config, settings, optimizer):
    """One optimizer step on a minibatch: (params, opt_state, metrics)."""
    (loss, metrics), grads = jax.value_and_grad(grpo_objective, has_aux=True)(
        params, config, batch, entropy_coefs, settings)
    if settings.self_eval is not None:
        # The self-evaluation pass waits for a zero computed from all the policy pass's
        # gradients. Otherwise XLA may run it between the policy pass's forward and backward,
        # and the two passes' activations add up (8 CPU devices: 0.19 of one device's
        # temporaries, 0.11 with the wait). An optimization barrier does not order them: the CPU
        # compiler removes barriers before it schedules.
        wait = 0.0 * optax.tree.norm(grads)
        (se_loss, se_metrics), se_grads = jax.value_and_grad(self_eval_objective, has_aux=True)(
            params, config, batch, settings, wait)
        loss, metrics = loss + se_loss, dict(metrics, **se_metrics)
        grads = jax.tree.map(jnp.add, grads, se_grads)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
    return params, opt_state, metrics


def decode_images_uint8(params, config, codes_bn):
    """Image tokens -> uint8 pixels [B,H,W,3] (in-graph VQ decode)."""
    pixels = janus.vq_decode(params, config, codes_bn)
    return jnp.clip(jnp.round((pixels + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


# ------------------------------------------------------------------------------ prompts


class PromptSource:
    """Deterministic prompts per iteration: ShapesWorld RL prompts generated from the seed
    ('shapes'), or records {'prompt', 'metadata'} from a JSONL file ('jsonl')."""

    def __init__(self, data_config, seed: int):
        self.kind = data_config.get("source", "shapes")
        self.split = data_config.get("split", "train")
        self.categories = tuple(data_config.get("categories", ()) or ())
        self.seed = seed
        if self.kind == "jsonl":
            path = pathlib.Path(data_config.get("path", ""))
            if not path.is_file():
                raise UserError(f"prompt file {path} not found; set --config.data.path to a JSONL "
                                "of {'prompt', 'metadata'} records or use data.source=shapes")
            from jaxgen.data.readers import read_jsonl
            self.records = read_jsonl(path)
            if not self.records:
                raise UserError(f"prompt file {path} is empty")
        elif self.kind != "shapes":
            raise UserError(f"unknown prompt source {self.kind!r}; use 'shapes' or 'jsonl'")

    def batch(self, iteration: int, num_prompts: int) -> list[dict]:
        rng = np.random.default_rng([self.seed, iteration])
        if self.kind == "jsonl":
            idx = rng.choice(len(self.records), num_prompts, replace=len(self.records) < num_prompts)
            return [self.records[i] for i in idx]
        from jaxgen.data import prompts as shapes_prompts
        out = []
        for _ in range(num_prompts):
            cat = self.categories[rng.integers(len(self.categories))] if self.categories else None
            md = shapes_prompts.sample_metadata(rng, self.split, cat)
            out.append({"prompt": md["prompt"], "metadata": md})
        return out


# ------------------------------------------------------------------------------- runner


def _resolve_judges(node, judge_path: str):
    """Replace kwargs judge='judge' by the config's judge checkpoint path."""
    if isinstance(node, dict):
        node = {k: _resolve_judges(v, judge_path) for k, v in node.items()}
        kw = node.get("kwargs")
        if isinstance(kw, dict) and kw.get("judge") == "judge":
            if not judge_path:
                raise UserError("a reward uses judge='judge' but judge_checkpoint is empty; set "
                                "--config.judge_checkpoint=DIR (a jaxgen checkpoint)")
            node["kwargs"] = dict(kw, judge=judge_path)
        return node
    if isinstance(node, list):
        return [_resolve_judges(v, judge_path) for v in node]
    return node


def _leaf_names(node) -> set:
    if isinstance(node, dict):
        if "name" in node:
            return {node["name"]}
        return set().union(*[_leaf_names(t) for t in node.get("terms", [])])
    return set()


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
    from jaxgen.data.tokenizer import load_tokenizer
    model_config = janus.config_from_configdict(config.model)
    params = jax.jit(janus.init_params, static_argnums=0)(model_config,
                                                          jax.random.PRNGKey(config.seed))
    return params, model_config, load_tokenizer(config.tokenizer)


class GRPORunner:
    """Everything one GRPO run holds: mesh, policy / reference params, optimizer, rewards."""

    def __init__(self, config, policy=None, mesh=None):
        self.config = config
        g = config.grpo
        self.group_size = int(g.group_size)
        self.num_prompts = int(g.prompts_per_step)
        self.batch_size = self.group_size * self.num_prompts
        rc = config.get("reflection") or {}
        self.max_images = int(rc.get("max_images", 0) or 0)
        # rows of one update batch: every image of every trajectory (inactive ones weigh 0)
        self.rows = self.batch_size * max(1, self.max_images)
        if self.max_images and g.get("text_rewards"):
            raise UserError("grpo.text_rewards cannot be combined with reflection.max_images > 0 "
                            "(a trajectory has one advantage from R_Gen and R_Comp)")
        if g.cfg_mode not in CFG_MODES:
            raise UserError(f"grpo.cfg_mode={g.cfg_mode!r}; choose one of {CFG_MODES}")
        # configs written before the field existed resume as plain GRPO
        self.negative_scale = adv_lib.check_negative_scale(g.get("negative_advantage_scale", 1.0))
        if (self.negative_scale < 1.0 and g.cfg_mode == "conditional"
                and float(config.sampling.cfg_weight) != 1.0):
            # Measured on the demo policy (docs/demo_experiments.md, session 12): 8 positive-only
            # steps on one rollout raise the rewarded samples' conditional log-prob by ~32 nats
            # and lower their log-prob under the CFG sampler by ~32; the weights shared with the
            # unconditional row move it too.
            warnings.warn("grpo.negative_advantage_scale < 1 with cfg_mode='conditional' trains "
                          "a distribution the CFG sampler does not draw from: the rewarded "
                          "samples can become less likely for the sampler. Use "
                          "grpo.cfg_mode='cfg'.", stacklevel=2)
        if g.old_logprobs not in OLD_LOGPROBS:
            raise UserError(f"grpo.old_logprobs={g.old_logprobs!r}; choose one of {OLD_LOGPROBS}")
        if self.rows % int(g.minibatches):
            raise UserError(f"batch {self.rows} (prompts_per_step x group_size x images per "
                            f"trajectory) does not split into grpo.minibatches={g.minibatches}")
        if mesh is None:
            mesh, layout = parallel.mesh_from_config(config.mesh)
        else:
            layout = config.mesh.get("layout", "fsdp")
        self.mesh, self.layout = mesh, layout
        parallel.check_batch_divides(self.rows // int(g.minibatches), mesh,
                                     "grpo minibatch (prompts_per_step*group_size/minibatches)")
        params, self.model_config, self.tokenizer = policy or load_policy(config)
        s = config.sampling
        cfg_weight = 1.0 if g.cfg_mode == "none" else float(s.cfg_weight)
        self.options = sampler_lib.SampleOptions(
            max_think_tokens=int(s.max_think_tokens), temperature=float(s.temperature),
            top_k=int(s.top_k), top_p=float(s.top_p), image_temperature=float(s.image_temperature),
            cfg_weight=cfg_weight, uncond_hides=s.uncond_hides)
        self.score = ScoreSettings(g.cfg_mode, cfg_weight, s.uncond_hides, float(s.temperature),
                                   float(s.image_temperature))
        inner = int(g.inner_epochs) * int(g.minibatches)
        self.old_mode = g.old_logprobs
        if self.old_mode == "auto":
            self.old_mode = "detached" if inner == 1 else "recompute"
        if self.old_mode == "detached" and inner != 1:
            raise UserError("old_logprobs='detached' is exact only for one update per rollout; use "
                            "'recompute' or 'sampler' with inner_epochs/minibatches > 1")
        lc = g.loss
        self.loss_config = loss_lib.LossConfig(
            eps_low=float(lc.eps_low), eps_high=float(lc.eps_high), beta=float(lc.beta),
            aggregation=lc.aggregation, text_weight=float(lc.text_weight),
            image_weight=float(lc.image_weight))
        self.self_judge, self_eval = None, None
        if self.max_images:  # the policy judges its own images with its current params
            self.self_judge = reflection_lib.self_eval_judge(
                lambda: self.params, self.model_config, self.tokenizer, mesh, layout,
                int(rc.get("max_text_tokens", 64)))
            weight = float(rc.get("self_eval_weight", 1.0))
            if weight:  # 0: the answers do not train, and the update skips their pass
                self_eval = reflection_lib.SelfEvalSettings(
                    self.self_judge.yes_ids, self.self_judge.no_ids, weight)
        self.update_settings = UpdateSettings(self.score, self.loss_config,
                                              "detached" if self.old_mode == "detached" else "given",
                                              self_eval)
        from jaxgen.train.optim import make_optimizer
        self.optimizer = make_optimizer(config, int(config.total_steps) * inner)

        # Shardings: policy params by logical axes; optimizer state like its params.
        axes = janus.param_logical_axes(self.model_config)
        self.param_shardings = parallel.param_shardings(params, axes, mesh, layout)
        # A fresh sharded copy: the update donates its params, which must not be the caller's.
        self.params = jax.jit(lambda p: jax.tree.map(jnp.copy, p),
                              out_shardings=self.param_shardings)(params)
        opt_shape = jax.eval_shape(self.optimizer.init, self.params)
        self.opt_shardings = parallel.tree_shardings_like_params(opt_shape, self.params,
                                                                 self.param_shardings, mesh)
        self.opt_state = jax.jit(self.optimizer.init, out_shardings=self.opt_shardings)(self.params)
        # The reference model: a frozen copy with the same shardings (its own buffers).
        self.ref_params = None
        if self.loss_config.beta > 0:
            self.ref_params = jax.jit(lambda p: jax.tree.map(jnp.copy, p),
                                      out_shardings=self.param_shardings)(self.params)
        self.batch_sharding = parallel.batch_sharding(mesh)
        self.psi = np.zeros(2, np.float64)  # adaptive entropy state (text, image)

        config_static = self.model_config
        # Update and scoring trace with the activations split over the batch (like SFT's step).
        self._update = jax.jit(
            parallel.with_activation_sharding(
                functools.partial(update_step, config=config_static,
                                  settings=self.update_settings, optimizer=self.optimizer),
                mesh, layout),
            out_shardings=(self.param_shardings, self.opt_shardings, None), donate_argnums=(0, 1),
            compiler_options=train_step_compiler_options(mesh))
        self._score = jax.jit(parallel.with_activation_sharding(score_rollout, mesh, layout),
                              static_argnums=(1, 3))
        self._decode = jax.jit(decode_images_uint8, static_argnums=1)

        judge_path = config.get("judge_checkpoint", "")
        spec = _resolve_judges(plain_spec(config.rewards), judge_path)
        self.context = RewardContext(mesh=mesh, layout=layout, policy_config=self.model_config,
                                     policy_params_fn=lambda: self.params,
                                     policy_tokenizer=self.tokenizer)
        self.reward = CompositeReward(spec, self.context)
        # Reasoning tokens can have their own reward (e.g. the plan's layout): then the image
        # tokens' advantages come from `rewards` and the reasoning tokens' from `text_rewards`.
        text_spec = _resolve_judges(plain_spec(g.get("text_rewards") or {}), judge_path)
        self.text_reward = CompositeReward(text_spec, self.context) if text_spec else None
        names = _leaf_names(spec) | (_leaf_names(text_spec) if text_spec else set())
        self.needs_host_images = bool(names & HOST_IMAGE_REWARDS)
        self.prompts = PromptSource(config.data, int(config.seed))

    # -------------------------------------------------------------------------------- stages

    def _put_batch(self, x):
        return jax.device_put(x, self.batch_sharding)

    def rollout(self, iteration: int, records):
        """Sample G completions per prompt; returns (Rollout, prompts_b, metadata_b)."""
        texts = [r["prompt"] for r in records for _ in range(self.group_size)]
        metadata = [r.get("metadata", {}) for r in records for _ in range(self.group_size)]
        ids, mask = tokenize_prompts(self.tokenizer, self.model_config, texts,
                                     int(self.config.data.max_prompt_tokens))
        rng = jax.random.fold_in(jax.random.PRNGKey(int(self.config.seed)), iteration)
        if self.max_images:
            rc = self.config.reflection
            self.last_reflection = reflection_lib.reflect(
                self.params, self.model_config, self.self_judge, self._put_batch(ids),
                self._put_batch(mask), texts, rng, self.options, self.max_images,
                float(rc.yes_threshold), rc.question,
                answer_rng=np.random.default_rng([int(self.config.seed), iteration, 13]),
                activations=(self.mesh, self.layout))
            t = self.max_images  # rows are round-major: row i * B + b is image i of row b
            return self.last_reflection.rollout, texts * t, metadata * t
        rollout = sampler_lib.sample(self.params, self.model_config, self._put_batch(ids),
                                     self._put_batch(mask), rng, self.options,
                                     activations=(self.mesh, self.layout))
        return rollout, texts, metadata

    def rewards(self, rollout, texts, metadata):
        # host copies are whole on every process (parallel.to_host), so each host computes the
        # same rewards and advantages
        reasoning = detokenize_reasoning(self.tokenizer, *parallel.to_host(
            (rollout.think_ids_bt, rollout.think_mask_bt)))
        images = None
        if self.needs_host_images:
            images = parallel.to_host(self._decode(self.params, self.model_config,
                                                   rollout.image_ids_bn))
        tokens = rollout.image_ids_bn
        if jax.process_count() > 1:  # NumPy rewards read them: a replica on every host
            tokens = jax.device_put(tokens, parallel.replicated(self.mesh))
        batch = RewardBatch(prompts=texts, reasoning=reasoning, metadata=metadata, images=images,
                            image_tokens=tokens)
        total, streams, weights = self.reward(batch)
        text = None if self.text_reward is None else self.text_reward(batch)
        return total, streams, weights, reasoning, images, text

    def advantages(self, streams, weights):
        """(float32[B] advantages, float32[B] keep weights) of one reward tree's streams."""
        g = self.config.grpo
        adv, keep, _ = adv_lib.compute_advantages(
            streams, self.group_size, g.advantage, weights=weights,
            per_reward_norm=bool(g.per_reward_norm), dynamic_sampling=bool(g.dynamic_sampling),
            dynamic_sampling_tol=float(g.get("dynamic_sampling_tol", 1e-6)),
            clip=float(g.advantage_clip),
            negative_scale=self.negative_scale)
        return np.asarray(adv), np.asarray(keep)

    def reference(self, rollout):
        if self.ref_params is None:
            return None, None
        think_lp, image_lp, _, _ = self._score(self.ref_params, self.model_config, rollout,
                                               self.score)
        return think_lp, image_lp

    def old_logprobs(self, rollout):
        if self.old_mode == "sampler":
            return rollout.think_logprobs_bt, rollout.image_logprobs_bn
        if self.old_mode == "recompute":
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
        g = self.config.grpo
        n_mb = int(g.minibatches)
        mb = self.rows // n_mb
        rng = np.random.default_rng([int(self.config.seed), iteration, 7])
        history = []
        for _ in range(int(g.inner_epochs)):
            order = rng.permutation(self.rows) if n_mb > 1 else None
            for k in range(n_mb):
                if order is None:
                    part = batch
                else:
                    idx = self._put_batch(np.sort(order[k * mb:(k + 1) * mb]).astype(np.int32))
                    part = jax.tree.map(lambda x: None if x is None else x[idx], batch)
                self.params, self.opt_state, m = self._update(
                    self.params, self.opt_state, part, self.entropy_coefs())
                history.append(m)
        metrics = {k: float(np.mean([float(h[k]) for h in history])) for k in history[0]}
        e = g.entropy
        if e.adaptive and "entropy_text" in metrics:
            self.psi[0] -= float(e.lr) * np.cosh(self.psi[0]) * (metrics["entropy_text"] -
                                                                  float(e.text_target))
            self.psi[1] -= float(e.lr) * np.cosh(self.psi[1]) * (metrics["entropy_image"] -
                                                                  float(e.image_target))
        coefs = np.asarray(self.entropy_coefs())
        metrics.update(entropy_coef_text=float(coefs[0]), entropy_coef_image=float(coefs[1]))
        return metrics

    def iteration(self, iteration: int) -> dict:
        """One GRPO iteration; returns metrics with the per-stage wall times (seconds)."""
        t0 = time.perf_counter()
        records = self.prompts.batch(iteration, self.num_prompts)
        rollout, texts, metadata = self.rollout(iteration, records)
        jax.block_until_ready(rollout)
        t1 = time.perf_counter()
        total, streams, weights, reasoning, _, text = self.rewards(rollout, texts, metadata)
        t2 = time.perf_counter()
        ref_think, ref_image = self.reference(rollout)
        old_think, old_image = self.old_logprobs(rollout)
        jax.block_until_ready((ref_think, ref_image, old_think, old_image))
        t3 = time.perf_counter()
        reflection_metrics = {}
        if self.max_images:
            adv, keep, total, reflection_metrics, self_eval = self._reflection_batch(total)
            image_keep = keep
        else:
            adv, keep = image_adv, image_keep = self.advantages(streams, weights)
        if text is not None:  # (reasoning tokens, image tokens)
            text_adv, text_keep = self.advantages(text[1], text[2])
            adv, keep = (text_adv, image_adv), (text_keep, image_keep)
        batch = dict(rollout=rollout, adv=jax.tree.map(self._put_batch, adv),
                     keep=jax.tree.map(self._put_batch, keep), old_think=old_think,
                     old_image=old_image, ref_think=ref_think, ref_image=ref_image)
        if self.max_images:
            batch["self_eval"] = self_eval
        metrics = self.update(batch, iteration)
        jax.block_until_ready(self.params)
        t4 = time.perf_counter()
        metrics.update(
            reward_mean=float(total.mean()), reward_std=float(total.std()),
            keep_frac=float(np.mean(image_keep)),
            think_len=float(parallel.to_host(rollout.think_mask_bt).sum(1).mean()),
            time_rollout=t1 - t0, time_reward=t2 - t1, time_reference=t3 - t2,
            time_update=t4 - t3, time_iteration=t4 - t0)
        for name, col in zip(self.reward.stream_names, streams.T):
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
        self.last_reasoning = reasoning
        return metrics

    def _reflection_batch(self, rqa_rows):
        """Advantages of the self-reflection trajectories, spread over their image rows.

        rqa_rows: float[T * B] the reward tree's R_QA of every image (rollout row order).
        Returns (adv [T*B], keep [T*B] (0 for images the loop did not produce), r_final [B]
        (the delivered image's R_QA: the run's reward curve), metrics, the self-evaluation
        part of the update batch)."""
        refl = self.last_reflection
        t = self.max_images
        tr = reflection_lib.trajectory_rewards(rqa_rows, refl)
        weights = np.asarray(self.config.reflection.reward_weights, np.float32)
        adv_b, keep_b = self.advantages(np.stack([tr["r_gen"], tr["r_comp"]], axis=1), weights)
        adv = np.tile(adv_b, t).astype(np.float32)
        keep = (np.tile(keep_b, t) * refl.rows(refl.active)).astype(np.float32)
        active = refl.active.astype(bool)
        metrics = {"reward/r_gen": float(tr["r_gen"].mean()),
                   "reward/r_comp": float(tr["r_comp"].mean()),
                   "reward/r_qa": float(np.asarray(rqa_rows).mean()),
                   "reflection/num_images": float(refl.num_images.mean()),
                   "reflection/self_eval": float(refl.self_eval[active].mean()),
                   "reflection/said_yes": float(refl.said_yes[active].mean())}
        self_eval = dict(question_ids=refl.question_ids, question_mask=refl.question_mask,
                         said_yes=self._put_batch(refl.rows(refl.said_yes)),
                         old_logp=self._put_batch(refl.rows(refl.answer_logprob())))
        return adv, keep, tr["r_final"], metrics, self_eval

    # ------------------------------------------------------------------------- state io

    def state(self):
        # psi is replicated on the mesh like the rest of the state (every host saves it)
        return {"params": self.params, "opt_state": self.opt_state,
                "psi": jax.device_put(np.asarray(self.psi, np.float32),
                                      parallel.replicated(self.mesh))}

    def load_state(self, state):
        self.params, self.opt_state = state["params"], state["opt_state"]
        self.psi = np.asarray(state["psi"], np.float64)

    def abstract_state(self):
        shard = {"params": self.param_shardings, "opt_state": self.opt_shardings,
                 "psi": parallel.replicated(self.mesh)}
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s),
                            self.state(), shard)


_ALIASES = {"policy_ckpt": "policy_checkpoint", "judge_ckpt": "judge_checkpoint"}


def _apply_aliases(config):
    """Accept the short names policy_ckpt / judge_ckpt (used by the demo) for the two paths."""
    for short, full in _ALIASES.items():
        if short in config and config[short] and not config.get(full):
            config[full] = config[short]


def export_step(config, workdir, step: int, policy=None) -> pathlib.Path:
    """Write the policy of kept checkpoint `step` of the run in `workdir` as `<workdir>/step_<N>`
    (the layout of `final`, loadable by jaxgen.load and the eval commands), e.g. to evaluate a
    run's trajectory (keep_checkpoint_every). Needs the run's config."""
    workdir = pathlib.Path(workdir)
    _apply_aliases(config)
    kept = []
    if (workdir / "checkpoints").is_dir():
        kept = sorted(int(d.name) for d in (workdir / "checkpoints").iterdir() if d.name.isdigit())
    if int(step) not in kept:
        raise UserError(f"no checkpoint of step {step} in {workdir / 'checkpoints'} (kept: "
                        f"{kept or 'none'}); a run keeps its newest keep_checkpoints steps and "
                        "every multiple of keep_checkpoint_every")
    runner = GRPORunner(config, policy=policy)
    with ckpt_lib.CheckpointManager(workdir / "checkpoints") as ckpt:
        state, _, _ = ckpt.restore(int(step), runner.abstract_state())
    runner.load_state(state)
    out = workdir / f"step_{int(step)}"
    export_policy(runner, out, "grpo_export_step")
    return out


def export_policy(runner, out, name: str):
    """Write the runner's policy as a jaxgen checkpoint (every host takes part in the gather)."""
    ckpt_lib.export_from_mesh(lambda p: ckpt_lib.save_checkpoint(out, p, runner.model_config,
                                                                 runner.tokenizer), runner.params,
                              name)


def run_iterations(runner, config, workdir: pathlib.Path, desc: str, postfix) -> tuple:
    """The RL loop shared by GRPO and Flow-GRPO: resume from the newest checkpoint, run
    `runner.iteration(it)` to config.total_steps, log metrics.jsonl and a progress bar
    (`postfix(metrics)` -> its fields), checkpoint every config.checkpoint_every iterations.

    runner: iteration(it) -> metrics dict with 'reward_mean'; state(), load_state(state),
    abstract_state(). Returns (history of metrics dicts, first iteration run).
    """
    from tqdm import tqdm

    from jaxgen.checkpoint import CheckpointManager

    total = int(config.total_steps)
    ckpt = CheckpointManager(workdir / "checkpoints",
                             max_to_keep=int(config.get("keep_checkpoints", 2)),
                             keep_period=int(config.get("keep_checkpoint_every", 0)),
                             save_interval_steps=int(config.checkpoint_every), async_save=False)
    start = 0
    restored = ckpt.restore_latest(runner.abstract_state())
    if restored is not None:
        start, state, _, _ = restored
        runner.load_state(state)
    metrics_path = workdir / "metrics.jsonl"
    history = []
    if metrics_path.exists():  # keep the log of the iterations before the restored step
        history = [json.loads(line) for line in metrics_path.read_text().splitlines() if line]
        history = [h for h in history if h["step"] < start]
        parallel.primary_writes(lambda: metrics_path.write_text(
            "".join(json.dumps(h) + "\n" for h in history)), "rl_metrics_trimmed")
    primary = jax.process_index() == 0  # hosts share the work directory: one writes the log
    bar = tqdm(range(start, total), desc=desc, initial=start, total=total, disable=not primary)
    with (metrics_path.open("a") if primary else contextlib.nullcontext()) as log:
        for it in bar:
            m = runner.iteration(it)
            m["step"] = it
            history.append(m)
            if primary:
                log.write(json.dumps(m) + "\n")
                log.flush()
            bar.set_postfix(**postfix(m))
            if (it + 1) % int(config.checkpoint_every) == 0 or it + 1 == total:
                ckpt.save(it + 1, runner.state(), meta={"step": it + 1})
    ckpt.close()
    return history, start


def reward_summary(history: list, start: int, total: int) -> dict:
    rewards = [h["reward_mean"] for h in history]
    return {"steps": total, "start_step": start, "reward_per_step": rewards,
            "first_reward": rewards[0] if rewards else None,
            "last_reward": rewards[-1] if rewards else None}


def train(config, workdir, policy=None) -> dict:
    """Run (or resume) GRPO; returns a summary with the per-iteration mean rewards.

    policy: optional (params, JanusConfig, tokenizer) instead of config.policy_checkpoint.
    """
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    _apply_aliases(config)
    runner = GRPORunner(config, policy=policy)
    history, start = run_iterations(
        runner, config, workdir, "grpo",
        lambda m: {"reward": f"{m['reward_mean']:.3f}", "kl": f"{m.get('kl', 0.0):.4f}"})
    policy_dir = workdir / "final"  # same layout as SFT's final checkpoint
    export_policy(runner, policy_dir, "grpo_final")
    return {"workdir": str(workdir), "policy_checkpoint": str(policy_dir),
            **reward_summary(history, start, int(config.total_steps))}
