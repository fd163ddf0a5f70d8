"""Rewards for GRPO: a registry of `fn(RewardBatch) -> float32[B]` and their composition.

Built-in rewards (name: what it scores):
  format            reasoning syntax (GoT-R1 plan or caption)
  geneval           ShapesWorld GenEval-style detector, 1 if every constraint holds (Flow-GRPO)
  scene_graph_iou   SG-IoU between the image's scene graph and the prompt's
  plan_prompt_match rule check of the layout plan against the prompt metadata
  plan_layout       the plan is well formed and its boxes do not overlap (reads only the plan)
  got_box_iou       GoT-R1 R_RI: planned boxes vs detected boxes
  vlm_yes_no        VLM judge P(yes)/(P(yes)+P(no)) (T2I-R1, Janus-Pro-R1 R_QA)
  vlm_caption       VLM judge: how much the image raises the prompt's likelihood as its
                    description, nats per token (VisualGPTScore-style; the demo's reward
                    with 3 x vq_consistency)
  vlm_boxed         VLM judge answer ending in \\boxed{0/1} (ReasonGen-R1)
  vlm_crop          VLM judge on each planned object, cut out and zoomed: P(its planned name)
                    against "Malformed drawing." and "Nothing." (a region check, GoT-R1-style)
  got_semantic, got_spatial, got_prompt_image   GoT-R1 R_sem, R_spa, R_PI
  vq_consistency    share of image codes that survive decode -> encode through the policy's VQ
                    (label-free drawing quality)
  constant          a constant
  random_control    uniform noise hashed from the sample: a control run's reward (how far GRPO
                    drifts on no information)
Compose them with `CompositeReward(spec, context)`; see jaxgen.rewards.base.
"""

from jaxgen.rewards.base import (CompositeReward, RewardBatch, RewardContext,  # noqa: F401
                                 available, make_reward, register_reward)


# importing the modules registers the built-ins
from jaxgen.rewards import crop_judge, rules, tokenizer_consistency, vlm_judge  # noqa: F401,E402
