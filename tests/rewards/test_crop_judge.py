"""The 'vlm_crop' reward on a tiny random judge: each planned object's crop scored against an
unpadded single-row forward pass written out here; in-graph VQ decoding against host images."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.data import judge as judge_data
from jaxgen.data import templates
from jaxgen.data.crops import crop_uint8
from jaxgen.data.reasoning import from_grid
from jaxgen.errors import UserError
from jaxgen.rewards import RewardBatch, RewardContext, make_reward
from tests.helpers.tiny_judge import decoding_context, row_logits

# `tiny`: (config, params, tokenizer, judge) of the tiny random model, tests/rewards/conftest.py

PLANS = [
    "<obj>large red square</obj><box>(60,60),(440,440)</box>"
    "<obj>small blue triangle</obj><box>(620,620),(840,840)</box>",
    "not a plan",
    "<obj>small cyan circle</obj><box>(100,600),(320,820)</box>"
    "<obj>large green striped circle</obj><box>(500,60),(880,440)</box>"
    "<obj>small red triangle</obj><box>(640,640),(860,860)</box>",
]
OBJECTS = [[("red square", (60, 60, 440, 440)), ("blue triangle", (620, 620, 840, 840))], [],
           [("cyan circle", (100, 600, 320, 820)), ("green striped circle", (500, 60, 880, 440))]]


def _manual_object_score(params, config, tok, crop_uint8_hwc, name):
    """softmax(log p(name + <eos>), log p(first token 'Malformed'), log p(first token
    'Nothing'))[0], from one unpadded row, log-softmax in float64."""
    text = templates.understanding_prompt(judge_data.CROP_QUESTION, "<bos>",
                                          config.vision.num_image_tokens)
    prompt = tok.encode(text, add_special_tokens=False)
    ans = tok.encode(name, add_special_tokens=False) + [config.eos_token_id]
    logits = np.asarray(row_logits(params, config, jnp.asarray([prompt + ans], jnp.int32),
                                    jnp.asarray(crop_uint8_hwc) / 127.5 - 1), np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    first = logp[len(prompt) - 1]
    scores = [sum(logp[len(prompt) - 1 + t, a] for t, a in enumerate(ans)),
              first[tok.encode("Malformed", add_special_tokens=False)[0]],
              first[tok.encode("Nothing", add_special_tokens=False)[0]]]
    return float(np.exp(scores[0]) / np.exp(scores).sum())


def test_crop_reward_matches_manual_per_object_scores(tiny):
    config, params, tok, judge = tiny
    images = np.random.default_rng(2).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    ctx = RewardContext(judges={"tiny": judge})
    batch = RewardBatch(prompts=["p"] * 3, reasoning=PLANS, metadata=[{}] * 3, images=images)
    got = np.asarray(make_reward("vlm_crop", ctx, judge="tiny", max_objects=2)(batch))
    for i, objects in enumerate(OBJECTS):
        scores = []
        for name, box in objects:
            crop = crop_uint8(images[i:i + 1], np.asarray([from_grid(box, 16)], np.float32), 16)
            scores.append(_manual_object_score(params, config, tok, crop[0], name))
        want = np.mean(scores) if scores else 0.0  # the third object is past max_objects
        np.testing.assert_allclose(got[i], want, rtol=1e-4, atol=1e-6)
    assert got[1] == 0.0 and 0 < got[0] < 1


def test_crop_reward_decodes_codes_in_graph(tiny):
    ctx, codes, host = decoding_context(tiny, 6)
    fn = make_reward("vlm_crop", ctx, judge="tiny")
    kw = dict(prompts=["p"] * 2, reasoning=[PLANS[0], PLANS[2]], metadata=[{}] * 2)
    np.testing.assert_allclose(np.asarray(fn(RewardBatch(image_tokens=codes, **kw))),
                               np.asarray(fn(RewardBatch(images=host, **kw))), rtol=1e-4, atol=1e-5)


def test_crop_reward_needs_distinct_answers_and_images(tiny):
    config, params, tok, judge = tiny
    ctx = RewardContext(judges={"tiny": judge})
    with pytest.raises(UserError, match="images or image tokens"):
        make_reward("vlm_crop", ctx, judge="tiny")(
            RewardBatch(prompts=["p"], reasoning=[PLANS[0]], metadata=[{}]))
    original = judge.tokenizer.encode
    judge.tokenizer.encode = lambda text, **kw: [0] + original(text, **kw)  # every answer: <unk>
    try:
        with pytest.raises(UserError, match="same token"):
            make_reward("vlm_crop", RewardContext(judges={"tiny2": judge}), judge="tiny2")
    finally:
        judge.tokenizer.encode = original
