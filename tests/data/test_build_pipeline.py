"""Dataset build (TFDS array_record without TensorFlow), Grain loader, readers, judge data."""

import json

import grain
import numpy as np
import pytest
from PIL import Image

from jaxgen.cli import main
from jaxgen.config import load_config
from jaxgen.data import build, judge, pipeline, readers
from jaxgen.data import tfds_builders as tb
from jaxgen.data.prompts import CATEGORIES
from jaxgen.errors import UserError
from jaxgen.eval.geneval import satisfies
from jaxgen.rewards.plan import parse_plan


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    config = load_config("configs/data.py:tiny")
    info = build.build_all(config, out)
    return out, config, info


def test_layout_and_counts(data_dir):
    out, config, info = data_dir
    assert (out / "tokenizer.json").exists()
    assert (out / "tfds" / "shapes_world_sft" / "1.0.0").is_dir()
    assert info["counts"] == {"sft/train": config.num_sft_train, "sft/test": config.num_sft_test,
                              "prompts/train": config.num_prompts_train,
                              "prompts/test": config.num_prompts_test}
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(out))


def test_sft_records_follow_contract(data_dir):
    out, config, _ = data_dir
    ds = build.load_split(out, "sft", "train")
    assert len(ds) == config.num_sft_train
    cats = set()
    for rec in ds:
        assert set(rec) == {"prompt", "category", "plan", "caption", "image", "metadata"}
        assert isinstance(rec["prompt"], str) and isinstance(rec["plan"], str)
        assert rec["image"].shape == (config.image_size, config.image_size, 3)
        assert rec["image"].dtype == np.uint8
        meta = json.loads(rec["metadata"])
        assert meta["prompt"] == rec["prompt"] and meta["tag"] == rec["category"]
        assert {"include", "exclude", "scene_graph"} <= set(meta)
        cats.add(rec["category"])
    assert cats == set(CATEGORIES)
    test = build.load_split(out, "prompts", "test")
    assert len(test) == config.num_prompts_test
    assert set(test[0]) == {"prompt", "category", "metadata"}


def test_missing_dataset_is_user_error(tmp_path):
    with pytest.raises(UserError, match="jaxgen data build"):
        build.load_split(tmp_path, "sft", "train")


def test_loader_deterministic_sharded_and_resumable(data_dir):
    out, _, _ = data_dir
    source = build.load_split(out, "prompts", "train")

    def prompts_of(loader, n):
        it = iter(loader)
        return [tuple(next(it)["prompt"]) for _ in range(n)]

    a = prompts_of(pipeline.make_loader(source, batch_size=4, seed=7, shard_index=0,
                                        shard_count=1), 5)
    b = prompts_of(pipeline.make_loader(source, batch_size=4, seed=7, shard_index=0,
                                        shard_count=1), 5)
    c = prompts_of(pipeline.make_loader(source, batch_size=4, seed=8, shard_index=0,
                                        shard_count=1), 5)
    assert a == b and a != c
    # the bounded read-ahead changes when batches are built, not which: grain's default
    # ReadOptions give the same batches in the same order
    default = pipeline.make_loader(source, batch_size=4, seed=7, shard_index=0, shard_count=1,
                                   read_options=grain.ReadOptions())
    assert pipeline.read_ahead(3).num_threads == 3
    assert pipeline.read_ahead(3).prefetch_buffer_size == 6
    assert prompts_of(default, 5) == a
    # per-host shards are disjoint and together cover the data exactly once
    seen = []
    for host in range(2):
        it = iter(pipeline.make_loader(source, batch_size=1, seed=0, shard_index=host,
                                       shard_count=2, num_epochs=1, drop_remainder=False))
        seen.append([m for batch in it for m in batch["metadata"]])
    assert abs(len(seen[0]) - len(seen[1])) <= 1
    assert sorted(seen[0] + seen[1]) == sorted(source[i]["metadata"] for i in range(len(source)))
    # resume: consume N, checkpoint, restore, next batch equal
    loader = pipeline.make_loader(source, batch_size=3, seed=1, shard_index=0, shard_count=1,
                                  transform=lambda r: {**r, "n": len(r["prompt"])})
    it = iter(loader)
    for _ in range(7):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(3)]
    it2 = iter(loader)
    it2.set_state(state)
    got = [next(it2) for _ in range(3)]
    for e, g in zip(expected, got):
        assert e["prompt"] == g["prompt"]
        np.testing.assert_array_equal(e["n"], g["n"])


def test_loader_errors(data_dir):
    out, _, _ = data_dir
    source = build.load_split(out, "prompts", "test")
    with pytest.raises(UserError, match="batch_size"):
        pipeline.make_loader(source, batch_size=0)
    with pytest.raises(UserError, match="shard_index"):
        pipeline.make_loader(source, batch_size=1, shard_index=3, shard_count=2)


def test_judge_examples_balanced_and_correct(data_dir):
    out, _, _ = data_dir
    records = list(build.load_split(out, "sft", "test"))
    ex = judge.judge_examples(records, np.random.default_rng(0), satisfies)
    yes = [e for e in ex if e["answer"] == "yes"]
    no = [e for e in ex if e["answer"] == "no"]
    assert len(yes) == len(no) >= len(records) * 0.9
    kinds = {e["perturbation"] for e in no}
    assert {"color", "shape", "relation", "count"} <= kinds
    for e in ex:
        assert e["prompt"] in e["question"]
    # negatives are images that do not satisfy the perturbed prompt; positives that do
    for e in yes[:10]:
        rec = next(r for r in records if r["prompt"] == e["prompt"])
        assert satisfies(e["image"], json.loads(rec["metadata"]))


def test_judge_easy_negatives_use_other_prompts_the_image_fails(data_dir):
    out, _, _ = data_dir
    records = list(build.load_split(out, "sft", "test"))
    ex = judge.judge_examples(records, np.random.default_rng(1), satisfies, easy_negatives=1.0)
    no = [e for e in ex if e["answer"] == "no"]
    easy = [e for e in no if e["perturbation"] == "other_prompt"]
    assert len(easy) >= 0.8 * len(no)  # the rest: another prompt happened to fit the image
    metas = {r["prompt"]: json.loads(r["metadata"]) for r in records}
    for e in easy:
        assert not satisfies(e["image"], metas[e["prompt"]])


def test_caption_examples_answer_with_the_layout_plan(data_dir):
    out, _, _ = data_dir
    records = list(build.load_split(out, "sft", "test"))
    ex = judge.caption_examples(records, np.random.default_rng(2), fraction=0.5)
    assert 0.25 * len(records) <= len(ex) <= 0.75 * len(records)
    plans = {}
    for r in records:
        plans.setdefault(r["prompt"], set()).add(r["plan"])
    for e in ex:
        assert e["question"] == judge.CAPTION_QUESTION and e["answer"] in plans[e["prompt"]]
        assert len(parse_plan(e["answer"])) >= 1  # objects with boxes, read from the image
    assert judge.caption_examples(records, np.random.default_rng(2), fraction=0.0) == []


def test_data_build_cli(tmp_path, capsys):
    rc = main(["data", "build", "--config", "configs/data.py:tiny", "--out_dir",
               str(tmp_path / "d"), "--config.num_sft_train=11", "--config.num_sft_test=11",
               "--config.num_prompts_train=11", "--config.num_prompts_test=11"])
    assert rc == 0
    assert '"sft/train": 11' in capsys.readouterr().out
    assert main(["data", "build", "--config", "configs/data.py:tiny", "--out_dir",
                 str(tmp_path / "e"), "--config.categories=('nope',)"]) == 2


# ----------------------------------------------------------------------------- readers

def test_read_reasongen_sft(tmp_path):
    Image.fromarray(np.full((32, 48, 3), 200, np.uint8)).save(tmp_path / "a.png")
    lines = [{"brief_caption": "a cat", "detailed_caption": "A fluffy cat sits.", "image": "a.png"}]
    (tmp_path / "sft.jsonl").write_text("\n".join(json.dumps(l) for l in lines))
    recs = readers.read_reasongen_sft(tmp_path / "sft.jsonl", image_size=16)
    assert recs[0]["prompt"] == "a cat" and recs[0]["caption"] == "A fluffy cat sits."
    assert recs[0]["image"].shape == (16, 16, 3)
    (tmp_path / "bad.jsonl").write_text('{"image": "a.png"}\n')
    with pytest.raises(UserError, match="none of the keys"):
        readers.read_reasongen_sft(tmp_path / "bad.jsonl")
    (tmp_path / "bad2.jsonl").write_text("{not json\n")
    with pytest.raises(UserError, match="not valid JSON"):
        readers.read_reasongen_sft(tmp_path / "bad2.jsonl")


def test_read_geneval_metadata(tmp_path):
    line = {"tag": "position", "include": [{"class": "bench", "count": 1},
                                           {"class": "dog", "count": 1,
                                            "position": ["right of", 0]}],
            "prompt": "a photo of a dog right of a bench"}
    (tmp_path / "m.jsonl").write_text(json.dumps(line) + "\n\n")
    recs = readers.read_geneval_metadata(tmp_path / "m.jsonl")
    assert len(recs) == 1 and recs[0]["category"] == "position"
    assert json.loads(recs[0]["metadata"])["exclude"] == []
    (tmp_path / "bad.jsonl").write_text(json.dumps({"prompt": "x"}))
    with pytest.raises(UserError, match="no 'tag'"):
        readers.read_geneval_metadata(tmp_path / "bad.jsonl")


def test_read_t2i_compbench(tmp_path):
    (tmp_path / "color_val.txt").write_text("a green bench and a red car\n\na blue bowl\n")
    (tmp_path / "spatial_val.txt").write_text("a cat on the left of a dog\n")
    recs = readers.read_t2i_compbench(tmp_path)
    assert [r["category"] for r in recs] == ["color", "color", "spatial"]
    assert recs[1]["prompt"] == "a blue bowl"
    with pytest.raises(UserError, match="not found"):
        readers.read_t2i_compbench(tmp_path / "missing")


def test_read_laion_sg(tmp_path):
    sample = {"img_id": "1", "name": "x.jpg", "caption_ori": "falls and a river",
              "items": [{"item_id": 0, "label": "snow", "attributes": ["white"]},
                        {"item_id": 1, "label": "river", "attributes": ["calm"]}],
              "relations": [{"triple_id": 0, "item1": 0, "relation": "adjacent to", "item2": 1}]}
    (tmp_path / "sg.json").write_text(json.dumps([sample]))
    recs = readers.read_laion_sg(tmp_path / "sg.json")
    g = json.loads(recs[0]["metadata"])["scene_graph"]
    assert g["objects"][0] == {"shape": "snow", "attributes": ["white"]}
    assert g["relations"] == [[0, "adjacent to", 1]]
    (tmp_path / "bad.json").write_text(json.dumps([{"caption_ori": "x"}]))
    with pytest.raises(UserError, match="not a LAION-SG"):
        readers.read_laion_sg(tmp_path / "bad.json")


def test_user_records_write_as_tfds(tmp_path):
    (tmp_path / "color_val.txt").write_text("a green bench\na red car\n")
    recs = readers.read_t2i_compbench(tmp_path / "color_val.txt")
    tb.write_dataset("compbench_prompts", tb.PROMPT_FEATURES, {"test": recs}, tmp_path / "tfds")
    back = tb.read_split(tmp_path / "tfds", "compbench_prompts", "test")
    assert sorted(back[i]["prompt"] for i in range(len(back))) == ["a green bench", "a red car"]
