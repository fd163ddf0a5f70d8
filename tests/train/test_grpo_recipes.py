"""Every recipe and GRPO config variant loads and states its settings, and every distinct reward
tree of the recipes and of the demo's GRPO evaluates on a real tiny batch: ShapesWorld prompts,
their layout plans, rendered images and the tiny policy's VQ codes of them, judged by a tiny
random judge loaded from a saved jaxgen checkpoint with each recipe's own judge kwargs."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from jaxgen import checkpoint as ckpt_lib
from jaxgen import parallel
from jaxgen.config import load_config
from jaxgen.data import prompts as prompts_lib
from jaxgen.data import reasoning, shapes_world
from jaxgen.models import janus
from jaxgen.rewards import CompositeReward, RewardBatch, RewardContext
from jaxgen.rewards.base import plain_spec
from jaxgen.train import grpo, grpo_stages
from tests.helpers.tiny_models import tiny_janus
from tests.helpers.tiny_tokenizer import make_tokenizer

RECIPES = ["reasongen_r1", "t2i_r1", "janus_pro_r1", "got_r1"]
VARIANTS = ["7b", "1b", "shapes"]
DEMO = "demo"
# Rewards that ask the judge about the generated image (its pixels or its VQ codes): their value
# must change when the image does.
IMAGE_JUDGES = {"vlm_yes_no", "got_prompt_image", "vlm_caption", "vlm_boxed"}
PROMPTS, GROUP = 4, 2  # 4 prompts x 2 samples: the prompt's own drawing, then another prompt's
BATCH_CATEGORIES = ("two_object", "counting", "position", "color_attr")
CANVAS = 64  # the renders the detector rewards read


def _rewards(name: str, arg: str | None):
    if name == DEMO:
        return load_config("configs/demo.py").grpo.rewards
    return load_config(f"configs/recipes/{name}.py:{arg}").rewards


def _distinct_trees():
    """{tree id: plain spec}: one entry per distinct reward tree (many variants share one); the
    id names every variant that uses it."""
    trees, names = {}, {}
    sources = [(r, a) for r in RECIPES for a in VARIANTS] + [(DEMO, None)]
    for name, arg in sources:
        spec = plain_spec(_rewards(name, arg))
        key = json.dumps(spec, sort_keys=True)
        trees.setdefault(key, spec)
        names.setdefault(key, []).append(name if arg is None else f"{name}:{arg}")
    return {"+".join(names[k]): spec for k, spec in trees.items()}


TREES = _distinct_trees()


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    """A tiny random judge (janus:tiny from PRNGKey(1), not the policy) saved as a jaxgen
    checkpoint. ReasonGen-R1's 7b/1b judge asks questions of up to 256 tokens and answers up to
    256 (64 image placeholders on top): 576 positions, past janus:tiny's 512. The text model has
    no position table (RoPE), so the judge is the same model with a longer declared context and
    every recipe keeps its own judge kwargs."""
    config, params = tiny_janus(seed=1)
    config = dataclasses.replace(config, text=dataclasses.replace(
        config.text, max_position_embeddings=1024))
    return str(ckpt_lib.save_checkpoint(tmp_path_factory.mktemp("judge"), params, config,
                                        make_tokenizer(config.text.vocab_size)))


@pytest.fixture(scope="module")
def policy():
    """(JanusConfig, params, tokenizer) of the tiny policy whose VQ decodes the image tokens."""
    config, params = tiny_janus(seed=0)
    return config, params, make_tokenizer(config.text.vocab_size)


@pytest.fixture(scope="module")
def context(policy):
    """One RewardContext for every tree, as the GRPO runner builds it (judges loaded once per
    (checkpoint, kwargs) and shared)."""
    config, params, tok = policy
    mesh, layout = parallel.mesh_from_config(load_config("grpo:tiny").mesh)
    return RewardContext(mesh=mesh, layout=layout, policy_config=config,
                         policy_params_fn=lambda: params, policy_tokenizer=tok)


def _scenes():
    rng = np.random.default_rng(0)
    out = []
    for category in BATCH_CATEGORIES:
        metadata = prompts_lib.sample_metadata(rng, "train", category)
        out.append((metadata, shapes_world.scene_for(metadata, rng, CANVAS, avoid_heldout=True)))
    return out


@pytest.fixture(scope="module")
def batches(policy):
    """(batch, swapped): 4 ShapesWorld prompts x 2 samples; sample 0 is the prompt's own scene
    (its layout plan, its render), sample 1 the next prompt's scene (a wrong drawing). image_tokens
    are the tiny policy's VQ codes of the renders (int32[B, 64], its 8x8 grid). `swapped` is the
    same prompts with each group's two samples (plans, images, codes) exchanged."""
    config, params, _ = policy
    scenes = _scenes()
    rows = [(scenes[p][0], scenes[(p + s) % PROMPTS][1]) for p in range(PROMPTS)
            for s in range(GROUP)]
    images = np.stack([shapes_world.render(scene) for _, scene in rows])
    size = config.vq.image_size
    pixels = jax.image.resize(images.astype(np.float32) / 127.5 - 1.0,
                              (len(rows), size, size, 3), "bilinear")
    codes = np.asarray(jax.jit(janus.vq_encode, static_argnums=1)(params, config, pixels),
                       np.int32)
    assert codes.shape == (len(rows), config.num_image_tokens)

    def batch(order):
        return RewardBatch(prompts=[rows[i][0]["prompt"] for i in range(len(rows))],
                           reasoning=[reasoning.layout_plan(rows[i][1]) for i in order],
                           metadata=[rows[i][0] for i in range(len(rows))],
                           images=images[order], image_tokens=codes[order])

    own = np.arange(len(rows))
    return batch(own), batch(own.reshape(PROMPTS, GROUP)[:, ::-1].reshape(-1))


def _leaves(node):
    """Every leaf node of a built tree (CompositeReward.spec; each has its '_key')."""
    if "op" in node:
        return [leaf for t in node["terms"] for leaf in _leaves(t)]
    return [node]


def _loaded_judge(context, path, kwargs):
    """The judge load_judge loaded from `path` for a leaf with `kwargs` (keyed by the path and
    the kwargs it passed on to the judge: here max_text_tokens)."""
    found = [j for k, j in context.judges.items()
             if isinstance(k, tuple) and k[0] == path and set(k[1]) <= set(kwargs.items())]
    assert len(found) == 1, sorted(map(str, context.judges))
    assert found[0].max_text_tokens == kwargs["max_text_tokens"]  # the recipe's own kwargs
    return found[0]


def test_distinct_trees_cover_every_variant():
    named = [n for tree in TREES for n in tree.split("+")]
    assert sorted(named) == sorted([f"{r}:{a}" for r in RECIPES for a in VARIANTS] + [DEMO])
    assert len(TREES) < len(named)  # variants share trees: each is evaluated once


@pytest.mark.parametrize("tree", list(TREES))
def test_reward_tree_evaluates_on_a_real_batch(tree, judge_dir, context, batches, monkeypatch):
    batch, swapped = batches
    spec = grpo_stages.resolve_judges(TREES[tree], judge_dir)
    reward = CompositeReward(spec, context)
    total, streams, weights = reward(batch)
    b = len(batch)
    assert total.dtype == np.float32 and total.shape == (b,) and np.isfinite(total).all()
    assert streams.dtype == np.float32 and np.isfinite(streams).all()
    assert streams.shape == (b, len(reward.stream_names)) and len(weights) == streams.shape[1]
    np.testing.assert_allclose(total, streams @ np.asarray(weights, np.float32), rtol=1e-6)

    judged = [leaf for leaf in _leaves(reward.spec)
              if (leaf.get("kwargs") or {}).get("judge") == judge_dir]
    assert judged or not any("judge" in (leaf.get("kwargs") or {})
                             for leaf in _leaves(reward.spec))
    for leaf in judged:
        key, name = leaf["_key"], leaf["name"]
        judge = _loaded_judge(context, judge_dir, leaf["kwargs"])
        if name == "vlm_boxed":
            # a random judge writes no \boxed{...}: the reward is its `default` on every row, so
            # check that the judge really answered, and that its answers depend on the image
            answers = []
            real = judge.answer
            monkeypatch.setattr(judge, "answer", lambda *a, **k: answers.append(real(*a, **k))
                                or answers[-1])
            values = [np.asarray(reward.leaves[key](x)) for x in (batch, swapped)]
            assert all(set(v.tolist()) <= {0.0, 1.0} for v in values)
            assert len(answers) == 2 and all(len(a) == b for a in answers)
            assert answers[0] != answers[1], answers
            continue
        value = np.asarray(reward.leaves[key](batch), np.float32)
        again = np.asarray(reward.leaves[key](swapped), np.float32)
        assert np.isfinite(value).all() and np.ptp(value) > 1e-6, (key, value)
        if name in IMAGE_JUDGES:  # other images (and plans), other judgements
            assert np.abs(value - again).max() > 1e-6, (key, value, again)

    for leaf in _leaves(reward.spec):  # the rule rewards read the real batch
        if leaf["name"] not in ("geneval", "plan_prompt_match", "got_box_iou"):
            continue
        value = np.asarray(reward.leaves[leaf["_key"]](batch)).reshape(PROMPTS, GROUP)
        if leaf["name"] == "geneval":  # each prompt's own drawing passes, another's does not
            np.testing.assert_array_equal(value, [[1.0, 0.0]] * PROMPTS)
        if leaf["name"] == "plan_prompt_match":  # the share of the prompt's checks a plan meets
            assert (value[:, 0] == 1.0).all() and (value[:, 1] < 1.0).all(), value
        if leaf["name"] == "got_box_iou":  # every plan is the plan of the drawn scene
            assert (value > 0.5).all(), value


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("arg", VARIANTS)
def test_recipe_settings(recipe, arg):
    c = load_config(f"configs/recipes/{recipe}.py:{arg}")
    assert c.grpo.cfg_mode in grpo.CFG_MODES
    assert c.grpo.old_logprobs in grpo.OLD_LOGPROBS
    if arg == "shapes":
        assert c.model.text.hidden_size == 256 and c.total_steps <= 50
        assert (c.grpo.group_size * c.grpo.prompts_per_step) % 8 == 0
    else:
        assert c.model.text.vocab_size == 102400


def test_paper_hyperparameters(judge_dir, context):
    r = load_config("configs/recipes/reasongen_r1.py:7b")
    assert (r.grpo.group_size, r.optim.learning_rate, r.grpo.loss.beta, r.sampling.cfg_weight,
            r.grpo.entropy.text_target, r.grpo.entropy.image_target) == (8, 5e-6, 0.0, 1.0, 2.0, 7.0)
    t = load_config("configs/recipes/t2i_r1.py:7b")
    assert (t.grpo.group_size, t.optim.learning_rate, t.grpo.loss.beta, t.total_steps,
            t.grpo.cfg_mode) == (8, 1e-6, 0.01, 1600, "conditional")
    j = load_config("configs/recipes/janus_pro_r1.py:7b")
    assert (j.grpo.group_size, j.grpo.loss.beta, j.optim.learning_rate, j.optim.weight_decay,
            j.grpo.per_reward_norm) == (7, 0.05, 6e-6, 0.05, True)
    g = load_config("configs/recipes/got_r1.py:7b")
    assert g.grpo.group_size == 16 and g.total_steps == 1000
    # R = R_PI * (R_sem + R_spa) * R_RI is one stream
    assert CompositeReward(grpo_stages.resolve_judges(plain_spec(g.rewards), judge_dir),
                           context).stream_names == [
        "product(got_prompt_image,sum(got_semantic,got_spatial),got_box_iou)"]


@pytest.mark.parametrize("arg", ["shapes", "shapes_caption", "shapes_caption_vq",
                                 "shapes_detector", "tiny"])
def test_grpo_variants(arg):
    c = load_config(f"grpo:{arg}")
    assert c.grpo.group_size >= 2


def test_demo_grpo_rewards_with_the_judge_and_the_tokenizer():
    c = load_config("configs/demo.py").grpo
    spec = grpo_stages.resolve_judges(plain_spec(c.rewards), "J")
    assert spec["op"] == "sum"
    assert [(t["name"], float(t.get("weight", 1.0))) for t in spec["terms"]] == [
        ("vlm_caption", 1.0), ("vq_consistency", 3.0)]
    assert spec["terms"][0]["kwargs"]["judge"] == "J"
    assert set(c.data.categories) <= set(prompts_lib.CATEGORIES) and len(c.data.categories) == 4
