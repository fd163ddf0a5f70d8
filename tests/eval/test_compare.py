"""The demo's report helpers and stage bookkeeping (no models: pure functions and fakes)."""

import json
from types import SimpleNamespace

import ml_collections
import numpy as np
import pytest
from PIL import Image

from jaxgen import demo
from jaxgen.config import load_config
from jaxgen.data.reasoning import layout_plan
from jaxgen.data.shapes_world import render, scene_for
from jaxgen.errors import UserError
from jaxgen.eval import compare


def test_accuracy_is_mean_over_categories_not_over_samples():
    results = [dict(category="a", correct=True)] * 3 + [dict(category="a", correct=False)] + \
              [dict(category="b", correct=False)] * 4
    table = compare.accuracy_by_category(results)
    assert table["a"] == 0.75 and table["b"] == 0.0
    assert table["overall"] == pytest.approx(0.375)  # GenEval: (0.75 + 0.0) / 2, not 3/8


def test_markdown_table_lists_every_category_and_overall_last():
    md = compare.markdown_table({"SFT": {"a": 0.5, "overall": 0.5},
                                 "GRPO": {"a": 0.75, "overall": 0.75}})
    lines = md.splitlines()
    assert lines[0] == "| category | SFT | GRPO |"
    assert lines[2] == "| a | 50.0 | 75.0 |" and lines[-1] == "| overall | 50.0 | 75.0 |"


def test_reward_curve_reads_grpo_metrics(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": i, "reward_mean": 0.1 * i}) + "\n" for i in range(3)))
    assert compare.read_reward_curve(path) == [(0, 0.0), (1, 0.1), (2, 0.2)]
    assert compare.read_reward_curve(tmp_path / "missing.jsonl") == []


def test_reward_streams_and_their_plot(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": i, "reward_mean": 0.5 * i, "reward/vlm_caption":
                                        0.01 * i, "reward/vq_consistency": 0.3 + 0.01 * i,
                                        "time_reward/vlm_caption": 1.0}) + "\n" for i in range(3)))
    streams = compare.read_reward_streams(path)
    assert list(streams) == ["vlm_caption", "vq_consistency"]
    assert streams["vq_consistency"] == [(0, 0.3), (1, 0.31), (2, 0.32)]
    assert compare.read_reward_streams(tmp_path / "missing.jsonl") == {}
    compare._plots({"SFT": {"a": 0.5, "overall": 0.5}}, compare.read_reward_curve(path),
                   tmp_path, streams)
    w, h = Image.open(tmp_path / "reward_curve.png").size
    assert h > w * 0.8  # three stacked panels: total, caption, consistency


def test_grid_places_images_row_major():
    images = [np.full((4, 4, 3), i, np.uint8) for i in range(3)]
    grid = compare._grid(images, cols=2)
    assert grid.shape == (2 * 6, 2 * 6, 3)
    assert grid[0, 0, 0] == 0 and grid[0, 6, 0] == 1 and grid[6, 0, 0] == 2


def test_demo_runs_stages_in_order_and_skips_finished_ones(tmp_path, monkeypatch):
    calls = []
    fakes = {name: (lambda n: lambda config, paths: calls.append(n) or {"stage": n})(name)
             for name in demo.STAGES}
    monkeypatch.setattr(demo, "_STAGE_FNS", fakes)
    summary = demo.run(None, tmp_path, stages=("data", "vq"))
    assert calls == ["data", "vq"] and summary["vq"]["stage"] == "vq"
    assert json.loads((tmp_path / "vq" / "DONE.json").read_text())["stage"] == "vq"
    calls.clear()
    demo.run(None, tmp_path)  # a rerun resumes: finished stages are skipped
    assert calls == ["sft", "judge", "grpo", "eval"]


def test_demo_prints_its_stage_times_beside_the_machine_speed(tmp_path, monkeypatch, capsys):
    assert 0 < demo.matmul_gflops(n=64, repeats=1) < float("inf")
    fakes = {name: (lambda config, paths: {}) for name in demo.STAGES}
    monkeypatch.setattr(demo, "_STAGE_FNS", fakes)
    monkeypatch.setattr(demo, "matmul_gflops", lambda: 123.4)

    class Args:
        config, config_overrides, workdir, stages = "configs/demo.py", [], str(tmp_path), "data"
    assert demo.demo(Args()) == 0
    out = capsys.readouterr().out
    assert "[demo] stages (s): {'data': 0}" in out and "runs at 123 GFLOP/s" in out


def test_demo_rejects_unknown_stage(tmp_path):
    class Args:
        config, config_overrides, workdir, stages = "configs/demo.py", [], str(tmp_path), "data,vqq"
    with pytest.raises(UserError, match="unknown demo stage"):
        demo.demo(Args())


def test_grpo_stage_config_points_at_the_workdir_models(tmp_path):
    """The demo's GRPO stage (and `jaxgen bench grpo --demo-workdir`) reads the SFT policy and
    judge of the work directory; an unfinished stage is a clear error naming the command."""
    config = load_config("demo")
    (tmp_path / "sft" / "final").mkdir(parents=True)
    with pytest.raises(UserError, match="judge stage has not finished.*--stages data,vq,sft,judge"):
        demo.grpo_stage_config(config, tmp_path)
    (tmp_path / "judge" / "final").mkdir(parents=True)
    c = demo.grpo_stage_config(config, tmp_path)
    assert c.policy_checkpoint == str(tmp_path / "sft" / "final")
    assert c.judge_checkpoint == str(tmp_path / "judge" / "final")
    assert c.rewards.to_dict() == config.grpo.rewards.to_dict() and config.grpo.policy_checkpoint == ""


def test_report_has_a_plan_ceiling_per_trained_model(tmp_path, monkeypatch):
    """evaluate_and_report adds '<name> plan ceiling': the same samples' plans drawn perfectly.
    Fakes: 'SFT' plans right but draws nothing, 'GRPO' draws ground truth under a broken plan."""
    def fake_samples(ckpt, metadata, cfg, name=""):
        rng = np.random.default_rng(0)
        out = []
        for m in metadata:
            scene = scene_for(m, rng, 64)
            for _ in range(cfg.samples_per_prompt):
                if name == "SFT":
                    out.append(SimpleNamespace(reasoning=layout_plan(scene),
                                               image=np.full((64, 64, 3), 240, np.uint8)))
                else:
                    out.append(SimpleNamespace(reasoning="<obj>", image=render(scene)))
        return out

    monkeypatch.setattr(compare, "generate_images", fake_samples)
    monkeypatch.setattr(compare, "untrained_checkpoint", lambda like, out: "untrained")
    monkeypatch.setattr(compare, "vq_roundtrip", lambda ckpt: ((lambda x: x), 64))
    monkeypatch.setattr(compare, "vq_ceiling", lambda roundtrip, size, metadata, seed: [
        dict(category=m["tag"], correct=True) for m in metadata])
    cfg = ml_collections.ConfigDict(dict(split="test", prompts_per_category=1,
                                         samples_per_prompt=2, seed=3, grid_samples=4))
    out = compare.evaluate_and_report(cfg, None, {"SFT": "sft", "GRPO": "grpo"},
                                      tmp_path / "metrics.jsonl", tmp_path / "report")
    tables = out["tables"]
    assert list(tables) == ["VQ ceiling", "untrained", "SFT", "GRPO", "SFT plan ceiling",
                            "GRPO plan ceiling"]
    assert tables["SFT"]["overall"] == 0.0 and tables["GRPO plan ceiling"]["overall"] == 0.0
    assert tables["GRPO"]["overall"] == 1.0 and tables["SFT plan ceiling"]["overall"] == 1.0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["tables"]["SFT plan ceiling"] == tables["SFT plan ceiling"]
    gain = report["differences"]["GRPO - SFT"]  # every GRPO sample right, every SFT one wrong
    assert gain["difference"] == gain["low"] == gain["high"] == 1.0
    # the machine-readable blocks a script checks a run with
    assert report["sft"]["overall"] == 0.0 and report["grpo"]["overall"] == 1.0
    assert report["sft"]["plan_ceiling"] == 1.0 and report["grpo"]["plan_ceiling"] == 0.0
    assert report["grpo"]["change"] == gain and "change" not in report["sft"]
    assert report["vq_ceiling"]["overall"] == 1.0 and "overall" in report["untrained"]
    assert set(report["grpo"]["per_category"]) == set(tables["GRPO"]) - {"overall"}
    assert "GRPO - SFT: +100.0 points overall" in (tmp_path / "report" / "report.md").read_text()
    header = next(line for line in (tmp_path / "report" / "report.md").read_text().splitlines()
                  if line.startswith("| category |"))
    assert header.endswith("| SFT plan ceiling | GRPO plan ceiling |")
