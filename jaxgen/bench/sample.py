"""`jaxgen bench sample`: image-token sampling throughput, jaxgen vs transformers, same weights.

Builds a random Hugging Face JanusForConditionalGeneration from a jaxgen model config (default
`configs/janus.py:shapes`: Llama 4 layers x 256 wide, 64 image tokens), saves it, imports it
with `jaxgen.convert.hf.import_hf_dir`, then times CFG image-token generation (batch 8, weight 5,
temperature-1 sampling) with `JanusForConditionalGeneration.generate(generation_mode="image")`
and with `jaxgen.sampling.sample`, in the same process on the same prompts. jaxgen's first call
(trace + compile + run) is reported apart and excluded from its throughput.

    jaxgen bench sample                      # CPU: about a minute; prints both rates and the ratio
    jaxgen bench sample --batch 16 --config.model.text.num_hidden_layers=8
Goal on CPU: jaxgen >= 5x transformers tokens/s.
"""

from __future__ import annotations

import copy
import pathlib
import statistics
import tempfile
import time

import jax
import numpy as np
from tqdm import tqdm

from jaxgen.bench import require_torch
from jaxgen.config import load_config
from jaxgen.convert.hf import (generation_config_dict, hf_compatible, import_hf_dir,
                               jaxgen_config_to_hf)
from jaxgen.errors import UserError
from jaxgen.models.janus import config_from_configdict
from jaxgen.sampling.sampler import SampleOptions
from jaxgen.sampling.sampler import sample as jax_sample


def sample_args(parser):
    parser.add_argument("--model-config", default="janus:shapes",
                        help="jaxgen model config (configs/<family>.py:<arg>); --config.model.* "
                             "overrides apply")
    parser.add_argument("--batch", type=int, default=8, help="prompts per call (CFG doubles rows)")
    parser.add_argument("--prompt-len", type=int, default=16, help="prompt tokens incl. BOS")
    parser.add_argument("--cfg-weight", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per implementation")
    parser.add_argument("--seed", type=int, default=0)


def hf_model(config, seed):
    """A random Hugging Face JanusForConditionalGeneration of the jaxgen `config` (seeded)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    hf_config = transformers.JanusConfig.from_dict(jaxgen_config_to_hf(config))
    model = transformers.JanusForConditionalGeneration(hf_config).eval()
    for k, v in generation_config_dict(config).items():
        setattr(model.generation_config, k, v)
    return model


def _time_calls(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def sample(args) -> int:
    torch = require_torch()
    if args.batch < 1 or args.repeats < 1 or args.prompt_len < 1:
        raise UserError("--batch, --repeats and --prompt-len must be >= 1")
    config = hf_compatible(config_from_configdict(load_config(args.model_config,
                                                              args.config_overrides)))
    n = config.num_image_tokens
    model = hf_model(config, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(pathlib.Path(tmp), safe_serialization=True)
        params, jconfig, _ = import_hf_dir(tmp)

    rng = np.random.default_rng(args.seed)
    ids = rng.integers(0, min(config.boi_token_id, config.image_token_id, config.pad_token_id),
                       (args.batch, args.prompt_len)).astype(np.int32)
    ids[:, 0] = config.bos_token_id
    mask = np.ones_like(ids, bool)
    tokens = args.batch * n
    print(f"model: {config.text.num_hidden_layers} layers x {config.text.hidden_size}, "
          f"{n} image tokens; batch {args.batch} (x2 rows with CFG {args.cfg_weight}), prompt "
          f"{args.prompt_len} tokens; torch threads {torch.get_num_threads()}, "
          f"jax devices {jax.devices()}")

    # transformers: prompt ends with <begin_of_image>; one untimed warm-up call.
    gc = copy.deepcopy(model.generation_config)
    gc.do_sample, gc.guidance_scale = True, args.cfg_weight
    hf_ids = torch.tensor(np.concatenate([ids, np.full((args.batch, 1), config.boi_token_id)], 1),
                          dtype=torch.long)

    def hf_call():
        with torch.no_grad():
            return model.generate(hf_ids, attention_mask=torch.ones_like(hf_ids),
                                  generation_config=gc, generation_mode="image")

    progress = tqdm(total=2 * (args.repeats + 1), desc="bench sample", unit="call")
    hf_call()
    progress.update()
    hf_times = []
    for _ in range(args.repeats):
        hf_times += _time_calls(hf_call, 1)
        progress.update()

    options = SampleOptions(cfg_weight=args.cfg_weight)
    key = jax.random.PRNGKey(args.seed)

    def jax_call():
        return jax.block_until_ready(jax_sample(params, jconfig, ids, mask, key, options))

    first = _time_calls(jax_call, 1)[0]
    progress.update()
    jax_times = []
    for _ in range(args.repeats):
        jax_times += _time_calls(jax_call, 1)
        progress.update()
    progress.close()

    hf_rate = tokens / statistics.median(hf_times)
    jax_rate = tokens / statistics.median(jax_times)
    print(f"transformers generate(image): {hf_rate:10.1f} image tokens/s "
          f"(median of {args.repeats}: {statistics.median(hf_times):.3f} s/call)")
    print(f"jaxgen sample:                {jax_rate:10.1f} image tokens/s "
          f"(median of {args.repeats}: {statistics.median(jax_times):.3f} s/call; first call incl. "
          f"compile {first:.2f} s, excluded)")
    print(f"ratio jaxgen / transformers: {jax_rate / hf_rate:.2f}x (goal >= 5x on CPU)")
    return 0
