"""Rule-based rewards on hand-made cases: plan parsing, format, plan checks, R_RI, composition."""

import collections

import numpy as np
import pytest

from jaxgen.errors import UserError
from jaxgen.rewards import CompositeReward, RewardBatch, make_reward
from jaxgen.rewards import plan as plan_lib
from jaxgen.rewards import rules
from jaxgen.sampling.understanding import parse_boxed

PLAN = ("A <obj>red circle</obj> <box>(100,400),(300,600)</box> left of "
        "<obj>blue square</obj> <box>( 600 , 400 ),(800,600)</box>")
META = {"tag": "position", "prompt": "a red circle left of a blue square",
        "include": [{"class": "square", "count": 1, "color": "blue"},
                    {"class": "circle", "count": 1, "color": "red", "position": ["left of", 0]}],
        "exclude": []}


def _batch(reasoning, metadata=None, images=None):
    n = len(reasoning)
    return RewardBatch(prompts=["p"] * n, reasoning=list(reasoning),
                       metadata=list(metadata or [META] * n), images=images)


def test_parse_plan():
    objs = plan_lib.parse_plan(PLAN)
    assert [o.name for o in objs] == ["red circle", "blue square"]
    assert objs[1].box == (600.0, 400.0, 800.0, 600.0)
    assert plan_lib.parse_plan("no plan here") == []


@pytest.mark.parametrize("text,want", [
    (PLAN, 1.0),
    ("", 0.0),
    ("<obj>red circle</obj> and nothing else", 0.0),                          # box missing
    ("<obj>red circle</obj> <box>(300,400),(100,600)</box>", 0.0),            # x1 > x2
    ("<obj>red circle</obj> <box>(100,400),(300,1200)</box>", 0.0),           # off the grid
    ("<obj>red circle</obj> <box>(100,400),(300,600)</box> <obj>x", 0.0),     # dangling tag
])
def test_format_plan(text, want):
    assert make_reward("format", mode="plan")(_batch([text]))[0] == want


def test_format_caption():
    fn = make_reward("format", mode="caption", max_words=5)
    out = fn(_batch(["a red circle", "", "one two three four five six", "a <obj>x</obj>"]))
    np.testing.assert_array_equal(out, [1, 0, 0, 0])
    with pytest.raises(UserError, match="unknown format mode"):
        make_reward("format", mode="json")


def test_plan_prompt_match():
    swapped = PLAN.replace("(100,400),(300,600)", "(900,400),(990,600)")  # circle now right
    wrong_colour = PLAN.replace("red circle", "green circle")
    out = make_reward("plan_prompt_match")(_batch([PLAN, swapped, wrong_colour, "nothing"]))
    # checks: square count, circle count, circle-left-of-square relation
    np.testing.assert_allclose(out, [1.0, 2 / 3, 1 / 3, 0.0], rtol=1e-6)
    md = dict(META, exclude=[{"class": "triangle", "count": 1}])
    extra = PLAN + " <obj>triangle</obj> <box>(0,0),(10,10)</box>"
    out = make_reward("plan_prompt_match")(_batch([PLAN, extra], [md, md]))
    np.testing.assert_allclose(out, [1.0, 0.75], rtol=1e-6)


def test_plan_layout_rewards_plans_whose_boxes_do_not_overlap():
    """1 for a well-formed plan with pairwise-apart boxes, 0 for overlap or a broken plan; the
    SFT-style syntax (no spaces) reads the same; min_gap asks for free space between boxes."""
    sft_style = ("<obj>small red square</obj><box>(344,78),(562,297)</box> "
                 "<obj>large cyan circle</obj><box>(594,609),(953,969)</box>")
    overlapping = ("<obj>large cyan triangle</obj><box>(94,125),(453,484)</box> "
                   "<obj>small red square</obj><box>(328,297),(547,516)</box>")
    touching = PLAN.replace("(600,400)", "(300,400)").replace("( 600 , 400 )", "( 300 , 400 )")
    single = "<obj>small red circle</obj><box>(109,109),(328,328)</box>"
    texts = [PLAN, sft_style, overlapping, touching, single, "nothing", PLAN + " <obj>x"]
    out = make_reward("plan_layout")(_batch(texts))
    np.testing.assert_array_equal(out, [1, 1, 0, 1, 1, 0, 0])
    # PLAN's boxes are 300 apart along x; sft_style's 32 along x and 312 along y
    gapped = make_reward("plan_layout", min_gap=200)(_batch([PLAN, sft_style, touching]))
    np.testing.assert_array_equal(gapped, [1, 1, 0])
    assert make_reward("plan_layout", min_gap=400)(_batch([PLAN]))[0] == 0.0
    with pytest.raises(UserError, match="min_gap"):
        make_reward("plan_layout", min_gap=-1)


def test_plan_layout_can_hold_boxes_square_and_to_their_size_words():
    """max_aspect and size_sides close the shortcut of stretching or shrinking boxes apart."""
    square = "<obj>small red circle</obj><box>(100,100),(320,320)</box>"
    stretched = "<obj>small blue triangle</obj><box>(719,516),(938,875)</box>"  # 219 x 359
    shrunk = "<obj>large red square</obj><box>(500,500),(650,650)</box>"  # 150 for 'large'
    texts = [square, stretched, shrunk, square + " " + shrunk]
    np.testing.assert_array_equal(make_reward("plan_layout")(_batch(texts)), [1, 1, 1, 1])
    np.testing.assert_array_equal(
        make_reward("plan_layout", max_aspect=1.2)(_batch(texts)), [1, 0, 1, 1])
    sized = make_reward("plan_layout", size_sides={"small": 220, "large": 360})
    np.testing.assert_array_equal(sized(_batch(texts)), [1, 0, 0, 0])
    with pytest.raises(UserError, match="max_aspect"):
        make_reward("plan_layout", max_aspect=-2)


def test_draw_plan():
    img = plan_lib.draw_plan(plan_lib.parse_plan(PLAN), 20)
    assert img.shape == (20, 20, 3) and img.dtype == np.uint8
    assert tuple(img[10, 4]) == plan_lib.COLOURS["red"]     # inside the circle's box (2..6)
    assert tuple(img[10, 14]) == plan_lib.COLOURS["blue"]   # inside the square's box (12..16)
    assert tuple(img[0, 0]) == (255, 255, 255)


Det = collections.namedtuple("Det", "shape color size texture box_xyxy")


def test_plan_image_iou_by_hand():
    objs = plan_lib.parse_plan(PLAN)  # on a 100 px image: circle (10,40,30,60), square (60,40,80,60)
    dets = [Det("circle", "red", "small", None, (10, 40, 30, 60)),        # exact: IoU 1
            Det("square", "blue", "small", None, (70, 40, 90, 60)),       # half overlap: 1/3
            Det("square", "green", "small", None, (60, 40, 80, 60))]      # wrong colour
    got = rules.plan_image_iou(objs, dets, 100, 100)
    np.testing.assert_allclose(got, (1.0 + (10 * 20) / (2 * 400 - 200)) / 2, rtol=1e-6)
    assert rules.plan_image_iou(objs, [], 100, 100) == 0.0
    assert rules.plan_image_iou([], dets, 100, 100) == 0.0


@pytest.mark.parametrize("text,want", [
    ("The image shows two cubes. \\boxed{1}", 1.0),
    ("wrong colour, so \\boxed{0}", 0.0),
    ("\\boxed{ 1 }", 1.0),
    ("\\boxed{\\text{yes}}", 1.0),
    ("first \\boxed{1} then on reflection \\boxed{0}", 0.0),   # the last box wins
    ("boxed{1.0}", 1.0),
    ("no box at all", 0.0),
    ("\\boxed{maybe}", 0.0),
])
def test_parse_boxed(text, want):
    assert parse_boxed(text) == want
    assert parse_boxed("nothing", default=0.5) == 0.5


def test_composite_sum_and_product():
    spec = {"op": "sum", "terms": [
        {"name": "format", "weight": 0.5, "kwargs": {"mode": "plan"}},
        {"op": "product", "weight": 2.0, "terms": [
            {"name": "plan_prompt_match"},
            {"name": "constant", "weight": 3.0, "kwargs": {"value": 0.5}}]}]}
    reward = CompositeReward(spec)
    batch = _batch([PLAN, "nothing"])
    total, streams, weights = reward(batch)
    np.testing.assert_allclose(streams, [[1.0, 1.5], [0.0, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(total, [0.5 + 2 * 1.5, 0.0], rtol=1e-6)
    assert weights == [0.5, 2.0]
    assert reward.stream_names == ["format", "product(plan_prompt_match,constant)"]
    assert set(reward.timings) == {"format", "plan_prompt_match", "constant"}
    with pytest.raises(UserError, match="unknown reward 'nope'"):
        CompositeReward({"name": "nope"})
    with pytest.raises(UserError, match="op 'max'"):
        CompositeReward({"op": "max", "terms": [{"name": "constant"}]})


def test_pixel_rewards_need_images():
    with pytest.raises(UserError, match="needs decoded images"):
        make_reward("got_box_iou")(_batch([PLAN]))


def test_random_control_is_uniform_and_a_function_of_the_sample():
    """Values in [0, 1), uniform over 4000 samples (mean and quartiles within 0.02), the same
    for the same sample (a resumed run sees them again), different when any part of the sample
    or the seed changes."""
    rng = np.random.default_rng(0)
    n = 4000
    tokens = rng.integers(0, 256, (n, 16), dtype=np.int32)
    batch = RewardBatch(prompts=["a red circle"] * n, reasoning=["plan"] * n, metadata=[{}] * n,
                        image_tokens=tokens)
    values = make_reward("random_control")(batch)
    assert values.dtype == np.float32 and values.min() >= 0.0 and values.max() < 1.0
    assert abs(values.mean() - 0.5) < 0.02
    np.testing.assert_allclose(np.quantile(values, [0.25, 0.5, 0.75]), [0.25, 0.5, 0.75],
                               atol=0.02)
    np.testing.assert_array_equal(make_reward("random_control")(batch), values)
    assert not np.any(make_reward("random_control", seed=1)(batch) == values)
    first = RewardBatch(prompts=["a red circle"] * 4, reasoning=["plan"] * 4, metadata=[{}] * 4,
                        image_tokens=np.stack([tokens[0]] * 4))
    same = make_reward("random_control")(first)
    assert np.all(same == values[0])
    changed = [first, RewardBatch(prompts=["a blue circle"], reasoning=["plan"], metadata=[{}],
                                  image_tokens=tokens[:1]),
               RewardBatch(prompts=["a red circle"], reasoning=["plan!"], metadata=[{}],
                           image_tokens=tokens[:1]),
               RewardBatch(prompts=["a red circle"], reasoning=["plan"], metadata=[{}],
                           images=np.zeros((1, 8, 8, 3), np.uint8))]
    outs = [float(make_reward("random_control")(b)[0]) for b in changed[1:]]
    assert len({float(values[0]), *outs}) == 4


def test_host_rewards_are_the_rules_module_registrations():
    """The GRPO benchmark times these as host work; a new NumPy reward joins without a list."""
    from jaxgen.rewards.base import defined_in
    host = defined_in("jaxgen.rewards.rules")
    assert {"geneval", "plan_layout", "random_control", "constant"} <= set(host)
    assert not {"vlm_caption", "vq_consistency"} & set(host)
