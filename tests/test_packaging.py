"""A non-editable install carries the configs and the pinned dependencies.

Building a wheel needs setuptools (not always in the environment), so the installed layout is
simulated: the package is copied with jaxgen/configs dereferenced, the way a wheel holds it, and
configs are loaded from another working directory with only that copy importable.
"""

import shutil
import subprocess
import sys
import textwrap

import pytest

from tests.helpers import REPO_ROOT

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11



def _pyproject():
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def test_package_data_globs_cover_every_config_file():
    globs = _pyproject()["tool"]["setuptools"]["package-data"]["jaxgen"]
    package = REPO_ROOT / "jaxgen"
    shipped = {p for g in globs for p in package.glob(g)}
    configs = {package / "configs" / p.relative_to(REPO_ROOT / "configs")
               for p in (REPO_ROOT / "configs").rglob("*.py")}
    assert configs and configs <= shipped, sorted(map(str, configs - shipped))


def test_dependencies_come_from_the_pinned_requirements():
    project = _pyproject()
    assert "dependencies" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["dependencies"]["file"] == ["requirements.txt"]
    lines = [l.split("#")[0].strip() for l in (REPO_ROOT / "requirements.txt").read_text().splitlines()]
    pins = [l for l in lines if l]
    # setuptools reads the file itself: no pip options or nested files allowed there
    assert pins and all("==" in p and not p.startswith("-") for p in pins), pins
    assert any(p.startswith("jax==") for p in pins) and not any("cuda" in p or "tpu" in p for p in pins)


def test_installed_layout_loads_configs_from_any_directory(tmp_path):
    site = tmp_path / "site"
    shutil.copytree(REPO_ROOT / "jaxgen", site / "jaxgen", symlinks=False,
                    ignore=shutil.ignore_patterns("__pycache__"))
    assert not (site / "jaxgen" / "configs").is_symlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = textwrap.dedent("""
        import jaxgen.config as c
        assert str(c.CONFIG_DIR).startswith(%r), c.CONFIG_DIR
        print(c.load_config("configs/demo.py").grpo.total_steps)
        print(c.load_config("configs/recipes/got_r1.py:shapes").grpo.group_size)
        print(c.load_config("vq:shapes").total_steps)
    """ % str(site))
    out = subprocess.run([sys.executable, "-c", script], cwd=elsewhere, capture_output=True,
                         text=True, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin",
                                         "JAX_PLATFORMS": "cpu"}, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    from jaxgen.config import load_config
    expected = [load_config("configs/demo.py").grpo.total_steps,
                load_config("configs/recipes/got_r1.py:shapes").grpo.group_size,
                load_config("vq:shapes").total_steps]
    assert out.stdout.split() == [str(v) for v in expected]
