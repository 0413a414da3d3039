import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

# A budget small enough for a few seconds of CPU: 2 envs x 64 steps = 128-step rollouts.
TINY = ["--num-envs", "2", "--num-steps", "64", "--total-timesteps", "256", "--eval-episodes", "2", "--no-cuda"]
TINY_PPO = ["--num-minibatches", "4", "--update-epochs", "2"]


def pytest_ignore_collect(collection_path, config):
    """`python -m pytest -m gpu` on a machine with only the scripts' requirements and pytest: the modules that
    import the tools' own packages at the top (Optuna) are left out there instead of failing to import."""
    if collection_path.name == "test_tune.py" and "gpu" in (config.getoption("markexpr") or ""):
        try:
            import optuna  # noqa: F401
        except ImportError:
            return True
    return None


def tiny(script: str) -> list[str]:
    """The tiny budget's flags for an on-policy script (PPO adds its minibatches and epochs)."""
    return TINY + (TINY_PPO if script.startswith("ppo") else [])


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in an empty directory, so runs/ and wandb/ land in the test's own tmp_path."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_script(script: str, *flags: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    # tests/ on the path lets a script make the test envs: --env-id toy_envs:ToyMultiDiscrete-v0
    env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_SILENT="true", PYTHONPATH=str(ROOT / "tests"))
    env.pop("WANDB_MODE", None)
    return subprocess.run(
        [sys.executable, str(ROOT / script), *flags], cwd=cwd, env=env, capture_output=True,
        text=True, timeout=timeout,
    )
