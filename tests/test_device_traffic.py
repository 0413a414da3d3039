"""What a GPU run would send between host and device, counted on the CPU.

A run on CUDA acts through a copy of its network in host memory (host_copy), refreshed from the device after its
updates (refresh_host_copy), and sends each env step's transitions and each minibatch's row numbers to the device
(to_device, a copy the host does not wait for). Forcing a real host copy on the CPU, as a GPU run gets, and
counting those calls per environment step gives the waits on the device a GPU run makes: each refresh is one wait
(one flat copy from the device), each metrics row one more (its values read once).
"""

import copy
import importlib

import pytest
import torch
from conftest import TINY, TINY_PPO

OFF_POLICY = ["--total-timesteps", "600", "--learning-starts", "100", "--buffer-size", "1000", "--eval-episodes", "0",
              "--no-cuda", "--metrics-every", "200"]
RUNS = {
    "ppo_continuous": ["--env-id", "Pendulum-v1", *TINY, *TINY_PPO, "--eval-episodes", "0"],
    "ppo_discrete": ["--env-id", "CartPole-v1", *TINY, *TINY_PPO, "--eval-episodes", "0"],
    "a2c": ["--env-id", "CartPole-v1", *TINY, "--eval-episodes", "0"],
    "dqn": ["--env-id", "CartPole-v1", *OFF_POLICY, "--train-frequency", "10", "--gradient-steps", "2"],
    "ddqn": ["--env-id", "CartPole-v1", *OFF_POLICY, "--train-frequency", "10", "--gradient-steps", "2"],
    "ddpg": ["--env-id", "Pendulum-v1", *OFF_POLICY],
    "naf": ["--env-id", "Pendulum-v1", *OFF_POLICY],
}
# Waits per env step in steady state (refreshes and metrics rows), at most; each refresh one copy.
BOUND = {"ppo_continuous": 0.02, "ppo_discrete": 0.02, "a2c": 0.02, "dqn": 0.11, "ddqn": 0.11, "ddpg": 0.51,
         "naf": 1.01}


@pytest.mark.parametrize("name", list(RUNS))
def test_a_gpu_run_waits_on_the_device_at_most_once_per_env_step(name, in_tmp, monkeypatch, capsys):
    module = importlib.import_module(name)
    counts = {"refreshes": 0, "copies from the device": 0, "uploads": 0, "rows": 0}
    refreshing = []
    monkeypatch.setattr(module, "host_copy", lambda network, device: copy.deepcopy(network))  # as on a GPU
    real_refresh, real_to_device, real_log = module.refresh_host_copy, getattr(module, "to_device", None), module.Run.log
    real_cpu = torch.Tensor.cpu

    def refresh(host, network, *parts):
        counts["refreshes"] += 1
        refreshing.append(True)
        real_refresh(host, network, *parts)
        refreshing.pop()

    def cpu(tensor, *args, **kwargs):  # inside a refresh: a copy from the device
        counts["copies from the device"] += bool(refreshing)
        return real_cpu(tensor, *args, **kwargs)

    def to_device(array, device):
        counts["uploads"] += 1
        return real_to_device(array, device)

    def log(run, *args, **kwargs):
        counts["rows"] += 1
        return real_log(run, *args, **kwargs)

    monkeypatch.setattr(module, "refresh_host_copy", refresh)
    monkeypatch.setattr(torch.Tensor, "cpu", cpu)
    monkeypatch.setattr(module, "to_device", to_device)
    monkeypatch.setattr(module.Run, "log", log)
    summary = module.train(module.parse_args(RUNS[name]))
    steps = summary["global_step"]
    waits = (counts["refreshes"] + counts["rows"]) / steps
    with capsys.disabled():
        print(f"\n{name}: per env step {waits:.3f} waits ({counts['refreshes'] / steps:.3f} refreshes, "
              f"{counts['rows'] / steps:.3f} metrics rows), {counts['uploads'] / steps:.2f} uploads")
    assert counts["refreshes"] > 0 and counts["copies from the device"] == counts["refreshes"]  # one copy each
    assert waits <= BOUND[name]
