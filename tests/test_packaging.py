"""The package as pip installs it (not the repository): its shipped configs are what `demo` and `reproduce` read,
so both work from any folder; the repository's configs/ is a link to them."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from test_reproduce import data_root  # noqa: F401 (a fixture: files in ../shared/data's layout)

ROOT = Path(__file__).resolve().parents[1]


def test_an_installed_package_ships_the_configs_demo_and_reproduce_read(tmp_path, data_root):  # noqa: F811
    source = tmp_path / "source"  # pip builds in the source tree: a copy keeps build/ out of the repository
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "ensemble_distill", source / "ensemble_distill",
                    ignore=shutil.ignore_patterns("__pycache__"))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(site), str(source)], check=True, capture_output=True)
    shipped = sorted(p.name for p in (site / "ensemble_distill" / "configs").glob("*.toml"))
    assert shipped == sorted(p.name for p in (ROOT / "configs").glob("*.toml")) and "demo.toml" in shipped

    elsewhere = tmp_path / "elsewhere"  # no configs/ here: only the installed package's can be read
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    run = lambda *args: subprocess.run([sys.executable, *args], cwd=elsewhere, env=env, capture_output=True,
                                       text=True)
    plan = run("-m", "ensemble_distill.cli", "reproduce", "--scale", "smoke", "--data", str(data_root),
               "--out", str(tmp_path / "report"), "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert "table1:" in plan.stdout and f"{site}" not in plan.stdout  # the plan names configs/..., not a path
    demo = run("-c", "from ensemble_distill.demo import DEMO_CONFIG; from ensemble_distill.config import "
                     "load_config; print(DEMO_CONFIG); load_config(DEMO_CONFIG, resolve_paths=False)")
    assert demo.returncode == 0 and demo.stdout.strip() == str(site / "ensemble_distill" / "configs" / "demo.toml")


def test_the_repositorys_configs_folder_is_the_packages():
    assert (ROOT / "configs").is_symlink()
    assert (ROOT / "configs").resolve() == ROOT / "ensemble_distill" / "configs"

