"""Pixel-only evaluator: detector, GenEval-style scores, scene-graph IoUs, report, CLI.

Accuracy figures asserted here (held-out test-split prompts, fixed seeds):
clean renderings >= 99% correct per category; generator-like perturbed renderings (blur, JPEG,
colour shift, noise, slight overlap) >= 95% per category; deliberately wrong renderings (one
colour / shape / count / relation changed) judged wrong >= 99% per category.
"""

import copy
import json

import numpy as np
import pytest
from PIL import Image

from jaxgen.cli import main
from jaxgen.data import prompts, shapes_world as sw
from jaxgen.eval import detector, geneval, perturb, report, scene_graph

N_PER_CATEGORY = 100


def _scenes(category, seed, n=N_PER_CATEGORY):
    rng = np.random.default_rng(seed)
    return rng, [prompts.sample_prompt(rng, "test", category) for _ in range(n)]


@pytest.mark.parametrize("category", prompts.CATEGORIES)
def test_accuracy_clean_perturbed_and_wrong(category):
    rng, samples = _scenes(category, seed=sum(map(ord, category)))
    clean = perturbed = wrong = n_wrong = 0
    for _, meta, scene in samples:
        clean += geneval.score(sw.render(scene), meta)["correct"]
        moved = perturb.overlap_scene(scene, rng) if rng.random() < 0.5 else scene
        perturbed += geneval.score(perturb.generator_like(sw.render(moved), rng), meta)["correct"]
        kinds = [k for k in prompts.PERTURBATIONS if prompts.perturb_metadata(meta, rng, k)]
        bad = prompts.perturb_metadata(meta, rng, kinds[rng.integers(len(kinds))])
        bad_image = sw.render(sw.scene_for(bad, rng, 64))
        n_wrong += 1
        wrong += not geneval.score(bad_image, meta)["correct"]
    n = len(samples)
    assert clean / n >= 0.99, (category, clean / n)
    assert perturbed / n >= 0.95, (category, perturbed / n)
    assert wrong / n_wrong >= 0.99, (category, wrong / n_wrong)


def test_detections_match_scene_attributes():
    rng = np.random.default_rng(0)
    hits = total = 0
    for _ in range(60):
        _, _, scene = prompts.sample_prompt(rng, "train", "cb_texture" if rng.random() < 0.3 else
                                       "cb_shape")
        dets = detector.detect(sw.render(scene))
        assert len(dets) == len(scene.objects)
        for o in scene.objects:
            total += 1
            hits += any(d.shape == o.shape and d.color == o.color and d.size == o.size
                        and d.texture == o.texture and np.allclose(d.box_xyxy, o.box, atol=1)
                        for d in dets)
    assert hits == total


def test_detector_at_256_pixels():
    rng = np.random.default_rng(1)
    for cat in ("color_attr", "cb_texture", "counting"):
        _, meta, scene = prompts.sample_prompt(rng, "test", cat, canvas=256)
        img = sw.render(scene)
        assert geneval.score(img, meta)["correct"]
        assert geneval.score(perturb.generator_like(img, rng), meta)["correct"]


def test_blank_and_bad_inputs():
    assert detector.detect(np.full((64, 64, 3), 240, np.uint8)) == []
    meta = prompts.sample_metadata(np.random.default_rng(0), "train", "single_object")
    r = geneval.score(np.full((64, 64, 3), 240, np.uint8), meta)
    assert not r["correct"] and "found 0" in r["reason"] and r["score"] == 0.0
    with pytest.raises(ValueError, match="RGB"):
        detector.detect(np.zeros((64, 64)))


def test_geneval_reasons_and_soft_score():
    rng = np.random.default_rng(2)
    meta = prompts.sample_metadata(rng, "train", "position")
    bad = prompts.perturb_metadata(meta, rng, "relation")
    r = geneval.score(sw.render_for(bad, rng, 64), meta)
    assert not r["correct"] and r["reason"].startswith("expected")
    assert r["checks"] == 3 and r["score"] == pytest.approx(2 / 3)


def test_scene_graph_iou_values():
    rng = np.random.default_rng(3)
    for _ in range(10):
        _, _, scene = prompts.sample_prompt(rng, "train", "cb_complex")
        img = sw.render(scene)
        gt = sw.scene_graph(scene)
        full = scene_graph.score_image(img, gt)
        assert full == {"sg_iou": 1.0, "entity_iou": 1.0, "relation_iou": 1.0}
        n_rel = len(gt["relations"])
        # one relation removed from the ground truth: SG-IoU drops to (n-1)/n
        one_less = copy.deepcopy(gt)
        one_less["relations"].pop(0)
        s = scene_graph.score_image(img, one_less)
        assert s["sg_iou"] == pytest.approx((n_rel - 1) / n_rel)
        assert s["entity_iou"] == 1.0
        # one object removed (with its relations): entities (k-1)/k, triplets lose its edges
        k = len(gt["objects"])
        drop = 0
        kept = [r for r in gt["relations"] if drop not in (r[0], r[2])]
        remap = {old: new for new, old in enumerate(i for i in range(k) if i != drop)}
        no_obj = {"objects": gt["objects"][1:], "complete": True,
                  "relations": [[remap[a], r, remap[b]] for a, r, b in kept]}
        s = scene_graph.score_image(img, no_obj)
        assert s["entity_iou"] == pytest.approx((k - 1) / k)
        assert s["sg_iou"] == pytest.approx(len(kept) / n_rel)
        assert s["sg_iou"] < 1.0


def test_scene_graph_against_prompt_graph_and_wrong_image():
    rng = np.random.default_rng(4)
    _, meta, scene = prompts.sample_prompt(rng, "test", "cb_spatial")
    pg = meta["scene_graph"]
    assert pg["complete"] is False and len(pg["relations"]) == 1
    good = scene_graph.score_image(sw.render(scene), pg)
    assert good["entity_iou"] == 1.0 and good["sg_iou"] > 0
    flipped = prompts.perturb_metadata(meta, rng, "relation")
    bad = scene_graph.score_image(sw.render_for(flipped, rng, 64), pg)
    assert bad["sg_iou"] < good["sg_iou"]
    assert scene_graph.sg_scores({"objects": [], "relations": []},
                                 {"objects": [], "relations": []})["sg_iou"] == 1.0


def test_category_table():
    results = ([{"category": "counting", "correct": True}] * 3
               + [{"category": "counting", "correct": False}]
               + [{"category": "colors", "correct": True, "score": 1.0}])
    text, table = report.category_table(results)
    assert table["counting"]["accuracy"] == 0.75 and table["colors"]["accuracy"] == 1.0
    assert table["overall"] == pytest.approx(0.875)
    assert table["overall_samples"] == pytest.approx(0.8)
    assert "| counting | 4 | 0.750 |" in text and "overall" in text


def test_eval_images_cli_both_layouts(tmp_path, capsys):
    rng = np.random.default_rng(5)
    flat = tmp_path / "flat"
    flat.mkdir()
    lines = []
    for i, cat in enumerate(["colors", "position", "counting", "cb_complex"]):
        _, meta, scene = prompts.sample_prompt(rng, "test", cat)
        Image.fromarray(sw.render(scene)).save(flat / f"{i}.png")
        lines.append(json.dumps({**meta, "file": f"{i}.png"}))
        gdir = tmp_path / "geneval" / f"{i:05d}"
        (gdir / "samples").mkdir(parents=True)
        (gdir / "metadata.jsonl").write_text(json.dumps(meta) + "\n")
        Image.fromarray(sw.render(scene)).save(gdir / "samples" / "0000.png")
    (flat / "metadata.jsonl").write_text("\n".join(lines))
    assert main(["eval", "images", "--dir", str(flat), "--out", str(tmp_path / "r.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "| colors | 1 | 1.000 |" in out and "scene graphs: sg_iou" in out
    results = [json.loads(l) for l in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert all(r["correct"] for r in results) and len(results) == 4
    assert main(["eval", "images", "--dir", str(tmp_path / "geneval")]) == 0
    assert "**overall** (mean of categories) | 4 | 1.000" in capsys.readouterr().out
    assert main(["eval", "images", "--dir", str(tmp_path / "nothing")]) == 2
