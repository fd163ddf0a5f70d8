"""eval: pixel-only ShapesWorld evaluator.

detector     detect(image) -> [Detection(shape, color, size, texture, box_xyxy)]
geneval      score(image, metadata) -> dict(correct, reason, score)  (GenEval / T2I-CompBench)
scene_graph  extract(image) -> graph; sg_scores(pred, gt) -> dict(sg_iou, entity_iou, relation_iou)
perturb      generator-like perturbations used to test robustness
report       category_table(results) -> (markdown, dict)
plan_ceiling a sample's own layout plan drawn by the renderer and scored
compare      held-out SFT vs GRPO comparison and the demo's report
stats        paired bootstrap interval of an accuracy difference
cli          `jaxgen eval images --dir DIR`
"""
