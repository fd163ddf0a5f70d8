"""Every recipe and GRPO config variant loads, states its command, and builds its reward tree."""

import pytest

from jaxgen.config import load_config
from jaxgen.data.prompts import CATEGORIES
from jaxgen.rewards import CompositeReward, RewardContext
from jaxgen.rewards.base import plain_spec
from jaxgen.train import grpo, grpo_stages

RECIPES = ["reasongen_r1", "t2i_r1", "janus_pro_r1", "got_r1"]


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("arg", ["7b", "1b", "shapes"])
def test_recipe_loads_and_builds_rewards(recipe, arg):
    c = load_config(f"configs/recipes/{recipe}.py:{arg}")
    spec = grpo_stages.resolve_judges(plain_spec(c.rewards), "JUDGE")
    reward = CompositeReward(spec, RewardContext(judges={"JUDGE": object()}))
    assert reward.stream_names
    assert c.grpo.cfg_mode in grpo.CFG_MODES
    assert c.grpo.old_logprobs in grpo.OLD_LOGPROBS
    if arg == "shapes":
        assert c.model.text.hidden_size == 256 and c.total_steps <= 50
        assert (c.grpo.group_size * c.grpo.prompts_per_step) % 8 == 0
    else:
        assert c.model.text.vocab_size == 102400


def test_paper_hyperparameters():
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
    assert CompositeReward(grpo_stages.resolve_judges(plain_spec(g.rewards), "J"),
                           RewardContext(judges={"J": object()})).stream_names == [
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
    assert set(c.data.categories) <= set(CATEGORIES) and len(c.data.categories) == 4
