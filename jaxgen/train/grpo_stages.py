"""GRPO's stages as pure functions, shared by GRPO on image tokens and Flow-GRPO on the decoder.

  prompts     PromptSource: deterministic prompts per iteration (ShapesWorld or a JSONL file)
  rollout     (in the runners: the token sampler, the reflection loop, or the flow SDE sampler)
  reference   score_rollout under the frozen reference params (beta > 0)
  rewards     score_rewards: the reward tree on prompts, reasoning, images, image tokens
  advantages  group_advantages: a registered estimator, dynamic-sampling mask, negative scale
  update      update_step: one optimizer step on a minibatch of the clipped-ratio loss
              (the policy loss is a registered one, jaxgen.train.policy_loss.POLICY_LOSSES);
              minibatch_rows gives each inner epoch's shuffled minibatches

Each takes and returns values; the runners (jaxgen.train.grpo, jaxgen.train.flow_grpo) hold the
sharded state and call them in order, and jaxgen.train.loop.run_rl drives the iterations.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxgen import parallel
from jaxgen.data import prompts as shapes_prompts
from jaxgen.data.readers import read_jsonl
from jaxgen.data.tokenizer import detokenize_reasoning
from jaxgen.errors import UserError
from jaxgen.models import janus
from jaxgen.rewards import RewardBatch
from jaxgen.sampling import scoring
from jaxgen.train import advantages as adv_lib
from jaxgen.train import policy_loss as loss_lib
from jaxgen.train import reflection as reflection_lib
from jaxgen.train.grpo_settings import ScoreSettings, UpdateSettings

# Rewards that read host pixels (the others use image tokens on device or only text).
HOST_IMAGE_REWARDS = {"geneval", "scene_graph_iou", "got_box_iou", "vlm_boxed"}


# ------------------------------------------------------------------- reference and update

def score_rollout(params, config, rollout, s: ScoreSettings):
    """(think_lp [B,T], image_lp [B,N], think_entropy [B,T], image_entropy [B,N])."""
    return scoring.sequence_logprobs_and_entropy(
        params, config, rollout, s.cfg_mode, s.cfg_weight, s.uncond_hides,
        temperature=s.temperature, image_temperature=s.image_temperature)


def grpo_objective(params, config, batch, entropy_coefs, u: UpdateSettings, normalisers=None):
    """Scalar loss and metrics of one minibatch's reasoning and image tokens.

    batch: dict(rollout, adv [B], keep [B], old_think, old_image (ignored when detached),
    ref_think, ref_image (None without KL)); normalisers: the whole minibatch's denominators
    when `batch` is one of its micro-batches (policy_loss.loss_normalisers).
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
    policy_loss = loss_lib.get_policy_loss(u.policy_loss)
    return policy_loss(text, image, batch["adv"], batch["keep"], u.loss, entropy_coefs[0],
                       entropy_coefs[1], normalisers=normalisers)


def self_eval_objective(params, config, batch, u: UpdateSettings, wait=0.0):
    """The self-reflection loop's answers (the policy judging its images): they take the image
    stream's advantage. batch as grpo_objective's, with batch['self_eval']; wait: a zero scalar
    the pass waits for (see update_step)."""
    return reflection_lib.self_eval_loss(
        params, config, dict(batch["self_eval"], codes=batch["rollout"].image_ids_bn),
        loss_lib.per_stream(batch["adv"])[1], loss_lib.per_stream(batch["keep"])[1],
        u.self_eval, u.loss.eps_low, u.loss.eps_high, wait=wait)


def microbatch_sums(loss_fn, params, batch, steps: int):
    """(loss, metrics, grads) of `loss_fn(params, micro) -> (loss, metrics)` summed over `steps`
    equal row slices of `batch` (a pytree with row-leading arrays), one slice's activations at a
    time (a scan). The sums equal the whole batch's values when each slice's loss and metrics
    are its share of the whole (normalised by the whole batch's denominators)."""
    micro = jax.tree.map(lambda x: x.reshape((steps, x.shape[0] // steps) + x.shape[1:]), batch)

    def one(p, mb):
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, mb)
        return loss, metrics, grads

    first = jax.tree.map(lambda x: x[0], micro)
    zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(one, params, first))

    def body(acc, mb):
        return jax.tree.map(jnp.add, acc, one(params, mb)), None

    sums, _ = jax.lax.scan(body, zeros, micro)
    return sums


def grpo_normalisers(batch, cfg: loss_lib.LossConfig) -> dict:
    """The whole minibatch's loss denominators (for gradient accumulation)."""
    rollout = batch["rollout"]
    return loss_lib.loss_normalisers(rollout.think_mask_bt, jnp.ones(rollout.image_ids_bn.shape),
                                     batch["keep"], cfg)


def update_step(params, opt_state, batch, entropy_coefs, *, config, settings, optimizer):
    """One optimizer step on a minibatch: (params, opt_state, metrics). With
    settings.accum_steps > 1 the gradient is summed over that many micro-batches."""
    if settings.accum_steps > 1:
        norms = grpo_normalisers(batch, settings.loss)
        loss, metrics, grads = microbatch_sums(
            lambda p, mb: grpo_objective(p, config, mb, entropy_coefs, settings, norms), params,
            batch, settings.accum_steps)
    else:
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
        out = []
        for _ in range(num_prompts):
            cat = self.categories[rng.integers(len(self.categories))] if self.categories else None
            md = shapes_prompts.sample_metadata(rng, self.split, cat)
            out.append({"prompt": md["prompt"], "metadata": md})
        return out


# ------------------------------------------------------------------------------ rewards


def resolve_judges(node, judge_path: str):
    """Replace kwargs judge='judge' by the config's judge checkpoint path."""
    if isinstance(node, dict):
        node = {k: resolve_judges(v, judge_path) for k, v in node.items()}
        kw = node.get("kwargs")
        if isinstance(kw, dict) and kw.get("judge") == "judge":
            if not judge_path:
                raise UserError("a reward uses judge='judge' but judge_checkpoint is empty; set "
                                "--config.judge_checkpoint=DIR (a jaxgen checkpoint)")
            node["kwargs"] = dict(kw, judge=judge_path)
        return node
    if isinstance(node, list):
        return [resolve_judges(v, judge_path) for v in node]
    return node


def leaf_names(node) -> set:
    if isinstance(node, dict):
        if "name" in node:
            return {node["name"]}
        return set().union(*[leaf_names(t) for t in node.get("terms", [])])
    return set()




@dataclasses.dataclass
class RewardOutput:
    """The reward stage's result for B rows."""
    total: np.ndarray  # float32[B], the tree's value
    streams: np.ndarray  # float32[B, K], the top-level sum's terms (unweighted)
    weights: Any  # their weights
    reasoning: list  # the decoded reasoning text of each row
    images: Any = None  # uint8[B, H, W, 3] host pixels when a reward needed them
    text: tuple | None = None  # (total, streams, weights) of grpo.text_rewards, if any


def score_rewards(reward, text_reward, tokenizer, mesh, think_ids_bt, think_mask_bt,
                  image_tokens_bn, texts, metadata, images=None) -> RewardOutput:
    """Run the reward tree (and the reasoning tokens' tree, when given) on one rollout.

    Host copies are whole on every process (parallel.to_host, a collective), so each host
    computes the same rewards and advantages."""
    reasoning = detokenize_reasoning(tokenizer, *parallel.to_host((think_ids_bt, think_mask_bt)))
    if images is not None:
        images = parallel.to_host(images)
    if jax.process_count() > 1:  # NumPy rewards read them: a replica on every host
        image_tokens_bn = jax.device_put(image_tokens_bn, parallel.replicated(mesh))
    batch = RewardBatch(prompts=texts, reasoning=reasoning, metadata=metadata, images=images,
                        image_tokens=image_tokens_bn)
    total, streams, weights = reward(batch)
    text = None if text_reward is None else text_reward(batch)
    return RewardOutput(total, streams, weights, reasoning, images, text)


# --------------------------------------------------------------------------- advantages


def group_advantages(streams, weights, group_size: int, grpo_config, negative_scale: float):
    """(float32[B] advantages, float32[B] keep weights) of one reward tree's streams, with the
    config's estimator, per-reward normalisation, dynamic sampling, clip and negative scale."""
    g = grpo_config
    adv, keep, _ = adv_lib.compute_advantages(
        streams, group_size, g.advantage, weights=weights,
        per_reward_norm=bool(g.per_reward_norm), dynamic_sampling=bool(g.dynamic_sampling),
        dynamic_sampling_tol=float(g.get("dynamic_sampling_tol", 1e-6)),
        clip=float(g.advantage_clip), negative_scale=negative_scale)
    return np.asarray(adv, np.float32), np.asarray(keep, np.float32)


def reflection_advantages(rqa_rows, refl, max_images: int, reward_weights, advantages_fn):
    """Advantages of the self-reflection trajectories, spread over their image rows.

    rqa_rows: float[T * B] the reward tree's R_QA of every image (rollout row order);
    advantages_fn(streams [B, 2], weights) -> (adv [B], keep [B]). Returns (adv [T*B],
    keep [T*B] (0 for images the loop did not produce), r_final [B] (the delivered image's R_QA:
    the run's reward curve), metrics)."""
    t = max_images
    tr = reflection_lib.trajectory_rewards(rqa_rows, refl)
    weights = np.asarray(reward_weights, np.float32)
    adv_b, keep_b = advantages_fn(np.stack([tr["r_gen"], tr["r_comp"]], axis=1), weights)
    adv = np.tile(adv_b, t).astype(np.float32)
    keep = (np.tile(keep_b, t) * refl.rows(refl.active)).astype(np.float32)
    active = refl.active.astype(bool)
    metrics = {"reward/r_gen": float(tr["r_gen"].mean()),
               "reward/r_comp": float(tr["r_comp"].mean()),
               "reward/r_qa": float(np.asarray(rqa_rows).mean()),
               "reflection/num_images": float(refl.num_images.mean()),
               "reflection/self_eval": float(refl.self_eval[active].mean()),
               "reflection/said_yes": float(refl.said_yes[active].mean())}
    return adv, keep, tr["r_final"], metrics


# ------------------------------------------------------------------------------ update


def minibatch_rows(seed: int, iteration: int, rows: int, minibatches: int,
                   inner_epochs: int) -> list:
    """The row indices of each optimizer step of one update: inner_epochs x minibatches sorted
    int32 arrays, each epoch a fresh shuffle from (seed, iteration) so a resumed run repeats it;
    [None] * inner_epochs (every row, unshuffled) when there is one minibatch."""
    if minibatches == 1:
        return [None] * inner_epochs
    rng = np.random.default_rng([seed, iteration, 7])
    size = rows // minibatches
    out = []
    for _ in range(inner_epochs):
        order = rng.permutation(rows)
        out += [np.sort(order[k * size:(k + 1) * size]).astype(np.int32)
                for k in range(minibatches)]
    return out


def mean_metrics(history: list) -> dict:
    """The mean of each metric over an update's optimizer steps."""
    return {k: float(np.mean([float(h[k]) for h in history])) for k in history[0]}


def reward_summary(history: list, start: int, total: int) -> dict:
    rewards = [h["reward_mean"] for h in history]
    return {"steps": total, "start_step": start, "reward_per_step": rewards,
            "first_reward": rewards[0] if rewards else None,
            "last_reward": rewards[-1] if rewards else None}
