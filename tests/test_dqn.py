"""dqn.py: the replay buffer, target, loss, gradient step and exploration against hand-computed
values and plain references; then train() on a tiny budget and the script as a user runs it."""

import copy
import csv
import errno
import json
import math
import os
import re
import shutil
import socket
import sys
import types
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import tyro
from conftest import run_script

import dqn

# A budget of a second or two of CPU: training starts at step 100 and runs 4 updates every 50 steps.
TINY_DQN = ["--total-timesteps", "400", "--learning-starts", "100", "--buffer-size", "1000",
            "--batch-size", "16", "--train-frequency", "50", "--gradient-steps", "4",
            "--target-network-frequency", "100", "--hidden-sizes", "16", "16", "--metrics-every", "100",
            "--eval-frequency", "200", "--eval-episodes", "2", "--no-cuda"]


def tiny_args(*extra: str) -> dqn.Args:
    return tyro.cli(dqn.Args, args=[*TINY_DQN, *extra])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One finished tiny run with checkpoints every 200 steps (its last at the final step 400),
    trained once for the tests that only read it or resume copies of it (see copy_run)."""
    root, cwd = tmp_path_factory.mktemp("finished"), os.getcwd()
    os.chdir(root)
    try:
        dqn.train(tiny_args("--run-name", "fin", "--checkpoint-every", "200", "--eval-episodes", "0"))
    finally:
        os.chdir(cwd)
    return root / "runs" / "fin"


def copy_run(finished_run, in_tmp, name="fin"):
    shutil.copytree(finished_run, in_tmp / "runs" / name)
    return in_tmp / "runs" / name


def read_metrics(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


class CountingEnv(gym.Env):
    """The observation is episode * 100 + t (t = steps taken in the episode), so a real transition
    always goes from x to x + 1, and the first observation of the next episode is a multiple of 100.
    The reward is t. Action 1 terminates; the registration truncates episodes after 3 steps."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, render_mode=None):
        self.render_mode = render_mode
        self.episode, self.t = -1, 0

    def obs(self):
        return np.array([self.episode * 100 + self.t], np.float32)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.episode, self.t = self.episode + 1, 0
        return self.obs(), {}

    def step(self, action):
        self.t += 1
        return self.obs(), float(self.t), bool(action == 1), False, {}


gym.register("GlassboxCounting-v0", entry_point=CountingEnv, max_episode_steps=3)


def table_network(q_table) -> dqn.QNetwork:
    """A real QNetwork, built by hand, with Q(one_hot(s), .) = q_table[s]: the hidden layer passes
    the one-hot state through unchanged (identity weights, ReLU of 0/1), the output layer is the table."""
    q_table = torch.tensor(q_table, dtype=torch.float32)
    n_states, n_actions = q_table.shape
    net = dqn.QNetwork(n_states, n_actions, [n_states])
    with torch.no_grad():
        net.hidden[0].weight.copy_(torch.eye(n_states))
        net.hidden[0].bias.zero_()
        net.out.weight.copy_(q_table.T)
        net.out.bias.zero_()
    return net


def one_hot(states, n):
    return torch.eye(n)[list(states)]


# --- Replay buffer ---


def fill_from_counting_envs(actions_per_step):
    """Steps two GlassboxCounting-v0 envs through dqn's vector env, storing every step in a buffer."""
    envs = dqn.make_vector_env(dqn.Args(env_id="GlassboxCounting-v0", num_envs=2))
    rb = dqn.ReplayBuffer(100, obs_dim=1, device=torch.device("cpu"))
    obs, _ = envs.reset(seed=0)
    for actions in actions_per_step:
        actions = np.array(actions)
        next_obs, rewards, terminations, truncations, infos = envs.step(actions)
        rb.add(obs, actions, next_obs, rewards, terminations, truncations, infos)
        obs = next_obs
    envs.close()
    return rb


def test_buffer_keeps_true_final_obs_and_stores_done_as_terminated_only():
    # Env 0 always plays 0: its episodes are truncated after 3 steps. Env 1 terminates at its 2nd
    # step, at the 1st step of the next episode, and at the 3rd step of the one after: that last
    # step is both terminated and truncated.
    rb = fill_from_counting_envs([[0, 0], [0, 1], [0, 1], [0, 0], [0, 0], [0, 1]])
    obs, next_obs = rb.obs[: rb.size, 0], rb.next_obs[: rb.size, 0]
    env0, env1 = slice(0, None, 2), slice(1, None, 2)  # rows alternate env 0, env 1
    np.testing.assert_array_equal(obs[env0], [0, 1, 2, 100, 101, 102])
    np.testing.assert_array_equal(obs[env1], [0, 1, 100, 200, 201, 202])
    # Every stored transition is real: x -> x + 1. The rows where an episode ended hold its last
    # observation (3, 103, 2, 101, 203), not the next episode's first one (a multiple of 100).
    np.testing.assert_array_equal(next_obs, obs + 1)
    # done is termination only: env 0's truncations (rows 4 and 10) keep their bootstrap.
    np.testing.assert_array_equal(rb.terminated[: rb.size][env0], [0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(rb.terminated[: rb.size][env1], [0, 1, 1, 0, 0, 1])
    np.testing.assert_array_equal(rb.rewards[: rb.size][env0], [1, 2, 3, 1, 2, 3])
    np.testing.assert_array_equal(rb.actions[: rb.size][env1], [0, 1, 1, 0, 0, 1])


def test_buffer_wraps_around_and_samples_only_filled_rows():
    rb = dqn.ReplayBuffer(5, obs_dim=2, device=torch.device("cpu"))
    no_end = np.zeros(2, bool)
    for step in range(4):  # 2 envs x 4 steps = 8 transitions into 5 rows
        obs = np.array([[step, 0], [step, 1]], np.float32)
        rb.add(obs, np.array([step, step]), obs + 10, np.array([step, -step], np.float32), no_end, no_end, {})
    assert rb.size == 5 and rb.pos == 3
    # The three oldest (step 0 both envs, step 1 env 0) were overwritten by steps 3 and 2's env 1.
    assert sorted(map(tuple, rb.obs.tolist())) == [(1, 1), (2, 0), (2, 1), (3, 0), (3, 1)]
    np.testing.assert_array_equal(rb.next_obs, rb.obs + 10)

    partial = dqn.ReplayBuffer(10, obs_dim=2, device=torch.device("cpu"))
    final_obs = np.array([np.full(2, 9.0, np.float32), None], dtype=object)  # env 0's episode ended
    partial.add(np.ones((2, 2), np.float32), np.array([1, 0]), np.zeros((2, 2), np.float32),
                np.array([5.0, 7.0], np.float32), np.array([True, False]), no_end, {"final_obs": final_obs})
    np.testing.assert_array_equal(partial.next_obs[:2], [[9, 9], [0, 0]])
    b_obs, b_actions, b_rewards, _, b_terminated = next(partial.sample(64, 1, np.random.default_rng(0)))
    assert b_obs.shape == (64, 2) and b_actions.dtype == torch.int64
    assert set(b_rewards.tolist()) == {5.0, 7.0}  # both filled rows, never an empty one
    torch.testing.assert_close(b_terminated, (b_rewards == 5.0).float())


def test_buffer_state_round_trip():
    rb = fill_from_counting_envs([[0, 1]] * 5)
    restored = dqn.ReplayBuffer(100, obs_dim=1, device=torch.device("cpu"))
    restored.load_state_dict(rb.state_dict())
    assert (restored.pos, restored.size) == (rb.pos, rb.size) == (10, 10)
    for name in ("obs", "actions", "rewards", "next_obs", "terminated"):
        np.testing.assert_array_equal(getattr(restored, name), getattr(rb, name))
    # A smaller buffer keeps the newest rows, and writes next over the oldest of them.
    smaller = dqn.ReplayBuffer(4, obs_dim=1, device=torch.device("cpu"))
    smaller.load_state_dict(rb.state_dict())
    assert (smaller.pos, smaller.size) == (0, 4)
    for name in ("obs", "actions", "rewards", "next_obs", "terminated"):
        np.testing.assert_array_equal(getattr(smaller, name), getattr(rb, name)[6:10])


def test_buffer_stores_in_its_dtypes_wraps_around_and_samples_the_rows_the_generator_draws():
    rb = dqn.ReplayBuffer(5, obs_dim=2, device=torch.device("cpu"))
    no_end = np.zeros(2, bool)
    for step in range(4):  # 8 rows into 5: the last step writes rows 1 and 2 (3 wraps around to row 0 first)
        obs = np.array([[step, 0], [step, 1]], np.float64)  # float64 and bool arrive as the buffer's dtypes
        final_obs = np.array([obs[0] + 20, None], dtype=object)  # env 0's episodes end every step
        rb.add(obs, np.array([step, 1]), obs + 10, np.array([step, -step], np.float64),
               np.array([True, False]), no_end, {"final_obs": final_obs})
    assert (rb.pos, rb.size) == (3, 5)
    assert rb.rows.dtype == torch.float32 and rb.rows.shape == (5, 2 + 1 + 1 + 2 + 1)  # one row per transition
    assert rb.obs.tolist() == [[2, 1], [3, 0], [3, 1], [1, 1], [2, 0]]
    assert rb.next_obs.tolist() == [[12, 11], [23, 20], [13, 11], [11, 11], [22, 20]]  # env 0's s' is its final obs
    assert rb.terminated.tolist() == [0, 1, 0, 0, 1] and rb.rewards.tolist() == [-2, 3, -3, -1, 2]
    rows = torch.from_numpy(np.random.default_rng(1).integers(0, 5, 32))
    sampled = next(rb.sample(32, 1, np.random.default_rng(1)))
    assert [t.dtype for t in sampled] == [torch.float32, torch.int64, torch.float32, torch.float32, torch.float32]
    for name, column in zip(rb.names, sampled):  # the rows the generator drew, each column of them
        assert torch.equal(column, getattr(rb, name)[rows].to(column.dtype))
    # A round's minibatches, their rows drawn at once: the same as drawn one by one.
    at_once, one_rng = list(rb.sample(32, 3, np.random.default_rng(2))), np.random.default_rng(2)
    one_by_one = [next(rb.sample(32, 1, one_rng)) for _ in range(3)]
    assert all(torch.equal(a, b) for x, y in zip(at_once, one_by_one, strict=True) for a, b in zip(x, y, strict=True))
    assert list(rb.sample(32, 0, np.random.default_rng(2))) == []


@pytest.mark.parametrize("new", [json.dumps({"eval_mean": 2.0}), {"eval_mean": 2.0}], ids=["text", "torch"])
def test_atomic_save_leaves_the_old_file_whole_when_interrupted(tmp_path, monkeypatch, new):
    path = tmp_path / "summary.json"
    dqn.atomic_save(json.dumps({"eval_mean": 1.0}), path)
    assert json.loads(path.read_text()) == {"eval_mean": 1.0} and not path.with_name("summary.json.tmp").exists()

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(dqn.os, "fsync", interrupted)  # Ctrl-C after the bytes went out, before the rename
    with pytest.raises(KeyboardInterrupt):
        dqn.atomic_save(new, path)
    assert json.loads(path.read_text()) == {"eval_mean": 1.0}
    assert not path.with_name("summary.json.tmp").exists()  # a file --resume would never look at


@pytest.mark.parametrize("name, then", [("checkpoint.pt", "free space and --resume from it"),
                                        ("summary.json", "free space and run again")])
def test_atomic_save_on_a_full_disk_keeps_the_previous_file_and_leaves_no_temporary_one(tmp_path, monkeypatch,
                                                                                        name, then):
    path = tmp_path / name
    dqn.atomic_save(json.dumps({"step": 1}), path)

    def disk_full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(dqn.os, "fsync", disk_full)
    with pytest.raises(dqn.UsageError) as error:
        dqn.atomic_save({"step": 2}, path)
    assert str(error.value) == (f"cannot write {path}: No space left on device; the previous {name} is kept; "
                                f"{then}")
    assert json.loads(path.read_text()) == {"step": 1} and list(tmp_path.iterdir()) == [path]


def test_vector_env_gives_true_final_observation_on_truncation():
    """The buffer relies on SAME_STEP autoreset: the step that truncates CartPole-v1 at 500 returns
    the next episode's first observation and puts the true last one in info["final_obs"]."""
    envs = dqn.make_vector_env(dqn.Args(num_envs=1))
    envs.reset(seed=0)
    inner = envs.unwrapped.envs[0].unwrapped
    for _ in range(500):
        inner.state = np.zeros(4)  # hold the pole upright, so only the time limit can end the episode
        obs, _, terminated, truncated, infos = envs.step(np.zeros(1, np.int64))
    envs.close()
    assert truncated[0] and not terminated[0]
    final = infos["final_obs"][0]
    # One push left from rest: position and angle still exactly 0, the cart moving left. The
    # returned obs is instead a fresh random reset, all four entries in (-0.05, 0.05).
    assert final[0] == 0.0 and final[2] == 0.0 and final[1] < -0.1
    assert obs[0][0] != 0.0 and obs[0][2] != 0.0
    assert envs.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP


# --- Target, loss, target network, schedules, exploration ---


def test_td_target_hand_computed():
    # Q_target(s'=0, .) = (4, 0, 3); Q_target(s'=1, .) = (-1, -2, -5).
    target_net = table_network([[4.0, 0.0, 3.0], [-1.0, -2.0, -5.0]])
    online_net = table_network([[1.0, 5.0, 2.0], [0.0, 9.0, 0.0]])  # not used by DQN's target
    rewards, terminated = torch.tensor([1.0, 0.5, 2.0]), torch.tensor([0.0, 0.0, 1.0])
    with torch.no_grad():
        y = dqn.td_target(online_net, target_net, rewards, one_hot([0, 1, 0], 2), terminated, gamma=0.5)
    # 1 + 0.5 * 4,  0.5 + 0.5 * (-1),  terminated: 2 alone.
    torch.testing.assert_close(y, torch.tensor([3.0, 0.0, 2.0]))


def test_td_loss_huber_and_mse_hand_computed():
    q, y = torch.tensor([0.5, 3.0, -2.0], requires_grad=True), torch.tensor([0.0, 0.0, 0.0])
    loss = dqn.td_loss(q, y, "huber")
    # Huber with delta 1: 0.5 * 0.25 = 0.125;  3 - 0.5 = 2.5;  2 - 0.5 = 1.5.
    assert loss.item() == pytest.approx((0.125 + 2.5 + 1.5) / 3)
    loss.backward()
    np.testing.assert_allclose(q.grad.numpy(), [0.5 / 3, 1 / 3, -1 / 3], rtol=1e-6)  # capped at +-1
    assert dqn.td_loss(q, y, "mse").item() == pytest.approx((0.25 + 9 + 4) / 3)
    assert dqn.td_loss(q, y, "huber", delta=2.0).item() == pytest.approx((0.125 + 2 * (3 - 1) + 0.5 * 4) / 3)


@pytest.mark.parametrize("loss", ["mse", "huber"])
def test_gradient_step_matches_a_plain_reference(loss):
    torch.manual_seed(0)
    online, target = dqn.QNetwork(3, 2, [8]), dqn.QNetwork(3, 2, [8])
    reference, target_before = copy.deepcopy(online), copy.deepcopy(target.state_dict())
    obs, next_obs = torch.randn(5, 3), torch.randn(5, 3)
    actions = torch.tensor([0, 1, 1, 0, 1])
    rewards = torch.tensor([1.0, 0.0, -1.0, 2.0, 0.5])
    terminated = torch.tensor([0.0, 1.0, 0.0, 0.0, 1.0])
    args = dqn.Args(gamma=0.9, loss=loss, huber_delta=0.5, max_grad_norm=0.3)
    optimizer = torch.optim.SGD(online.parameters(), lr=0.1)
    out = dqn.gradient_step(online, target, optimizer, (obs, actions, rewards, next_obs, terminated), args)
    loss_value, q = out["td_loss"], out["q_taken"]

    # The reference, one transition at a time: y from the target network's max over plain floats,
    # the loss written out, then the global-norm clip and an SGD step by hand.
    total, q_reference = 0.0, []
    for i in range(5):
        with torch.no_grad():
            y = rewards[i].item() + 0.9 * (1 - terminated[i].item()) * max(target(next_obs[i : i + 1])[0].tolist())
        q_i = reference(obs[i : i + 1])[0, actions[i]]
        d = q_i - y
        if loss == "mse":
            total = total + d**2 / 5
        else:
            total = total + (0.5 * d**2 if abs(d.item()) <= 0.5 else 0.5 * (abs(d) - 0.25)) / 5
        q_reference.append(q_i.item())
    total.backward()
    norm = math.sqrt(sum((p.grad**2).sum().item() for p in reference.parameters()))
    assert norm > 0.3  # the clip is active, and brings the step down to norm 0.3
    for p, p_ref in zip(online.parameters(), reference.parameters()):
        torch.testing.assert_close(p, p_ref - 0.1 * (0.3 / norm) * p_ref.grad, rtol=1e-5, atol=1e-6)
    assert loss_value.item() == pytest.approx(total.item(), rel=1e-5)
    np.testing.assert_allclose(q.numpy(), q_reference, rtol=1e-6)
    assert not loss_value.requires_grad and not q.requires_grad
    # The target network is only read: same weights, no gradients.
    assert all(torch.equal(target.state_dict()[k], target_before[k]) for k in target_before)
    assert all(p.grad is None for p in target.parameters())


def test_update_target_hard_copy_and_polyak():
    torch.manual_seed(0)
    online, target = dqn.QNetwork(3, 2, [4]), dqn.QNetwork(3, 2, [4])
    before = [p.clone() for p in target.parameters()]
    dqn.update_target(target, online, tau=0.25)
    for old, new, theta in zip(before, target.parameters(), online.parameters()):
        torch.testing.assert_close(new, 0.25 * theta + 0.75 * old)
    dqn.update_target(target, online, tau=1.0)
    assert all(torch.equal(a, b) for a, b in zip(target.parameters(), online.parameters()))


def test_linear_schedule_hand_computed():
    assert dqn.linear_schedule(1.0, 0.04, 16_000, 0) == 1.0
    assert dqn.linear_schedule(1.0, 0.04, 16_000, 8_000) == pytest.approx(0.52)
    assert dqn.linear_schedule(1.0, 0.04, 16_000, 16_000) == 0.04
    assert dqn.linear_schedule(1.0, 0.04, 16_000, 99_999) == 0.04
    assert dqn.linear_schedule(10.0, 0.1, 0, 0) == 0.1  # no decay at all: the end value from the start
    assert dqn.linear_schedule(10.0, 0.1, 100, 25) == pytest.approx(10.0 - 9.9 / 4)


def test_boltzmann_probabilities_hand_computed():
    q = np.array([[0.0, math.log(3.0)], [5.0, 5.0]])
    np.testing.assert_allclose(dqn.boltzmann_probabilities(q, 1.0), [[0.25, 0.75], [0.5, 0.5]])
    # Temperature 2 halves the log-odds: odds sqrt(3) instead of 3.
    r3 = math.sqrt(3.0)
    np.testing.assert_allclose(dqn.boltzmann_probabilities(q[:1], 2.0), [[1 / (1 + r3), r3 / (1 + r3)]])
    # Shifting all Q values changes nothing, even far beyond where exp() overflows.
    np.testing.assert_allclose(dqn.boltzmann_probabilities(q[:1] + 1000.0, 1.0), [[0.25, 0.75]])
    np.testing.assert_allclose(dqn.boltzmann_probabilities(q[:1], 1e-3), [[0.0, 1.0]], atol=1e-12)
    np.testing.assert_allclose(dqn.boltzmann_probabilities(q[:1], 1e6), [[0.5, 0.5]], atol=1e-6)


def action_frequencies(exploration, epsilon=0.0, temperature=1.0, n=30_000):
    """Actions chosen in state 0 of a 3-action table network, as fractions, over n envs at once."""
    net = table_network([[0.0, math.log(2.0), math.log(5.0)]])  # greedy: action 2
    obs = np.ones((n, 1), np.float32)
    q_values = dqn.acting_q_values(net)
    actions = dqn.select_actions(q_values, 3, obs, exploration, epsilon, temperature, np.random.default_rng(0))
    return np.bincount(actions, minlength=3) / n


def test_epsilon_greedy_frequencies():
    np.testing.assert_array_equal(action_frequencies("epsilon-greedy", epsilon=0.0), [0, 0, 1])
    np.testing.assert_allclose(action_frequencies("epsilon-greedy", epsilon=1.0), [1 / 3] * 3, atol=0.01)
    # epsilon 0.3: a uniform action 30% of the time (which is the greedy one a third of those times).
    np.testing.assert_allclose(action_frequencies("epsilon-greedy", epsilon=0.3), [0.1, 0.1, 0.8], atol=0.01)


def test_boltzmann_frequencies_follow_softmax_of_q_over_temperature():
    # exp(Q) = (1, 2, 5): probabilities (1, 2, 5) / 8 at T = 1; at T = 2, (1, sqrt 2, sqrt 5) / sum.
    np.testing.assert_allclose(action_frequencies("boltzmann", temperature=1.0), [1 / 8, 2 / 8, 5 / 8], atol=0.01)
    expected = np.array([1.0, math.sqrt(2.0), math.sqrt(5.0)])
    np.testing.assert_allclose(action_frequencies("boltzmann", temperature=2.0), expected / expected.sum(), atol=0.01)


def test_acting_q_values_match_the_network_and_follow_its_updates():
    torch.manual_seed(0)
    net = dqn.QNetwork(4, 3, [32, 16])
    q_values = dqn.acting_q_values(net)
    obs = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)

    def torch_q():
        with torch.no_grad():
            return net(torch.from_numpy(obs)).numpy()
    np.testing.assert_allclose(q_values(obs), torch_q(), rtol=1e-5, atol=1e-6)
    # The numpy arrays are views of the parameters: an optimizer step and a load_state_dict, both
    # in place, show up without rebuilding anything.
    optimizer = torch.optim.Adam(net.parameters(), lr=0.1, fused=True)
    net(torch.from_numpy(obs)).sum().backward()
    optimizer.step()
    np.testing.assert_allclose(q_values(obs), torch_q(), rtol=1e-5, atol=1e-6)
    net.load_state_dict(dqn.QNetwork(4, 3, [32, 16]).state_dict())
    np.testing.assert_allclose(q_values(obs), torch_q(), rtol=1e-5, atol=1e-6)


def test_host_copy_acts_on_the_weights_of_its_last_refresh():
    torch.manual_seed(0)
    net = dqn.QNetwork(4, 3, [8])
    assert dqn.host_copy(net, torch.device("cpu")) is net  # on the CPU the trained network acts itself
    # What a GPU gets: a separate copy in host memory (its type is what matters, not where net is).
    host = dqn.host_copy(net, torch.device("cuda"))
    assert host is not net and all(p.device.type == "cpu" for p in host.parameters())
    q_values = dqn.acting_q_values(host)  # built once, like train() does
    obs = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)

    def torch_q(network):
        with torch.no_grad():
            return network(torch.from_numpy(obs)).numpy()
    before = torch_q(net)
    np.testing.assert_allclose(q_values(obs), before, rtol=1e-5, atol=1e-6)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.1)
    net(torch.from_numpy(obs)).sum().backward()
    optimizer.step()
    np.testing.assert_allclose(q_values(obs), before, rtol=1e-5, atol=1e-6)  # not refreshed: the old weights
    assert not np.allclose(torch_q(net), before)
    dqn.refresh_host_copy(host, net)
    np.testing.assert_allclose(q_values(obs), torch_q(net), rtol=1e-5, atol=1e-6)
    dqn.refresh_host_copy(net, net)  # the CPU case: nothing to do


def test_make_env_flattens_observations_to_float32_and_refuses_images():
    # Blackjack-v1: Tuple(Discrete(32), Discrete(11), Discrete(2)), one-hot in 45 entries.
    env = dqn.make_env("Blackjack-v1")
    obs, _ = env.reset(seed=0)
    assert env.observation_space.shape == (45,) and obs.dtype == np.float32 and obs.sum() == 3
    assert set(np.unique(obs)) <= {0.0, 1.0}
    sys.path.insert(0, str(Path(__file__).parent))  # toy_envs
    float64 = dqn.make_env("toy_envs:ToyFloat64-v0")
    assert float64.observation_space.dtype == np.float32 and float64.reset(seed=0)[0].dtype == np.float32
    # An image: one line that says what is missing.
    gym.register("GlassboxImage-v0", entry_point=lambda **kw: ImageEnv(), max_episode_steps=2)
    with pytest.raises(dqn.UsageError, match=re.escape("GlassboxImage-v0 has Box(0, 255, (8, 8, 3), uint8) "
                                                       "observations; dqn.py's networks take a flat vector")):
        dqn.check_env("GlassboxImage-v0", {})


class ImageEnv(gym.Env):
    observation_space = gym.spaces.Box(0, 255, (8, 8, 3), np.uint8)
    action_space = gym.spaces.Discrete(2)


def test_steps_crossed():
    assert dqn.steps_crossed(10, 20, 19) == 1
    assert dqn.steps_crossed(10, 24, 20) == 0
    assert dqn.steps_crossed(4, 12, 4) == 2  # one vector step of 8 envs crosses 8 and 12
    assert dqn.steps_crossed(0, 12, 4) == 0  # 0 means never


def test_evaluate_reports_predicted_q_beside_earned_discounted_return():
    # A network that always prefers action 0 (Q = 5 vs 2): GlassboxCounting-v0 then runs 3 steps
    # with rewards 1, 2, 3 and is truncated.
    net = dqn.QNetwork(1, 2, [4])
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.out.bias.copy_(torch.tensor([5.0, 2.0]))
    returns, discounted, start_q = dqn.evaluate(net, "GlassboxCounting-v0", {}, 2, 0, 0.5, torch.device("cpu"))
    assert returns == [6.0, 6.0]
    assert discounted == [1 + 0.5 * 2 + 0.25 * 3] * 2
    assert start_q == [5.0, 5.0]


def test_load_model_reads_onto_the_cpu_then_moves_the_network(tmp_path):
    # "meta" stands for a device whose tensors the host cannot read (like CUDA's): the network goes
    # there, while everything read from the file stays on the CPU, as it is after torch.load on any machine.
    net = dqn.QNetwork(3, 2, [8])
    torch.save({"algorithm": "dqn", "args": {"hidden_sizes": [8]}, "obs_dim": 3, "n_actions": 2,
                "q_network": net.state_dict(), "global_step": 0}, tmp_path / "model.pt")
    loaded, state = dqn.load_model(str(tmp_path / "model.pt"), torch.device("meta"))
    assert all(p.device.type == "meta" for p in loaded.parameters())
    assert all(t.device.type == "cpu" for t in state["q_network"].values())
    # Every file this script reads is read onto the CPU, wherever it was saved.
    source = (Path(dqn.__file__)).read_text()
    loads = re.findall(r"torch\.load\(([^)]*)\)", source)
    assert loads and all('map_location="cpu"' in call for call in loads), loads


# --- train() end to end ---


def test_train_smoke_writes_metrics_model_and_summary(in_tmp):
    summary = dqn.train(tiny_args("--run-name", "smoke"))
    run_dir = in_tmp / "runs" / "smoke"
    rows = read_metrics(run_dir)
    assert [int(r["global_step"]) for r in rows] == [100, 200, 300, 400]
    # 100 transitions before training; then 4 updates at steps 100, 150, ..., 400: 7 rounds.
    assert [int(r["gradient_steps"]) for r in rows] == [4, 12, 20, 28]
    for key in ("td_loss", "q_taken", "epsilon", "sps"):
        assert all(np.isfinite(float(r[key])) for r in rows), key
    evaluated = [r for r in rows if r["eval_return"]]
    assert [int(r["global_step"]) for r in evaluated] == [200, 400]
    assert all(np.isfinite(float(r["eval_start_q"])) and float(r["eval_discounted_return"]) > 0 for r in evaluated)
    assert summary["global_step"] == 400 and len(summary["eval_returns"]) == 2
    assert len(summary["eval_start_q"]) == len(summary["eval_discounted_returns"]) == 2
    assert json.loads((run_dir / "summary.json").read_text())["eval_mean"] == summary["eval_mean"]
    assert summary["algorithm"] == "dqn"
    net, _ = dqn.load_model(str(run_dir / "model.pt"), torch.device("cpu"))
    assert dqn.evaluate(net, "CartPole-v1", {}, 2, dqn.eval_seed(1), 0.99, torch.device("cpu"))[0] == summary["eval_returns"]


def test_discrete_observations_train_and_their_model_evaluates(in_tmp, capsys):
    # FrozenLake-v1: Discrete(16) positions, one-hot in training, in the buffer and in --evaluate.
    summary = dqn.train(tiny_args("--env-id", "FrozenLake-v1", "--run-name", "lake"))
    assert np.isfinite(summary["eval_mean"])
    ckpt_free = torch.load(in_tmp / "runs/lake/model.pt", weights_only=True)
    assert ckpt_free["obs_dim"] == 16
    capsys.readouterr()
    dqn.main(["--evaluate", str(in_tmp / "runs/lake/model.pt"), "--eval-episodes", "2"])
    assert f"eval: {summary['eval_mean']:.1f} ± {summary['eval_std']:.1f} over 2 episodes" in capsys.readouterr().out


def test_video_that_cannot_render_is_skipped_and_the_run_is_kept(in_tmp, capsys):
    sys.path.insert(0, str(Path(__file__).parent))  # toy_envs
    dqn.main([*TINY_DQN, "--env-id", "toy_envs:ToyCounterDiscrete-v0", "--run-name", "novideo", "--capture-video"])
    out = capsys.readouterr().out
    assert ("video skipped: toy_envs:ToyCounterDiscrete-v0 cannot render frames here (it has no rgb_array "
            "render mode); evaluating without video") in out
    assert (in_tmp / "runs/novideo/model.pt").exists() and (in_tmp / "runs/novideo/summary.json").exists()


def test_divergence_stops_the_run_with_exit_3_and_no_result_files(in_tmp, capsys):
    with pytest.raises(SystemExit) as exit_info:
        dqn.main([*TINY_DQN, "--run-name", "nan", "--learning-rate", "1e30"])
    assert exit_info.value.code == 3
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and re.fullmatch(
        r"error: training diverged at step 100: td_loss is nan; no checkpoint was written; try a lower "
        r"--learning-rate", lines[0]), lines
    assert not (in_tmp / "runs/nan/model.pt").exists() and not (in_tmp / "runs/nan/summary.json").exists()
    assert read_metrics(in_tmp / "runs/nan")[-1]["td_loss"] == "nan"  # the row that shows it is kept


def test_non_finite_evaluation_or_weights_stop_the_run_and_keep_the_last_good_checkpoint(in_tmp):
    torch.manual_seed(0)
    q_network, target_network = dqn.QNetwork(4, 2, [8]), dqn.QNetwork(4, 2, [8])
    cpu = torch.device("cpu")
    model = {"obs_dim": 4, "n_actions": 2, "q_network": q_network}
    training = {"target_network": target_network, "optimizer": torch.optim.Adam(q_network.parameters()),
                "buffer": dqn.ReplayBuffer(10, 4, cpu)}
    run = dqn.Run(tiny_args("--run-name", "unit", "--checkpoint-every", "100"), cpu, model, training,
                  np.random.default_rng(0))
    run.save_checkpoint(100, 4)
    good = (in_tmp / "runs/unit/checkpoint.pt").read_bytes()
    with torch.no_grad():
        q_network.out.bias[1] = float("inf")
    with pytest.raises(dqn.Diverged, match=re.escape(
            "training diverged at step 200: q_network.out.bias is not finite; "
            "runs/unit/checkpoint.pt (step 100) holds the last finite weights")):
        run.save_checkpoint(200, 8)
    assert (in_tmp / "runs/unit/checkpoint.pt").read_bytes() == good
    run = dqn.Run(tiny_args("--run-name", "unit", "--checkpoint-every", "100"), cpu, model, training,
                  np.random.default_rng(0))  # the Diverged above closed the first one's metrics
    with pytest.raises(dqn.Diverged, match="q_network.out.bias is not finite"):
        run.save_final(400, 16)
    assert not (in_tmp / "runs/unit/model.pt").exists()
    # A NaN evaluation in a metrics row (the row is written first: it is the diagnosis). The weights are finite,
    # so the env's rewards are the cause, not training.
    with torch.no_grad():
        q_network.out.bias[1] = 0.0
    run = dqn.Run(tiny_args("--run-name", "unit2"), cpu, model, training, np.random.default_rng(0))
    with pytest.raises(dqn.Diverged, match=re.escape("CartPole-v1 returned rewards that are not finite (at step 200 "
                                                     "eval_return is nan); check the env; no checkpoint")):
        run.log({"global_step": 200, "gradient_steps": 8}, ([float("nan")], [0.0], [0.0]))
    assert read_metrics(in_tmp / "runs/unit2")[-1]["eval_return"] == "nan"


def test_training_loop_stores_only_real_transitions(in_tmp):
    """The buffer that train() filled, from its checkpoint: on GlassboxCounting-v0 every stored
    transition must go from x to x + 1 and be done exactly when its action was 1 (termination);
    the episodes that ran into the 3-step limit must keep done = 0."""
    dqn.train(tiny_args("--env-id", "GlassboxCounting-v0", "--run-name", "count", "--checkpoint-every", "400",
                        "--eval-episodes", "0", "--num-envs", "2"))
    buffer = torch.load(in_tmp / "runs/count/checkpoint.pt", weights_only=True)["buffer"]
    obs, next_obs = buffer["obs"][:, 0], buffer["next_obs"][:, 0]
    actions, terminated = buffer["actions"], buffer["terminated"]
    assert buffer["size"] == 400
    torch.testing.assert_close(next_obs, obs + 1)
    torch.testing.assert_close(terminated, actions.float())
    truncated = (obs % 100 == 2) & (actions == 0)  # the third step of an episode, not terminated
    assert truncated.sum() > 10 and terminated[truncated].sum() == 0


def test_target_network_is_a_copy_of_the_online_network_at_the_copy_step(in_tmp):
    # Two runs that are identical up to step 350 (constant epsilon and learning rate), one stopping
    # there. With copies every 400 steps, the target at step 400 is the online network as it was
    # after the updates at 350: the copy comes before that step's own round of updates.
    flags = ["--exploration-fraction", "0", "--no-anneal-lr", "--target-network-frequency", "400",
             "--eval-episodes", "0"]
    dqn.train(tiny_args(*flags, "--run-name", "full", "--checkpoint-every", "400"))
    dqn.train(tiny_args(*flags, "--run-name", "upto350", "--total-timesteps", "350"))
    ckpt = torch.load(in_tmp / "runs/full/checkpoint.pt", weights_only=True)
    online_at_350 = torch.load(in_tmp / "runs/upto350/model.pt", weights_only=True)["q_network"]
    assert all(torch.equal(ckpt["target_network"][k], online_at_350[k]) for k in online_at_350)
    assert not all(torch.equal(ckpt["target_network"][k], ckpt["q_network"][k]) for k in online_at_350)


def test_same_seed_gives_the_same_numbers_on_cpu(in_tmp):
    a = dqn.train(tiny_args("--run-name", "a", "--seed", "7"))
    b = dqn.train(tiny_args("--run-name", "b", "--seed", "7"))
    c = dqn.train(tiny_args("--run-name", "c", "--seed", "8"))
    drop_timing = lambda rows: [{k: v for k, v in r.items() if k not in ("time", "sps")} for r in rows]
    assert drop_timing(read_metrics(in_tmp / "runs/a")) == drop_timing(read_metrics(in_tmp / "runs/b"))
    assert a["eval_start_q"] == b["eval_start_q"]
    wa = torch.load(in_tmp / "runs/a/model.pt", weights_only=True)["q_network"]
    wb = torch.load(in_tmp / "runs/b/model.pt", weights_only=True)["q_network"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert c["eval_start_q"] != a["eval_start_q"]


def all_tensors(state):
    if isinstance(state, torch.Tensor):
        yield state
    elif isinstance(state, dict | list | tuple):
        for value in state.values() if isinstance(state, dict) else state:
            yield from all_tensors(value)


def test_checkpoint_with_buffer_then_resume_trains_at_once(finished_run, in_tmp):
    copy_run(finished_run, in_tmp, "ck")
    ckpt = torch.load(in_tmp / "runs/ck/checkpoint.pt", weights_only=True)
    assert ckpt["global_step"] == 400 and ckpt["num_updates"] == 28
    assert all(t.device.type == "cpu" for t in all_tensors(ckpt))  # it loads on any machine
    assert ckpt["buffer"]["size"] == 400 and not (in_tmp / "runs/ck/checkpoint.pt.tmp").exists()
    model = torch.load(in_tmp / "runs/ck/model.pt", weights_only=True)
    assert all(torch.equal(ckpt["q_network"][k], model["q_network"][k]) for k in model["q_network"])
    assert ckpt["optimizer"]["state"]

    args = dqn.parse_args(["--resume", str(in_tmp / "runs/ck/checkpoint.pt"), "--total-timesteps", "500"])
    assert args.batch_size == 16 and args.hidden_sizes == [16, 16]  # settings come from the checkpoint
    summary = dqn.train(args)
    assert summary["global_step"] == 500
    rows = read_metrics(in_tmp / "runs/ck")
    assert [int(r["global_step"]) for r in rows] == [100, 200, 300, 400, 500]
    # The buffer came back (400 + 100 transitions), so training continued right away: 2 more rounds.
    assert int(rows[-1]["gradient_steps"]) == 28 + 8
    # The exploration schedule continues on the new total: epsilon at step 500 of 500.
    assert float(rows[-1]["epsilon"]) == pytest.approx(0.04)
    # One run: the time column goes on from the checkpoint's clock, and the wall time covers both parts.
    times = [float(r["time"]) for r in rows]
    assert times == sorted(times) and times[-1] >= ckpt["elapsed"] > 0
    assert summary["wall_time"] >= round(ckpt["elapsed"], 1)


def assert_same_state(a, b, where="checkpoint"):
    """Equal nested dicts, lists, tensors and plain values, key for key."""
    if isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            assert_same_state(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


def fresh_run(args, device=torch.device("cpu")):
    """A Run over new objects of the tiny run's shapes, as train() would make them, for a run on `device` (its
    objects stay on the CPU: nothing of a fresh run touches them but the loading of a checkpoint)."""
    q_network, target_network = dqn.QNetwork(4, 2, [16, 16]), dqn.QNetwork(4, 2, [16, 16])
    training = {"target_network": target_network, "optimizer": torch.optim.Adam(q_network.parameters(), lr=1.0),
                "buffer": dqn.ReplayBuffer(1000, 4, torch.device("cpu"))}
    run = dqn.Run(args, device, {"obs_dim": 4, "n_actions": 2, "q_network": q_network}, training,
                  np.random.default_rng(0))
    run.metrics.close()
    return run


def saved_again(run, step: int, num_updates: int) -> dict:
    """The checkpoint the run writes now."""
    run.save_checkpoint(step, num_updates)
    return torch.load(run.dir / "checkpoint.pt", weights_only=True)


def test_resume_restores_everything_the_checkpoint_holds(finished_run, in_tmp):
    # Saving and resuming go by the same list: a checkpoint restored into fresh objects and saved
    # again is the same checkpoint, key for key (all but the args, which the resume overrides).
    copy_run(finished_run, in_tmp, "rs")
    ckpt = torch.load(in_tmp / "runs/rs/checkpoint.pt", weights_only=True)
    run = fresh_run(dqn.parse_args(["--resume", str(in_tmp / "runs/rs/checkpoint.pt"), "--total-timesteps", "500"]))
    assert (run.start_step, run.start_updates) == (400, 28)
    again = saved_again(run, 400, 28)
    assert again["args"]["total_timesteps"] == 500 and ckpt["args"]["total_timesteps"] == 400
    # The clock goes on from the checkpoint's: the only key that may differ besides the args.
    assert again["elapsed"] >= ckpt["elapsed"] > 0
    assert_same_state({k: v for k, v in again.items() if k not in ("args", "elapsed")},
                      {k: v for k, v in ckpt.items() if k not in ("args", "elapsed")})


def test_resume_refuses_a_model_another_scripts_checkpoint_or_a_finished_run(finished_run, in_tmp, capsys):
    copy_run(finished_run, in_tmp, "m")
    ckpt = torch.load(in_tmp / "runs/m/checkpoint.pt", weights_only=True)
    torch.save(ckpt | {"algorithm": "ddqn"}, in_tmp / "ddqn_checkpoint.pt")
    torch.save({"algorithm": "ppo_discrete", "args": {}}, in_tmp / "ppo.pt")
    (in_tmp / "notes.txt").write_text("not a checkpoint")
    torch.save({"numpy": np.zeros(2)}, in_tmp / "pickled.pt")  # refused by weights_only
    capsys.readouterr()
    for flag, path, message in [
        ("--resume", "runs/m/model.pt", "{path} is not a checkpoint.pt of dqn.py"),
        ("--resume", "ddqn_checkpoint.pt", "{path} was saved by ddqn.py, not dqn.py; use python ddqn.py --resume {path}"),
        ("--evaluate", "ppo.pt", "{path} was saved by ppo_discrete.py, not dqn.py; use python ppo_discrete.py --evaluate"),
        ("--resume", "notes.txt", "cannot read {path}: not a model.pt or checkpoint.pt saved by these scripts"),
        ("--evaluate", "pickled.pt", "cannot read {path}: not a model.pt or checkpoint.pt saved by these scripts"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            dqn.main([flag, str(in_tmp / path)])
        assert exit_info.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and message.format(path=in_tmp / path) in lines[0], lines
    # The run's own checkpoint, at its end: nothing to train, and its summary stays as it was.
    summary = (in_tmp / "runs/m/summary.json").read_text()
    with pytest.raises(SystemExit) as exit_info:
        dqn.main(["--resume", str(in_tmp / "runs/m/checkpoint.pt")])
    assert exit_info.value.code == 2
    assert "ends at step 400, already the end of --total-timesteps 400" in capsys.readouterr().err
    assert (in_tmp / "runs/m/summary.json").read_text() == summary


def test_cuda_random_state_is_saved_and_restored(finished_run, in_tmp, monkeypatch):
    run_dir = copy_run(finished_run, in_tmp)
    states = [torch.tensor([1, 2, 3], dtype=torch.uint8), torch.tensor([4, 5, 6], dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: states)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.extend)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert ckpt["cuda_rng"] is None  # saved by a CPU run
    torch.save(ckpt | {"cuda_rng": states}, run_dir / "checkpoint.pt")  # as a 2-GPU machine saves it
    cuda = torch.device("cuda")
    run = fresh_run(dqn.parse_args(["--resume", str(run_dir / "checkpoint.pt"), "--total-timesteps", "500"]), cuda)
    assert len(restored) == 1 and torch.equal(restored[0], states[0])  # one device here: the first state
    saved = saved_again(run, 400, 28)["cuda_rng"]
    assert len(saved) == 2 and all(torch.equal(a, b) for a, b in zip(saved, states))
    # A CPU run on this machine neither restores that state nor saves one.
    run = fresh_run(dqn.parse_args(["--resume", str(run_dir / "checkpoint.pt"), "--total-timesteps", "500"]))
    assert len(restored) == 1 and saved_again(run, 400, 28)["cuda_rng"] is None
    # A checkpoint written before these keys existed still resumes.
    old = {k: v for k, v in ckpt.items() if k not in ("cuda_rng", "elapsed", "eval_time")}
    torch.save(old, run_dir / "checkpoint.pt")
    restored.clear()
    run = fresh_run(dqn.parse_args(["--resume", str(run_dir / "checkpoint.pt"), "--total-timesteps", "500"]), cuda)
    assert run.start_step == 400 and restored == [] and run.elapsed() < ckpt["elapsed"] + 5


@pytest.mark.parametrize("flags, message", [
    (["--env-id", "Acrobot-v1"], "does not fit these networks: obs_dim is 4 there, 6 here; resume with the flags "
                                 "it was trained with (drop --env-id)"),
    (["--hidden-sizes", "32"], "the shape in current model is torch.Size([2, 32]).; resume with the flags it was "
                               "trained with (drop --hidden-sizes)"),
    ([], "does not fit these networks: size mismatch for out.weight"),  # a damaged file
])
def test_resume_with_flags_that_change_the_networks_names_the_flag(finished_run, in_tmp, capsys, flags, message):
    run_dir = copy_run(finished_run, in_tmp)
    if not flags:
        ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
        ckpt["q_network"]["out.weight"] = torch.zeros(2, 5)
        torch.save(ckpt, run_dir / "checkpoint.pt")
    with pytest.raises(SystemExit) as exit_info:
        dqn.main(["--resume", str(run_dir / "checkpoint.pt"), "--total-timesteps", "500", *flags])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def test_cuda_run_says_once_what_runs_where(in_tmp, capsys):
    fresh_run(tiny_args("--run-name", "gpu"), device=torch.device("cuda"))  # nothing of it touches the GPU
    assert capsys.readouterr().out.count(
        "device cuda: acting on a CPU copy of the q_network (refreshed after each update); "
        "updates and the replay buffer on the GPU") == 1


def test_resume_without_buffer_refills_before_training(in_tmp):
    dqn.train(tiny_args("--run-name", "nb", "--checkpoint-every", "400", "--eval-episodes", "0", "--no-save-buffer"))
    assert torch.load(in_tmp / "runs/nb/checkpoint.pt", weights_only=True)["buffer"] is None
    dqn.train(dqn.parse_args(["--resume", str(in_tmp / "runs/nb/checkpoint.pt"), "--total-timesteps", "600"]))
    rows = read_metrics(in_tmp / "runs/nb")
    # An empty buffer needs --learning-starts 100 transitions first: the rounds at 450 and 500 that
    # the run with its buffer does (28 + 8 at step 500, see above) shrink to the one at 500.
    assert [int(r["gradient_steps"]) for r in rows][-2:] == [28 + 4, 28 + 12]


def test_resume_drops_metrics_logged_after_the_checkpoint(finished_run, in_tmp):
    copy_run(finished_run, in_tmp, "crash")
    ckpt = torch.load(in_tmp / "runs/crash/checkpoint.pt", weights_only=True)
    ckpt["global_step"] = 200  # as if the run had died right after step 200
    torch.save(ckpt, in_tmp / "runs/crash/checkpoint.pt")
    (in_tmp / "runs/crash/summary.json").unlink()  # which a run that died has not written
    dqn.train(dqn.parse_args(["--resume", str(in_tmp / "runs/crash/checkpoint.pt")]))
    assert [int(r["global_step"]) for r in read_metrics(in_tmp / "runs/crash")] == [100, 200, 300, 400]


def test_resume_of_a_finished_run_from_an_earlier_checkpoint_is_refused_and_changes_nothing(finished_run, in_tmp,
                                                                                           capsys):
    # A finished run whose checkpoint.pt is not its final state (a checkpoint written before the
    # last one, as files of older versions hold): resuming would retrain and overwrite its results.
    copy_run(finished_run, in_tmp, "done")
    ckpt = torch.load(in_tmp / "runs/done/checkpoint.pt", weights_only=True)
    torch.save(ckpt | {"global_step": 200}, in_tmp / "runs/done/checkpoint.pt")
    files = {name: (in_tmp / "runs/done" / name).read_bytes() for name in ("model.pt", "summary.json", "metrics.csv")}
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        dqn.main(["--resume", str(in_tmp / "runs/done/checkpoint.pt"), "--total-timesteps", "600"])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "runs/done finished at step 400 (summary.json); its checkpoint.pt is from step 200" \
        in lines[0], lines
    assert all((in_tmp / "runs/done" / name).read_bytes() == data for name, data in files.items())
    (in_tmp / "runs/done/summary.json").write_text("{")
    with pytest.raises(dqn.UsageError, match=r"runs/done/summary.json is damaged; start a new run"):
        dqn.train(dqn.parse_args(["--resume", str(in_tmp / "runs/done/checkpoint.pt"), "--total-timesteps", "600"]))
    # A checkpoint past the summary's step: the run was being extended when it stopped; it goes on.
    (in_tmp / "runs/done/summary.json").write_text(json.dumps({"global_step": 100}))
    summary = dqn.train(dqn.parse_args(["--resume", str(in_tmp / "runs/done/checkpoint.pt"), "--total-timesteps", "600",
                                        "--eval-episodes", "0"]))
    assert summary["global_step"] == 600


def test_an_unfinished_run_name_starts_afresh_and_a_finished_one_is_refused_untouched(in_tmp):
    dqn.train(tiny_args("--run-name", "again", "--eval-episodes", "0"))
    (in_tmp / "runs/again/summary.json").unlink()  # as if interrupted: benchmark.py starts it again
    dqn.train(tiny_args("--run-name", "again", "--eval-episodes", "0"))
    assert [int(r["global_step"]) for r in read_metrics(in_tmp / "runs/again")] == [100, 200, 300, 400]
    before = {p.name: p.read_bytes() for p in (in_tmp / "runs/again").iterdir()}
    with pytest.raises(dqn.UsageError, match=r"^runs/again holds a finished run \(summary.json\), which this run "):
        dqn.train(tiny_args("--run-name", "again", "--eval-episodes", "0", "--learning-rate", "1e30"))
    assert {p.name: p.read_bytes() for p in (in_tmp / "runs/again").iterdir()} == before


def test_boltzmann_variant_trains_and_logs_temperature(in_tmp):
    dqn.train(tiny_args("--run-name", "boltz", "--exploration", "boltzmann", "--eval-episodes", "0",
                        "--exploration-fraction", "1.0", "--loss", "mse", "--tau", "0.5", "--num-envs", "3"))
    rows = read_metrics(in_tmp / "runs/boltz")
    # 3 envs: rows where the step count crosses a multiple of 100 (102, 201, 300) and the last (402).
    assert [int(r["global_step"]) for r in rows] == [102, 201, 300, 402]
    # The temperature falls linearly from 10 to 0.1 over the 400 steps (logged at the step before).
    temperatures = [float(r["temperature"]) for r in rows]
    np.testing.assert_allclose(temperatures, [10 - 9.9 * s / 400 for s in (99, 198, 297, 399)])
    assert all(r["epsilon"] == "" for r in rows)
    assert all(np.isfinite(float(r["td_loss"])) for r in rows)


# --- Bad input: one line on stderr, exit code 2, no traceback ---


@pytest.mark.parametrize("flags, message", [
    (["--env-id", "CartPol-v1"], "cannot make CartPol-v1: Environment `CartPol` doesn't exist. Did you mean: `CartPole`?"),
    (["--num-envs", "0"], "--num-envs must be positive"),
    (["--buffer-size", "-5"], "--buffer-size must be positive"),
    (["--gradient-steps", "0"], "--gradient-steps must be positive"),
    (["--learning-starts", "5000", "--buffer-size", "1000"], "the buffer could never hold enough"),
    (["--total-timesteps", "500", "--learning-starts", "1000"], "training would never start"),
    (["--tau", "1.5"], "--tau must be in (0, 1]"),
    (["--end-e", "2"], "--end-e must be in [0, 1]"),
    (["--hidden-sizes", "64", "0"], "--hidden-sizes needs one or more positive"),
    (["--loss", "huber", "--huber-delta", "0"], "--huber-delta must be positive"),
    (["--resume", "no/such/checkpoint.pt"], "no file at no/such/checkpoint.pt"),
    (["--learning-rate", "nan"], "--learning-rate must be a finite number, got nan"),
    (["--gamma", "inf"], "--gamma must be a finite number, got inf"),
    (["--env-id", "nosuchmod:Foo-v0"], "cannot make nosuchmod:Foo-v0: No module named 'nosuchmod'"),
])
def test_bad_input_is_one_line_and_exit_code_2(in_tmp, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        dqn.main(flags)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


def test_a_run_directory_that_cannot_be_written_is_one_line(in_tmp, capsys):
    (in_tmp / "runs").write_text("a file where the runs directory would go")
    with pytest.raises(SystemExit) as exit_info:
        dqn.main([*TINY_DQN, "--run-name", "x"])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["error: cannot write the run directory runs/x: Not a directory; choose another --run-name or "
                     "a writable working directory"]


def test_an_unforeseen_os_error_is_one_line(in_tmp, capsys, monkeypatch):
    def train(args):
        raise PermissionError(errno.EACCES, "Permission denied", "runs/x/metrics.csv")

    monkeypatch.setattr(dqn, "train", train)
    with pytest.raises(SystemExit) as exit_info:
        dqn.main(TINY_DQN)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == ["error: runs/x/metrics.csv: Permission denied"]


def test_box_action_env_points_to_continuous_scripts(tmp_path):
    # The real command line: the error surfaces from inside make_env, as a user would see it.
    result = run_script("dqn.py", "--env-id", "Pendulum-v1", *TINY_DQN, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: Pendulum-v1 has a Box action space")
    assert "ddpg.py" in lines[0] and "naf.py" in lines[0]


# --- The script as a subprocess ---


def test_help_lists_the_flags(tmp_path):
    result = run_script("dqn.py", "--help", cwd=tmp_path)
    assert result.returncode == 0
    for flag in ("--env-id", "--total-timesteps", "--buffer-size", "--learning-starts", "--train-frequency",
                 "--gradient-steps", "--target-network-frequency", "--tau", "--start-e", "--end-e",
                 "--exploration-fraction", "--exploration", "--start-temperature", "--loss", "--max-grad-norm",
                 "--hidden-sizes", "--save-buffer", "--checkpoint-every", "--resume", "--evaluate"):
        assert flag in result.stdout, flag


def test_save_then_evaluate_later_with_video(tmp_path):
    train = run_script("dqn.py", *TINY_DQN, "--run-name", "cli", cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    assert "step" in train.stdout and "SPS" in train.stdout and "epsilon" in train.stdout  # progress line
    assert "Q(first state) predicted" in train.stdout
    summary = json.loads((tmp_path / "runs/cli/summary.json").read_text())

    later = run_script("dqn.py", "--evaluate", "runs/cli/model.pt", "--eval-episodes", "2", "--capture-video",
                       cwd=tmp_path)
    assert later.returncode == 0, later.stderr
    # Same episodes, same greedy network: the same result as at the end of training.
    assert f"eval: {summary['eval_mean']:.1f} ± {summary['eval_std']:.1f} over 2 episodes" in later.stdout
    assert f"Q(first state) predicted {np.mean(summary['eval_start_q']):.2f}" in later.stdout
    assert len(list((tmp_path / "runs/cli/videos").glob("*.mp4"))) == 2


def test_resume_from_the_command_line(tmp_path):
    first = run_script("dqn.py", *TINY_DQN, "--run-name", "cr", "--checkpoint-every", "200",
                       "--eval-episodes", "0", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    resumed = run_script("dqn.py", "--resume", "runs/cr/checkpoint.pt", "--total-timesteps", "600", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from runs/cr/checkpoint.pt at step 400 with 400 transitions in the buffer" in resumed.stdout
    assert json.loads((tmp_path / "runs/cr/summary.json").read_text())["global_step"] == 600


def test_track_without_network_falls_back_to_offline(tmp_path):
    result = run_script("dqn.py", *TINY_DQN, "--run-name", "tr", "--track", "--eval-episodes", "0",
                        cwd=tmp_path, timeout=180)
    assert result.returncode == 0, result.stderr
    assert "wandb: no network, logging offline" in result.stdout
    assert list((tmp_path / "runs/tr/wandb").glob("offline-run-*"))


def test_wandb_probes_the_host_and_port_that_wandb_base_url_names(monkeypatch):
    server = socket.create_server(("127.0.0.1", 0))
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
    try:
        assert dqn.wandb_reachable(timeout=2.0)  # a self-hosted server on its own port
    finally:
        server.close()
    assert not dqn.wandb_reachable(timeout=2.0)  # the same port, closed


def test_wandb_without_an_api_key_logs_offline(in_tmp, monkeypatch, capsys):
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    for name in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("NETRC", str(in_tmp / "netrc"))  # missing for now
    calls = []
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=lambda **kw: calls.append(kw)))
    try:
        dqn.init_wandb(tiny_args(), "run", in_tmp / "run")
        assert calls[-1]["mode"] == "offline"
        assert ("wandb: no API key (run `wandb login` or set WANDB_API_KEY), logging offline to "
                f"{in_tmp / 'run'}/wandb; upload later with `wandb sync`") in capsys.readouterr().out
        (in_tmp / "netrc").write_text(f"machine 127.0.0.1:{port} login user password secret\n")  # `wandb login`
        dqn.init_wandb(tiny_args(), "run", in_tmp / "run")
        assert calls[-1]["mode"] == "online"
    finally:
        server.close()
