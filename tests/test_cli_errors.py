"""Bad command lines give one clear line on stderr and exit code 2, never a traceback."""

import json

import pytest

from jaxgen.cli import main


@pytest.mark.parametrize("family, spec, words", [
    ("sft", "configs/sft.py:shape", "unknown sft config 'shape'"),
    ("vq", "configs/vq.py:big", "unknown vq config 'big'"),
    ("grpo", "configs/grpo.py:nope", "unknown grpo variant 'nope'"),
    ("grpo", "configs/recipes/t2i_r1.py:3b", "unknown variant '3b'"),
])
def test_unknown_config_variant(family, spec, words, tmp_path, capsys):
    code = main(["train", family, "--config", spec, "--workdir", str(tmp_path / "w")])
    err = capsys.readouterr().err
    assert code == 2 and words in err and "Traceback" not in err


def test_demo_config_takes_no_variant(tmp_path, capsys):
    code = main(["demo", "--config", "configs/demo.py:tiny", "--workdir", str(tmp_path / "w")])
    assert code == 2 and "configs/demo.py has no variants" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_object_store_workdir(tmp_path, capsys):
    code = main(["train", "sft", "--config", "configs/sft.py:tiny", "--workdir", "gs://b/run"])
    err = capsys.readouterr().err
    assert code == 2 and "object-store URLs are not supported" in err and "gcsfuse" in err


def test_malformed_metadata_line(tmp_path, capsys):
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file": "0.png"}) + "\n{not json\n")
    assert main(["eval", "images", "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "metadata.jsonl:2 is not valid JSON" in err


def test_malformed_grpo_prompt_file(tmp_path):
    from jaxgen.errors import UserError
    from jaxgen.train.grpo import PromptSource
    import ml_collections

    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "a red circle"}\n\n{"prompt": oops}\n')
    config = ml_collections.ConfigDict(dict(source="jsonl", path=str(path)))
    with pytest.raises(UserError, match="prompts.jsonl:3 is not valid JSON"):
        PromptSource(config, seed=0)
    path.write_text('{"prompt": "a red circle"}\n\n{"prompt": "two blue squares"}\n')
    assert [r["prompt"] for r in PromptSource(config, seed=0).records] == [
        "a red circle", "two blue squares"]


def test_bench_without_torch_is_a_clear_error(monkeypatch):
    import sys

    from jaxgen.bench import require_torch
    from jaxgen.errors import UserError

    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(UserError, match="pip install -r requirements-test.txt"):
        require_torch()


def test_data_build_accepts_out(tmp_path):
    from jaxgen.cli import build_parser

    parser = build_parser(["data", "build"])
    args = parser.parse_args(["data", "build", "--out", str(tmp_path)])
    assert args.out_dir == str(tmp_path)


def test_overrides_on_a_command_without_config(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "images", "--dir", str(tmp_path), "--config.seed=1"])
    assert exit_info.value.code == 2
    assert "takes no config, so --config.seed=1 would be ignored" in capsys.readouterr().err


def test_repo_config_paths_resolve_from_any_directory(tmp_path, monkeypatch):
    from jaxgen.config import load_config

    monkeypatch.chdir(tmp_path)
    assert load_config("configs/recipes/t2i_r1.py:shapes").grpo.group_size == 8
    assert load_config("configs/sft.py:tiny").total_steps == 6


def test_family_names_resolve_beside_folders_of_the_same_name(tmp_path, monkeypatch):
    """A work directory's `data/` or `sft/` folder is not a config file (the demo's stage
    folders are named like the config families it loads)."""
    from jaxgen.config import load_config
    from jaxgen.models.config import ConfigError

    for name in ("data", "vq", "sft", "grpo", "configs/demo.py"):
        (tmp_path / name).mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert load_config("sft:tiny").total_steps == 6
    assert load_config("configs/demo.py").grpo.total_steps == 40
    assert load_config("data:shapes").to_dict() == load_config("configs/data.py:shapes").to_dict()
    with pytest.raises(ConfigError, match="not found"):
        load_config("grpo/nothing.py")
