"""GPU smoke tests (`python -m pytest -m gpu -s`), skipped where torch sees no GPU.

Each script trains for a tiny budget with --cuda, writes a checkpoint, resumes from it on CUDA, and its
model.pt is evaluated on the CPU. The training runs under torch.cuda.set_sync_debug_mode("warn"), and the
number of waits on the device it caused is printed beside the steps, so that an unexpected wait shows.
These need only the scripts' requirements and pytest (no Optuna, Ray or matplotlib).
"""

import importlib
import math
import warnings

import pytest
import torch
from conftest import TINY, TINY_PPO

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU here")]

OFF_POLICY = ["--total-timesteps", "400", "--learning-starts", "100", "--buffer-size", "1000", "--eval-episodes", "2",
              "--eval-frequency", "200"]
FLAGS = {  # a tiny run of each, its checkpoint written at the end (and once before)
    "ppo_continuous": ["--env-id", "Pendulum-v1", *TINY, *TINY_PPO, "--checkpoint-every", "128"],
    "ppo_discrete": ["--env-id", "CartPole-v1", *TINY, *TINY_PPO, "--checkpoint-every", "128"],
    "a2c": ["--env-id", "CartPole-v1", *TINY, "--checkpoint-every", "128"],
    "dqn": ["--env-id", "CartPole-v1", *OFF_POLICY, "--train-frequency", "10", "--gradient-steps", "2",
            "--checkpoint-every", "200"],
    "ddqn": ["--env-id", "CartPole-v1", *OFF_POLICY, "--train-frequency", "10", "--gradient-steps", "2",
             "--checkpoint-every", "200"],
    "ddpg": ["--env-id", "Pendulum-v1", *OFF_POLICY, "--checkpoint-every", "200"],
    "naf": ["--env-id", "Pendulum-v1", *OFF_POLICY, "--checkpoint-every", "200"],
}


def smoke(name: str, device_flag: str) -> dict:
    """Train, resume and evaluate `name` as the GPU test does, on the device `device_flag` asks for; returns what
    the test checks (the run's summaries, the checkpoint and the CPU evaluation)."""
    module = importlib.import_module(name)
    on_cuda = device_flag == "--cuda"
    if on_cuda:
        torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            first = module.train(module.parse_args([*FLAGS[name], device_flag, "--run-name", "gpu"]))
    finally:
        if on_cuda:
            torch.cuda.set_sync_debug_mode(0)
    waits = sum("synchroniz" in str(w.message) for w in caught)
    print(f"{name}: {waits} waits on the device in {first['global_step']} steps")
    checkpoint = torch.load("runs/gpu/checkpoint.pt", map_location="cpu", weights_only=True)
    resumed = module.train(module.parse_args(["--resume", "runs/gpu/checkpoint.pt", "--total-timesteps",
                                              str(2 * first["global_step"])]))
    on_cpu = module.run_evaluation(module.parse_args(["--evaluate", "runs/gpu/model.pt", "--no-cuda",
                                                      "--eval-episodes", "1"]))
    return {"first": first, "checkpoint": checkpoint, "resumed": resumed, "on_cpu": on_cpu}


@pytest.mark.parametrize("name", list(FLAGS))
def test_cuda_run_checkpoints_resumes_and_its_model_evaluates_on_the_cpu(name, in_tmp):
    result = smoke(name, "--cuda")
    assert math.isfinite(result["first"]["eval_mean"]) and result["checkpoint"]["cuda_rng"] is not None
    assert result["resumed"]["global_step"] == 2 * result["first"]["global_step"]
    assert math.isfinite(result["on_cpu"]["eval_mean"])
