"""Compare checkpoints on held-out ShapesWorld prompts and write the demo's report directory.

The verdict comes from the pixel-only evaluator (`jaxgen.eval.geneval.score`), never from the
reward model. Every checkpoint sees the same prompts with the same seeds.

report/
  report.md, report.json   per-category accuracy of each checkpoint (GenEval overall = mean)
  accuracy.png             grouped bars per category
  (the '<name> plan ceiling' columns score each sample's layout plan drawn by the renderer
  through the VQ: the accuracy with perfect drawing, jaxgen/eval/plan_ceiling.py)
  reward_curve.png         GRPO's mean reward per iteration, and each term of a composite
                           reward (from its metrics.jsonl)
  samples_<name>.png       a grid of samples; samples_<name>.md their prompts, reasoning, verdicts
"""

from __future__ import annotations

import json
import pathlib
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from tqdm import tqdm

from jaxgen.checkpoint import load_checkpoint, save_checkpoint
from jaxgen.concurrent_batches import map_batches
from jaxgen.convert.load import load_model
from jaxgen.data import prompts as prompt_lib
from jaxgen.data.shapes_world import render_for
from jaxgen.eval import stats
from jaxgen.eval.geneval import satisfies, score
from jaxgen.eval.plan_ceiling import plan_ceiling
from jaxgen.models import janus
from jaxgen.sampling.generate import generate, pixels_to_uint8

REWARD_KEYS = ("reward/mean", "reward_mean", "reward")


def heldout_prompts(split: str, per_category: int, seed: int) -> list[dict]:
    """`per_category` prompts of every category from `split`, deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    out = []
    for category in prompt_lib.CATEGORIES:
        for _ in range(per_category):
            out.append(prompt_lib.sample_metadata(rng, split, category))
    return out


def generate_images(ckpt_dir, metadata: list[dict], eval_config, name: str = "") -> list:
    """Samples (jaxgen.sampling.generate.Sample) for every prompt, `samples_per_prompt` each, batched."""
    params, config, tokenizer = load_model(ckpt_dir)
    prompts = [m["prompt"] for m in metadata]
    samples = []
    bs = max(1, eval_config.batch_size // eval_config.samples_per_prompt)
    for start in tqdm(range(0, len(prompts), bs), desc=f"sampling {name or ckpt_dir}",
                      leave=False):
        chunk = prompts[start:start + bs]
        chunk = chunk + [chunk[-1]] * (bs - len(chunk))  # one compiled shape for every batch
        out = generate(params, config, tokenizer, chunk, num_samples=eval_config.samples_per_prompt,
                           think=eval_config.think, max_think_tokens=eval_config.max_think_tokens,
                           cfg_weight=eval_config.cfg_weight,
                           temperature=eval_config.temperature,
                           image_temperature=eval_config.get("image_temperature"),
                           uncond_hides=eval_config.get("uncond_hides", "prompt"),
                           seed=eval_config.seed + start)
        samples.extend(out[: len(prompts[start:start + bs]) * eval_config.samples_per_prompt])
    return samples


def score_samples(samples, metadata, samples_per_prompt: int) -> list[dict]:
    results = []
    for i, s in enumerate(samples):
        meta = metadata[i // samples_per_prompt]
        verdict = score(s.image, meta)
        results.append(dict(category=meta["tag"], prompt=meta["prompt"], correct=bool(verdict["correct"]),
                            reason=verdict.get("reason", ""), reasoning=s.reasoning))
    return results


def accuracy_by_category(results: list[dict]) -> dict:
    cats = sorted({r["category"] for r in results})
    table = {c: float(np.mean([r["correct"] for r in results if r["category"] == c])) for c in cats}
    table["overall"] = float(np.mean([table[c] for c in cats]))  # GenEval: mean over categories
    return table


def markdown_table(tables: dict) -> str:
    names = list(tables)
    cats = [c for c in next(iter(tables.values())) if c != "overall"] + ["overall"]
    lines = ["| category | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for c in cats:
        lines.append(f"| {c} | " + " | ".join(f"{100 * tables[n][c]:.1f}" for n in names) + " |")
    return "\n".join(lines)


def _metric_rows(metrics_path) -> list[dict]:
    path = pathlib.Path(metrics_path)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def read_reward_curve(metrics_path, rows=None) -> list[tuple[int, float]]:
    """[(step, mean total reward)] from GRPO's metrics.jsonl (`rows`: its parsed lines)."""
    curve = []
    for row in _metric_rows(metrics_path) if rows is None else rows:
        key = next((k for k in REWARD_KEYS if k in row), None)
        if key is not None:
            curve.append((int(row.get("step", len(curve))), float(row[key])))
    return curve


def read_reward_streams(metrics_path, rows=None) -> dict[str, list[tuple[int, float]]]:
    """{reward term name: [(step, mean value)]} from GRPO's 'reward/<name>' metrics (the terms
    of a composite reward, before weighting), in first-seen order."""
    streams: dict[str, list] = {}
    for i, row in enumerate(_metric_rows(metrics_path) if rows is None else rows):
        for k, v in row.items():
            if k.startswith("reward/") and k != "reward/mean":
                streams.setdefault(k[len("reward/"):], []).append((int(row.get("step", i)), float(v)))
    return streams


def _plots(tables, curve, out_dir: pathlib.Path, streams=None):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(tables)
    cats = [c for c in next(iter(tables.values())) if c != "overall"] + ["overall"]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(cats)), 3.5))
    width = 0.8 / len(names)
    for i, n in enumerate(names):
        ax.bar(np.arange(len(cats)) + i * width, [100 * tables[n][c] for c in cats], width, label=n)
    ax.set_xticks(np.arange(len(cats)) + width * (len(names) - 1) / 2, cats, rotation=30, ha="right")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title("pixel-only evaluator, held-out compositions")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "accuracy.png", dpi=120)
    plt.close(fig)
    if curve:
        # the weighted total, then each term of a composite reward on its own scale
        panels = [("total reward", curve)]
        if streams and len(streams) > 1:
            panels += list(streams.items())
        fig, axes = plt.subplots(len(panels), 1, figsize=(5, 2.2 + 1.6 * (len(panels) - 1)),
                                 sharex=True, squeeze=False)
        for ax, (name, points) in zip(axes[:, 0], panels):
            steps, rewards = zip(*points)
            ax.plot(steps, rewards, marker=".")
            ax.set_ylabel(f"mean {name}", fontsize=8)
        axes[-1, 0].set_xlabel("GRPO iteration")
        fig.tight_layout()
        fig.savefig(out_dir / "reward_curve.png", dpi=120)
        plt.close(fig)


def _grid(images: list, cols: int) -> np.ndarray:
    h, w, _ = images[0].shape
    rows = -(-len(images) // cols)
    grid = np.full((rows * (h + 2), cols * (w + 2), 3), 255, np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        grid[r * (h + 2):r * (h + 2) + h, c * (w + 2):c * (w + 2) + w] = im
    return grid


def _sample_pages(name, samples, results, n, out_dir: pathlib.Path):
    idx = list(range(0, len(samples), max(1, len(samples) // n)))[:n]
    Image.fromarray(_grid([samples[i].image for i in idx], cols=8)).resize(
        (8 * 4 * (samples[0].image.shape[1] + 2), -(-len(idx) // 8) * 4 * (samples[0].image.shape[0] + 2)),
        Image.NEAREST).save(out_dir / f"samples_{name}.png")
    lines = [f"# {name} samples (grid order, left to right, top to bottom)", ""]
    for k, i in enumerate(idx):
        r = results[i]
        verdict = "correct" if r["correct"] else f"wrong ({r['reason']})"
        lines += [f"{k + 1}. **{r['prompt']}** [{r['category']}] — {verdict}",
                  f"   reasoning: `{r['reasoning'].strip() or '(none)'}`"]
    (out_dir / f"samples_{name}.md").write_text("\n".join(lines) + "\n")


def untrained_checkpoint(like_ckpt, out_dir) -> pathlib.Path:
    """A randomly initialised model with `like_ckpt`'s config, tokenizer and VQ tokenizer: the
    baseline that shows what training added."""
    params, config, tokenizer = load_checkpoint(like_ckpt)
    fresh = dict(jax.device_get(janus.init_params(config, jax.random.PRNGKey(0))))
    fresh["vqmodel"] = params["vqmodel"]
    return save_checkpoint(out_dir, fresh, config, tokenizer)


def vq_roundtrip(ckpt_dir) -> tuple[Callable, int]:
    """(uint8[B,H,W,3] -> uint8[B,H,W,3] through the checkpoint's VQ encode -> decode, image
    size): how the tokenizer redraws a picture."""
    params, config, _ = load_checkpoint(ckpt_dir)
    vq = {"vqmodel": params["vqmodel"]}
    jitted = jax.jit(lambda x: janus.vq_decode(vq, config, janus.vq_encode(vq, config, x)))
    one = lambda images: pixels_to_uint8(jitted(jnp.asarray(images, jnp.float32) / 127.5 - 1.0))
    # 32-image batches side by side: XLA's CPU convolutions run on one core each
    fn = lambda images: map_batches(one, np.asarray(images), 32)
    return fn, config.vq.image_size


def vq_ceiling(roundtrip: Callable, size: int, metadata: list[dict], seed: int) -> list[dict]:
    """Ground-truth renderings of the prompts passed through the VQ tokenizer (`vq_roundtrip`)
    and scored: the best accuracy any generator using this tokenizer can reach."""
    rng = np.random.default_rng(seed)
    out = roundtrip(np.stack([render_for(m, rng, size=size) for m in metadata]))
    return [dict(category=m["tag"], prompt=m["prompt"], correct=satisfies(img, m))
            for img, m in zip(out, metadata)]


def paired_differences(per_sample: dict, samples_per_prompt: int, seed: int) -> dict:
    """{'<name> - <first>': stats.paired_difference} for every trained model after the first
    (the demo: 'GRPO - SFT'); the untrained model is left out."""
    names = [n for n in per_sample if n != "untrained"]
    return {f"{n} - {names[0]}": stats.paired_difference(
        per_sample[names[0]], per_sample[n], samples_per_prompt, seed=seed) for n in names[1:]}


def model_blocks(tables: dict, differences: dict) -> dict:
    """report.json's block per model, keyed by its lower-case name ('sft', 'grpo', ...):
    {'overall', 'per_category', 'plan_ceiling' (overall, when measured), 'change' (its paired
    difference over the first model, when it is a later one)}, so a script can read any run."""
    blocks = {}
    for name, table in tables.items():
        if name.endswith(" plan ceiling") or name == "VQ ceiling":
            continue
        block = {"overall": table["overall"],
                 "per_category": {k: v for k, v in table.items() if k != "overall"}}
        if f"{name} plan ceiling" in tables:
            block["plan_ceiling"] = tables[f"{name} plan ceiling"]["overall"]
        change = [d for key, d in differences.items() if key.startswith(f"{name} - ")]
        if change:
            block["change"] = change[0]
        blocks[name.lower().replace(" ", "_")] = block
    blocks["vq_ceiling"] = {"overall": tables["VQ ceiling"]["overall"]}
    return blocks


def evaluate_and_report(eval_config, data_dir, checkpoints: dict, grpo_metrics, out_dir) -> dict:
    """Score every checkpoint on the same held-out prompts; write report/; return the tables.

    Besides the named checkpoints the table has 'untrained' (random init, same VQ) and
    'VQ ceiling' (ground-truth images through the VQ tokenizer), and for each named checkpoint
    '<name> plan ceiling' (its samples' layout plans drawn by the renderer through the VQ).
    report.json's 'differences' (and report.md's last lines) hold each later model's overall
    change over the first with its paired bootstrap interval (`paired_differences`).
    """
    del data_dir  # prompts are regenerated from the seed; same generator as the data build
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metadata = heldout_prompts(eval_config.split, eval_config.prompts_per_category, eval_config.seed)
    first = next(iter(checkpoints.values()))
    checkpoints = {"untrained": untrained_checkpoint(first, out_dir.parent / "untrained"),
                   **checkpoints}
    roundtrip, size = vq_roundtrip(first)
    tables = {"VQ ceiling": accuracy_by_category(
        vq_ceiling(roundtrip, size, metadata, eval_config.seed))}
    per_sample, plans = {}, {}
    for name, ckpt in checkpoints.items():
        samples = generate_images(ckpt, metadata, eval_config, name)
        results = score_samples(samples, metadata, eval_config.samples_per_prompt)
        tables[name] = accuracy_by_category(results)
        per_sample[name] = results
        _sample_pages(name, samples, results, eval_config.grid_samples, out_dir)
        if name != "untrained":  # its plans never parse
            plans[f"{name} plan ceiling"] = accuracy_by_category(plan_ceiling(
                [s.reasoning for s in samples], metadata, eval_config.samples_per_prompt, size,
                roundtrip))
    tables.update(plans)
    differences = paired_differences(per_sample, eval_config.samples_per_prompt, eval_config.seed)
    rows = _metric_rows(grpo_metrics)
    curve = read_reward_curve(grpo_metrics, rows)
    _plots(tables, curve, out_dir, read_reward_streams(grpo_metrics, rows))
    md = markdown_table(tables)
    header = (f"# jaxgen demo: held-out accuracy (%)\n\n{len(metadata)} prompts "
              f"({eval_config.prompts_per_category} per category, split '{eval_config.split}'), "
              f"{eval_config.samples_per_prompt} samples each; pixel-only evaluator.\n\n")
    md += "".join(f"\n\n{stats.describe_difference(key, d)}"
                  for key, d in differences.items())
    (out_dir / "report.md").write_text(header + md + "\n")
    report = dict(tables=tables, differences=differences, reward_curve=curve,
                  num_prompts=len(metadata), **model_blocks(tables, differences))
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    (out_dir / "samples.jsonl").write_text(
        "".join(json.dumps(dict(model=n, **r)) + "\n" for n, rs in per_sample.items() for r in rs))
    print(header + md)
    return dict(report_dir=str(out_dir), tables=tables)
