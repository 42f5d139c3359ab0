"""The package as a new user installs it: a built wheel in a fresh virtualenv, its ``lsvcr`` command run
from a directory that is not the repository, with the shipped config tree and a user's own configs."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import REPO

# what a source distribution of the project holds (the wheel is built from a copy of these alone)
SOURCES = ["lsvcr", "conf", "setup.py", "pyproject.toml", "README.md"]


def _run(cmd: list, cwd: Path, timeout: int = 300, **env) -> subprocess.CompletedProcess:
    e = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **env}
    e.pop("LSVCR_OUTPUT_DIR", None)  # the defaults: outputs/ under the working directory
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=e, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{cmd} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def wheel_install(tmp_path_factory):
    """``(wheel, venv)``: the project's wheel, built offline, installed with ``--no-deps`` into a new
    virtualenv that sees this interpreter's packages (torch, hydra, ...) but not the repository."""
    root = tmp_path_factory.mktemp("install")
    src = root / "src"
    for name in SOURCES:
        s = REPO / name
        if s.is_dir():
            shutil.copytree(s, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(s, src / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", root / "dist", src], root)
    [wheel] = (root / "dist").glob("lsvcr-*.whl")
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", venv], root)
    # this interpreter's site-packages too (it may itself be a virtualenv, whose packages
    # --system-site-packages does not see); a path in a .pth file does not run that directory's
    # .pth files, so an editable install of the repository stays out
    purelib = subprocess.run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "_test_parent_site.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    _run([venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], root)
    return wheel, venv


def test_the_wheel_ships_every_config_file(wheel_install):
    wheel, _ = wheel_install
    shipped = {n.removeprefix("lsvcr/conf/") for n in zipfile.ZipFile(wheel).namelist() if n.startswith("lsvcr/conf/")}
    in_repo = {p.relative_to(REPO / "conf").as_posix() for p in (REPO / "conf").rglob("*.yaml")}
    assert in_repo and in_repo <= shipped


def test_the_installed_command_works_outside_the_repository(wheel_install, tmp_path):
    _, venv = wheel_install
    where = _run([venv / "bin" / "python", "-c", "import lsvcr.conf, lsvcr.main; print(lsvcr.conf.__file__)"],
                 tmp_path).stdout.strip()
    assert Path(where).is_relative_to(venv), f"lsvcr.conf came from {where}, not the installed wheel"

    r = _run([venv / "bin" / "lsvcr", "--cfg", "job", "stage=finetune", "task=comm_rank"], tmp_path)
    cfg = OmegaConf.create(r.stdout)
    assert cfg.stage.name == "finetune" and cfg.task.name == "comm_rank"

    # one tiny real stage: the prepared world lands under ./outputs of the working directory
    _run([venv / "bin" / "lsvcr", "stage=prepare", "data.num_users=60", "data.num_videos=80"], tmp_path)
    [manifest] = (tmp_path / "outputs" / "data").glob("synthetic-*/manifest.json")
    assert OmegaConf.load(manifest).counts.users == 60


def test_user_configs_sit_beside_the_shipped_groups(wheel_install, tmp_path):
    _, venv = wheel_install
    user = tmp_path / "my_conf"
    (user / "experiment").mkdir(parents=True)
    (user / "experiment" / "my_exp.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /model/sr: sasrec\nseed: 77\noptim:\n  lr: 0.0042\n")
    (user / "data").mkdir()
    (user / "data" / "my_world.yaml").write_text("defaults:\n  - synthetic\n  - _self_\nnum_users: 321\n")
    r = _run([venv / "bin" / "lsvcr", "--config-dir", user, "experiment=my_exp", "data=my_world", "stage=finetune",
              "--cfg", "job"], tmp_path)
    cfg = OmegaConf.create(r.stdout)
    assert cfg.seed == 77 and cfg.optim.lr == 0.0042 and cfg.model.sr.name == "sasrec"
    assert cfg.data.num_users == 321 and cfg.data.name == "synthetic"
    # the same through hydra.searchpath, for configs kept in a file
    r = _run([venv / "bin" / "lsvcr", f"hydra.searchpath=[file://{user}]", "experiment=my_exp", "--cfg", "job"],
             tmp_path)
    assert OmegaConf.create(r.stdout).seed == 77
