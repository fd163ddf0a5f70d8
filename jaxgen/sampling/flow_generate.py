"""Reasoning, then an image from the flow decoder: the diffusion path's sampler.

    prompt --(LLM, KV-cache sampler)--> chain of thought --> [prompt; reasoning; <boi>; queries]
           --(LLM)--> query hidden states --(connector)--> context --(DiT, ODE or SDE)--> latents
           --(nearest codes, VQ decoder)--> pixels

The chain of thought is the token sampler's think phase (same stop rules and log-prob convention
as jaxgen.sampling.sampler). Classifier-free guidance: the unconditional context comes from the
same text with every token but BOS and <begin_of_image> replaced by pad (prompt and reasoning
hidden, as the flow trainer's condition dropout does), and v = v_u + w (v_c - v_u) in one
batched DiT call per step. Everything runs in one jitted function per (configs, options, shapes).
"""

from __future__ import annotations

import dataclasses
import functools

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.errors import PromptTooLongError, UserError
from jaxgen.models import flow
from jaxgen.models.config import JanusConfig
from jaxgen.sampling import flow as flow_sampling
from jaxgen.sampling import sampler as token_sampler


@dataclasses.dataclass(frozen=True)
class FlowSampleOptions:
    """How to sample on the diffusion path (static argument of the jitted sampler)."""
    max_think_tokens: int = 0  # 0: no chain of thought
    temperature: float = 1.0  # reasoning tokens
    cfg_weight: float = 3.0  # 1.0: no unconditional pass
    num_steps: int = 20  # Euler steps from t = 1 to 0
    shift: float = 1.0  # SD3 timestep shift (1: uniform grid)
    noise_level: float = 0.0  # 0: the ODE; > 0: Flow-GRPO's SDE with the ODE's marginals
    snap: bool = True  # decode through the nearest VQ codes (else the latents directly)

    def __post_init__(self):
        if self.max_think_tokens < 0:
            raise UserError(f"max_think_tokens must be >= 0, got {self.max_think_tokens}")
        if self.temperature <= 0:
            raise UserError(f"temperature must be > 0, got {self.temperature}")
        if self.num_steps < 1:
            raise UserError(f"num_steps must be >= 1, got {self.num_steps}")
        if self.noise_level < 0:
            raise UserError(f"noise_level must be >= 0, got {self.noise_level}")

    def token_options(self) -> token_sampler.SampleOptions:
        return token_sampler.SampleOptions(max_think_tokens=self.max_think_tokens,
                                           temperature=self.temperature)


@flax.struct.dataclass
class FlowRollout:
    """One sampling call (T reasoning slots, K flow steps)."""
    prefix_ids_bp: jax.Array  # int32 [B, L + T + 1]: [prompt; reasoning; <boi>], the DiT's text
    prefix_mask_bp: jax.Array  # bool [B, L + T + 1]
    think_ids_bt: jax.Array  # int32 [B, T]
    think_mask_bt: jax.Array  # bool [B, T]
    latents: jax.Array  # f32 [K + 1, B, h, w, C]: latents[0] the noise, latents[-1] the sample
    log_probs: jax.Array  # f32 [K, B]: each SDE step's log-prob (0 for ODE steps)
    timesteps: jax.Array  # f32 [K + 1] from 1 to 0
    codes_bn: jax.Array  # int32 [B, h*w]: the sample's nearest VQ codes


def unconditional_prefix(jc: JanusConfig, prefix_ids_bp):
    """The CFG unconditional text: only BOS and <begin_of_image> stay (mask unchanged)."""
    return token_sampler.unconditional_ids(jc, prefix_ids_bp, 0, "prompt_and_reasoning")


def contexts(janus_params, jc, flow_params, fc, prefix_ids_bp, prefix_mask_bp, cfg: bool):
    """DiT contexts: [B, N, D], or [2B, N, D] = [conditional; unconditional] with CFG."""
    ids, mask = prefix_ids_bp, prefix_mask_bp
    if cfg:
        ids = jnp.concatenate([ids, unconditional_prefix(jc, ids)], 0)
        mask = jnp.concatenate([mask, mask], 0)
    return flow.condition(janus_params, jc, flow_params, fc, ids, mask)


def guided_velocity(flow_params, fc, jc, x_bhwc, t_b, ctx, cfg_weight: float):
    """v_u + w (v_c - v_u) with ctx = [cond; uncond] (or plain v when w == 1)."""
    if float(cfg_weight) == 1.0:
        return flow.velocity(flow_params, fc, jc, x_bhwc, t_b, ctx)
    v = flow.velocity(flow_params, fc, jc, jnp.concatenate([x_bhwc, x_bhwc], 0),
                      jnp.concatenate([t_b, t_b], 0), ctx)
    v_c, v_u = jnp.split(v, 2, axis=0)
    return v_u + cfg_weight * (v_c - v_u)


def check_context(jc: JanusConfig, fc: flow.FlowConfig, prompt_len: int, max_think_tokens: int):
    """Raise PromptTooLongError unless prompt + reasoning + <boi> + queries fit the LLM."""
    need = prompt_len + max_think_tokens + 1 + fc.num_queries
    limit = jc.text.max_position_embeddings
    if need > limit:
        raise PromptTooLongError(
            f"prompt of {prompt_len} tokens + reasoning budget {max_think_tokens} + 1 "
            f"<begin_of_image> + {fc.num_queries} flow queries = {need} positions, more than the "
            f"model's context of {limit} (text.max_position_embeddings); shorten the prompt or "
            f"lower max_think_tokens to at most {max(limit - need + max_think_tokens, 0)}")


def generate_traced(janus_params, flow_params, ids_bl, mask_bl, rng, jc, fc, options,
                    sde_steps=None):
    """generate()'s traceable body (jit it with jc, fc, options static), e.g. inside a
    training runner's own jitted rollout with its SDE window `sde_steps`."""
    b = ids_bl.shape[0]
    rng_think, rng_noise, rng_sde = jax.random.split(rng, 3)
    t_max = options.max_think_tokens
    if t_max > 0:
        think_ids, think_mask, _ = token_sampler.think_phase(
            janus_params, jc, ids_bl, mask_bl, rng_think, options.token_options())
    else:
        think_ids, think_mask = jnp.zeros((b, 0), jnp.int32), jnp.zeros((b, 0), bool)
    prefix_ids, prefix_mask = token_sampler.prefix_ids_and_mask(jc, ids_bl, mask_bl, think_ids,
                                                                think_mask)
    cfg = float(options.cfg_weight) != 1.0
    ctx = contexts(janus_params, jc, flow_params, fc, prefix_ids, prefix_mask, cfg)
    ts = flow_sampling.timesteps(options.num_steps, options.shift)
    x1 = jax.random.normal(rng_noise, (b,) + flow.latent_shape(jc), jnp.float32)
    velocity_fn = functools.partial(guided_velocity, flow_params, fc, jc, ctx=ctx,
                                    cfg_weight=options.cfg_weight)
    out = flow_sampling.sample(velocity_fn, x1, ts,
                               rng=rng_sde if options.noise_level > 0 else None,
                               noise_level=options.noise_level, sde_steps=sde_steps)
    codes = flow.latents_to_codes(janus_params, jc, out.x0)
    return FlowRollout(prefix_ids_bp=prefix_ids, prefix_mask_bp=prefix_mask, think_ids_bt=think_ids,
                       think_mask_bt=think_mask, latents=out.latents, log_probs=out.log_probs,
                       timesteps=ts, codes_bn=codes)


_generate_jit = jax.jit(generate_traced, static_argnames=("jc", "fc", "options"))


def generate(janus_params, jc: JanusConfig, flow_params, fc: flow.FlowConfig, input_ids_bl,
             attention_mask_bl, rng, options: FlowSampleOptions = FlowSampleOptions()) -> FlowRollout:
    """Reasoning (optional) and a flow-decoded latent image for left-padded prompts [B, L]."""
    if not isinstance(options, FlowSampleOptions):
        raise UserError(f"options must be a FlowSampleOptions, got {type(options).__name__}")
    shape = np.shape(input_ids_bl)
    if len(shape) != 2 or np.shape(attention_mask_bl) != shape or shape[1] == 0:
        raise UserError(f"input_ids and attention_mask must both be [batch, length>0]; got {shape} "
                        f"and {np.shape(attention_mask_bl)}")
    check_context(jc, fc, shape[1], options.max_think_tokens)
    return _generate_jit(janus_params, flow_params, jnp.asarray(input_ids_bl),
                         jnp.asarray(attention_mask_bl), rng, jc=jc, fc=fc, options=options)


def decode_pixels(janus_params, jc, rollout: FlowRollout, snap: bool = True):
    """The rollout's images: pixels [B, H, W, 3] in about [-1, 1]."""
    return flow.latents_to_pixels(janus_params, jc, rollout.latents[-1], snap=snap)
