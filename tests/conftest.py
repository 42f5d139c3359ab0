"""Shared fixtures: a small prepared synthetic world, and a runner for the real CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# tiny sizes every CLI test uses, so each run takes seconds on 2 cores
TINY = ["data.num_users=150", "data.num_videos=200", "eval.protocols=[sampled,full]"]


@pytest.fixture(scope="session")
def small_world(tmp_path_factory):
    """A prepared 300-user synthetic world and its ground truth."""
    from lsvcr.data.builder import write_dataset
    from lsvcr.data.samples import SplitConfig
    from lsvcr.data.store import PreparedDataset
    from lsvcr.data.synthetic import SyntheticConfig, generate

    raw, truth = generate(SyntheticConfig(num_users=300, num_videos=400, seed=7))
    path = write_dataset(raw, tmp_path_factory.mktemp("world") / "ds", SplitConfig("loo"))
    return PreparedDataset(path), truth


def load_experiment(name: str):
    """``experiments/<name>.py`` as a module (the folder is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def console_script() -> str:
    """The installed ``lsvcr`` command of the Python running the tests (what a user types)."""
    found = shutil.which("lsvcr", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(f"no `lsvcr` console script next to {sys.executable}: install the package (pip install -e .)")
    return found


def start_cli(args: list[str], out_dir: Path, env: dict | None = None) -> subprocess.Popen:
    """Start the installed ``lsvcr`` command from ``out_dir`` (outside the repository, as a user would),
    with outputs under ``out_dir``; stdout and stderr are captured as text."""
    e = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "LSVCR_OUTPUT_DIR": str(out_dir),
         "PYTHONUNBUFFERED": "1", **(env or {})}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([console_script(), *args], cwd=out_dir, env=e, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish_cli(proc: subprocess.Popen, timeout: int = 300) -> subprocess.CompletedProcess:
    """Wait for a :func:`start_cli` process (killed after ``timeout`` seconds); returns the finished process."""
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def run_cli(args: list[str], out_dir: Path, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the installed ``lsvcr`` command from ``out_dir`` with outputs under ``out_dir`` (:func:`start_cli`)."""
    return finish_cli(start_cli(args, out_dir, env), timeout)


# small prompt templates for alignment tests (the real ones are conf/prompts/*.yaml)
TEST_TEMPLATES = {
    "numbering": "{index}. ", "video_item": "{title}; {comment}", "comment_item": "{title}; {comments}",
    "comment_join": " | ", "no_comment": "none", "empty_history": "empty",
    "templates": {
        "rec": ["V:\n{video_history}\nC:\n{comment_history}\nNEXT:", "C:\n{comment_history}\nV:\n{video_history}\nNEXT:"],
        "comm_rank": ["V:\n{video_history}\nC:\n{comment_history}\nNOW {target_title}:",
                      "C:\n{comment_history}\nV:\n{video_history}\nNOW {target_title}:"],
    },
}


def spawn_workers(worker, args: tuple, nprocs: int, timeout: float = 120) -> None:
    """``torch.multiprocessing.spawn`` that can never hang a test: workers still running after
    ``timeout`` seconds are killed and the test fails."""
    import torch.multiprocessing as mp

    ctx = mp.spawn(worker, args=args, nprocs=nprocs, join=False)
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("distributed workers timed out")
