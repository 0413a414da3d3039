"""ddpg.py: the replay buffer, action scaling, target, actor loss and exploration noise against
hand-computed values, the gradient step against a plain reference; then train() on a tiny budget
and the script as a user runs it."""

import copy
import csv
import errno
import json
import math
import socket
import sys
import types

import gymnasium as gym
import numpy as np
import pytest
import torch
import tyro
from conftest import run_script

import ddpg

# A budget of a second or two of CPU: uniform actions for 100 steps, then one critic update per
# step and an actor update every second one, with 16-16 networks.
TINY_DDPG = ["--total-timesteps", "400", "--learning-starts", "100", "--buffer-size", "1000",
             "--batch-size", "16", "--hidden-sizes", "16", "16", "--metrics-every", "100",
             "--eval-frequency", "200", "--eval-episodes", "2", "--no-cuda"]

# Asymmetric bounds, on purpose: a tanh stretched as if they were [-1, 1] would leave them.
LOW, HIGH = np.array([0.0, -3.0], np.float32), np.array([1.0, 1.0], np.float32)


def tiny_args(*extra: str) -> ddpg.Args:
    return tyro.cli(ddpg.Args, args=[*TINY_DDPG, *extra])


def read_metrics(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


class CountingBoxEnv(gym.Env):
    """The observation is episode * 100 + t (t = steps taken in the episode), so a real transition
    always goes from x to x + 1, and the first observation of the next episode is a multiple of 100.
    The reward is t. The action is 2-d in [0, 1] x [-3, 1]; a first coordinate above 0.5 terminates.
    The registration truncates episodes after 3 steps."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
    action_space = gym.spaces.Box(LOW, HIGH, dtype=np.float32)

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
        assert self.action_space.contains(np.asarray(action, np.float32)), action
        self.t += 1
        return self.obs(), float(self.t), bool(action[0] > 0.5), False, {}


gym.register("GlassboxCountingBox-v0", entry_point=CountingBoxEnv, max_episode_steps=3)


class ImageEnv(CountingBoxEnv):
    """Image observations, which no flattening makes fit for an MLP."""

    observation_space = gym.spaces.Box(0, 255, (8, 8, 3), np.uint8)


gym.register("GlassboxImage-v0", entry_point=ImageEnv, max_episode_steps=3)


def constant_actor(obs_dim, low, high, tanh_value):
    """An Actor whose tanh output is `tanh_value` (per dimension) whatever the observation."""
    actor = ddpg.Actor(obs_dim, len(low), [4], low, high)
    with torch.no_grad():
        for p in actor.parameters():
            p.zero_()
        actor.out.bias.copy_(torch.atanh(torch.tensor(tanh_value, dtype=torch.float32)))
    return actor


def linear_critic():
    """A Critic on 1-d observations and 1-d actions with Q(s, a) = s + 3 a + 0.5 for s, a >= 0:
    the hidden layer passes relu(s) and relu(a) through, the output layer weighs them."""
    critic = ddpg.Critic(1, 1, [2])
    with torch.no_grad():
        critic.hidden[0].weight.copy_(torch.eye(2))
        critic.hidden[0].bias.zero_()
        critic.out.weight.copy_(torch.tensor([[1.0, 3.0]]))
        critic.out.bias.fill_(0.5)
    return critic


# --- Replay buffer ---


def fill_from_counting_envs(actions_per_step):
    """Steps two GlassboxCountingBox-v0 envs through ddpg's vector env, storing every step."""
    envs = ddpg.make_vector_env(ddpg.Args(env_id="GlassboxCountingBox-v0", num_envs=2))
    rb = ddpg.ReplayBuffer(100, obs_dim=1, act_dim=2, device=torch.device("cpu"))
    obs, _ = envs.reset(seed=0)
    for first_coordinates in actions_per_step:
        actions = np.array([[a, -1.0] for a in first_coordinates], np.float32)
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
    # Every stored transition is real: x -> x + 1, never into the next episode's first observation.
    np.testing.assert_array_equal(next_obs, obs + 1)
    # done is termination only: env 0's truncations keep their bootstrap.
    np.testing.assert_array_equal(rb.terminated[: rb.size][env0], [0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(rb.terminated[: rb.size][env1], [0, 1, 1, 0, 0, 1])
    np.testing.assert_array_equal(rb.rewards[: rb.size][env0], [1, 2, 3, 1, 2, 3])
    np.testing.assert_array_equal(rb.actions[: rb.size][env1], [[0, -1], [1, -1], [1, -1], [0, -1], [0, -1], [1, -1]])


def test_buffer_wraps_around_samples_filled_rows_and_round_trips():
    rb = ddpg.ReplayBuffer(5, obs_dim=2, act_dim=1, device=torch.device("cpu"))
    no_end = np.zeros(2, bool)
    for step in range(4):  # 2 envs x 4 steps = 8 transitions into 5 rows
        obs = np.array([[step, 0], [step, 1]], np.float32)
        rb.add(obs, np.array([[step], [-step]], np.float32), obs + 10, np.array([step, -step], np.float32),
               no_end, no_end, {})
    assert rb.size == 5 and rb.pos == 3
    assert sorted(map(tuple, rb.obs.tolist())) == [(1, 1), (2, 0), (2, 1), (3, 0), (3, 1)]
    np.testing.assert_array_equal(rb.next_obs, rb.obs + 10)
    b_obs, b_actions, b_rewards, _, _ = next(rb.sample(64, 1, np.random.default_rng(0)))
    assert b_obs.shape == (64, 2) and b_actions.shape == (64, 1) and b_actions.dtype == torch.float32
    torch.testing.assert_close(b_actions[:, 0], b_rewards)  # rows stay whole: action and reward match

    # Into a larger buffer: the five rows arrive oldest first (the full buffer's oldest is at its
    # pos, 3) and the next write goes after them, so no unwritten row is ever sampled.
    restored = ddpg.ReplayBuffer(10, obs_dim=2, act_dim=1, device=torch.device("cpu"))
    restored.load_state_dict(rb.state_dict())
    assert (restored.pos, restored.size) == (5, 5)
    for name in ("obs", "actions", "rewards", "next_obs", "terminated"):
        np.testing.assert_array_equal(getattr(restored, name)[:5], np.roll(getattr(rb, name), -3, axis=0))
    assert restored.obs[:5].tolist() == [[1, 1], [2, 0], [2, 1], [3, 0], [3, 1]]
    obs = np.full((2, 2), 4.0, np.float32)
    restored.add(obs, np.zeros((2, 1)), obs + 10, np.zeros(2), np.zeros(2, bool), np.zeros(2, bool), {})
    assert (restored.pos, restored.size) == (7, 7) and restored.obs[5:7].tolist() == [[4, 4], [4, 4]]
    # Into a smaller buffer: the newest four of the five, oldest first; the next write replaces the oldest.
    smaller = ddpg.ReplayBuffer(4, obs_dim=2, act_dim=1, device=torch.device("cpu"))
    smaller.load_state_dict(rb.state_dict())
    assert (smaller.pos, smaller.size) == (0, 4)
    assert smaller.obs.tolist() == [[2, 0], [2, 1], [3, 0], [3, 1]]
    np.testing.assert_array_equal(smaller.next_obs, smaller.obs + 10)


# --- Networks: action scaling ---


def test_actor_stretches_tanh_to_asymmetric_bounds():
    obs = torch.zeros(1, 3)
    with torch.no_grad():
        top = constant_actor(3, LOW, HIGH, [1.0 - 1e-7, 1.0 - 1e-7])(obs)[0]
        bottom = constant_actor(3, LOW, HIGH, [-1.0 + 1e-7, -1.0 + 1e-7])(obs)[0]
        middle = constant_actor(3, LOW, HIGH, [0.0, 0.0])(obs)[0]
        quarter = constant_actor(3, LOW, HIGH, [0.5, -0.5])(obs)[0]
    torch.testing.assert_close(top, torch.tensor([1.0, 1.0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(bottom, torch.tensor([0.0, -3.0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(middle, torch.tensor([0.5, -1.0]))
    torch.testing.assert_close(quarter, torch.tensor([0.75, -2.0]))
    # Whatever the weights, every action is inside the box.
    torch.manual_seed(0)
    wild = ddpg.Actor(3, 2, [8], LOW, HIGH)
    with torch.no_grad():
        for p in wild.parameters():
            p.mul_(100.0)
        actions = wild(torch.randn(1000, 3))
    assert (actions >= torch.from_numpy(LOW)).all() and (actions <= torch.from_numpy(HIGH)).all()


# --- Target, actor loss, target networks ---


def test_td_target_hand_computed():
    # Target actor: tanh output 0.5 on bounds [0, 2], so mu'(s') = 1.5 everywhere. Target critic:
    # Q'(s', a') = s' + 3 a' + 0.5, so Q'(s', mu'(s')) = s' + 5.
    target_actor = constant_actor(1, np.array([0.0]), np.array([2.0]), [0.5])
    target_critic = linear_critic()
    rewards, terminated = torch.tensor([1.0, 0.5, 2.0]), torch.tensor([0.0, 0.0, 1.0])
    next_obs = torch.tensor([[1.0], [2.0], [3.0]])
    with torch.no_grad():
        y = ddpg.td_target(target_actor, target_critic, rewards, next_obs, terminated, gamma=0.5)
    # 1 + 0.5 * 6,  0.5 + 0.5 * 7,  terminated: 2 alone.
    torch.testing.assert_close(y, torch.tensor([4.0, 4.0, 2.0]))


def test_actor_loss_climbs_the_critic_and_leaves_its_weights_alone():
    actor = constant_actor(1, np.array([0.0]), np.array([2.0]), [0.5])  # mu(s) = 1.5
    critic = linear_critic()  # Q(s, a) = s + 3 a + 0.5
    obs = torch.tensor([[1.0], [3.0]])
    loss = ddpg.actor_loss(actor, critic, obs)
    assert loss.item() == pytest.approx(-((1 + 4.5 + 0.5) + (3 + 4.5 + 0.5)) / 2)
    actor_params = list(actor.parameters())
    loss.backward(inputs=actor_params)
    assert all(p.grad is None for p in critic.parameters())
    # dQ/da = 3 > 0, through a = 1 + tanh(b): the gradient on the output bias is -3 (1 - 0.5^2).
    assert actor.out.bias.grad.item() == pytest.approx(-3 * 0.75)
    torch.optim.SGD(actor_params, lr=0.1).step()
    assert ddpg.actor_loss(actor, critic, obs).item() < loss.item()


def test_update_target_polyak_and_copy():
    torch.manual_seed(0)
    online, target = ddpg.Critic(3, 2, [4]), ddpg.Critic(3, 2, [4])
    before = [p.clone() for p in target.parameters()]
    ddpg.update_target(target, online, tau=0.25)
    for old, new, theta in zip(before, target.parameters(), online.parameters()):
        torch.testing.assert_close(new, 0.25 * theta + 0.75 * old)
    ddpg.update_target(target, online, tau=1.0)
    assert all(torch.equal(a, b) for a, b in zip(target.parameters(), online.parameters()))


# --- The algorithm's steps: exploration, the gradient step ---


def test_gaussian_and_ornstein_uhlenbeck_noise_statistics():
    rng = np.random.default_rng(0)
    gaussian = ddpg.ActionNoise(20_000, 2, 0.3, ou=False, theta=0.15)
    a, b = gaussian.sample(rng), gaussian.sample(rng)
    assert a.std() == pytest.approx(0.3, rel=0.02) and abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.02

    ou = ddpg.ActionNoise(20_000, 2, 0.3, ou=True, theta=0.15)
    for _ in range(100):
        x = ou.sample(rng)
    y = ou.sample(rng)
    # Stationary: x = (1 - theta) x + sigma eps has variance sigma^2 / (1 - (1 - theta)^2), and
    # successive values correlate at 1 - theta.
    assert x.std() == pytest.approx(0.3 / math.sqrt(0.15 * 1.85), rel=0.03)
    assert np.corrcoef(x.ravel(), y.ravel())[0, 1] == pytest.approx(0.85, abs=0.01)
    ends = np.zeros(20_000, bool)
    ends[:10] = True
    ou.reset(ends)
    assert (ou.state[:10] == 0).all() and (ou.state[10:] != 0).all()


def test_select_actions_uniform_then_noisy_and_clipped():
    rng = np.random.default_rng(0)
    n = 20_000
    noise = ddpg.ActionNoise(n, 2, 0.1, ou=False, theta=0.15)
    obs = np.zeros((n, 1), np.float32)
    uniform = ddpg.select_actions(None, obs, noise, True, LOW, HIGH, rng)
    assert uniform.dtype == np.float32 and (uniform >= LOW).all() and (uniform <= HIGH).all()
    np.testing.assert_allclose(uniform.mean(0), (LOW + HIGH) / 2, atol=0.03)
    np.testing.assert_allclose(uniform.std(0), (HIGH - LOW) / math.sqrt(12), rtol=0.03)
    # mu = (0.5, -1): the noise's std is 0.1 of each half-range, (0.05, 0.2).
    noisy = ddpg.select_actions(lambda o: np.tile([0.5, -1.0], (len(o), 1)), obs, noise, False, LOW, HIGH, rng)
    np.testing.assert_allclose(noisy.mean(0), [0.5, -1.0], atol=0.01)
    np.testing.assert_allclose(noisy.std(0), [0.05, 0.2], rtol=0.03)
    # At the bound, the noisy action is clipped: half the draws land exactly on it.
    at_top = ddpg.select_actions(lambda o: np.tile(HIGH, (len(o), 1)), obs, noise, False, LOW, HIGH, rng)
    assert (at_top <= HIGH).all() and (at_top == HIGH).mean() == pytest.approx(0.5, abs=0.02)


def random_step_setup(seed=0):
    """Small random networks, their target copies (moved off the online ones, so that a Polyak step
    shows), SGD optimizers and a minibatch with one terminated transition."""
    torch.manual_seed(seed)
    low, high = np.array([-2.0, 0.0], np.float32), np.array([2.0, 1.0], np.float32)
    actor, critic = ddpg.Actor(3, 2, [8], low, high), ddpg.Critic(3, 2, [8])
    target_actor, target_critic = ddpg.Actor(3, 2, [8], low, high), ddpg.Critic(3, 2, [8])
    nets = {"actor": actor, "critic": critic, "target_actor": target_actor, "target_critic": target_critic}
    optimizers = {"actor_optimizer": torch.optim.SGD(actor.parameters(), lr=0.1),
                  "critic_optimizer": torch.optim.SGD(critic.parameters(), lr=0.1)}
    batch = (torch.randn(6, 3), torch.rand(6, 2) * torch.tensor([4.0, 1.0]) - torch.tensor([2.0, 0.0]),
             torch.randn(6), torch.randn(6, 3), torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0, 0.0]))
    return nets, optimizers, batch


def sgd_reference(loss, params, lr=0.1):
    return [p.detach() - lr * g for p, g in zip(params, torch.autograd.grad(loss, params))]


def test_gradient_step_critic_step_matches_a_plain_reference():
    nets, optimizers, batch = random_step_setup()
    before = copy.deepcopy(nets)
    obs, actions, rewards, next_obs, terminated = batch
    # The reference, written out: y from the target copies, then one SGD step on the mean squared error.
    with torch.no_grad():
        y = rewards + 0.9 * (1 - terminated) * before["target_critic"](next_obs, before["target_actor"](next_obs))
    q = before["critic"](obs, actions)
    loss = ((q - y) ** 2).mean()
    expected = sgd_reference(loss, list(before["critic"].parameters()))

    values = ddpg.gradient_step(**nets, **optimizers, batch=batch, gamma=0.9, tau=0.25, update_actor=False)
    for new, want in zip(nets["critic"].parameters(), expected):
        torch.testing.assert_close(new, want)
    torch.testing.assert_close(values["critic_loss"], loss.detach())
    torch.testing.assert_close(values["q_taken"], q.detach())
    assert "actor_loss" not in values
    # Without an actor step nothing else moves: not the actor, and not the target networks.
    for name in ("actor", "target_actor", "target_critic"):
        assert all(torch.equal(a, b) for a, b in zip(nets[name].parameters(), before[name].parameters())), name


def test_gradient_step_actor_step_leaves_the_critic_alone_and_moves_the_targets():
    nets, optimizers, batch = random_step_setup(seed=1)
    critic_only = copy.deepcopy((nets, optimizers))
    before = copy.deepcopy(nets)
    values = ddpg.gradient_step(**nets, **optimizers, batch=batch, gamma=0.9, tau=0.25, update_actor=True)
    ddpg.gradient_step(**critic_only[0], **critic_only[1], batch=batch, gamma=0.9, tau=0.25, update_actor=False)
    # The critic: the same weights, and the same gradients, as after the critic step alone.
    for with_actor, alone in zip(nets["critic"].parameters(), critic_only[0]["critic"].parameters()):
        assert torch.equal(with_actor, alone) and torch.equal(with_actor.grad, alone.grad)
    # The actor: one SGD step up Q(s, mu(s)), valued by the critic as it is after its own step.
    obs = batch[0]
    ascent = -nets["critic"](obs, before["actor"](obs)).mean()
    expected = sgd_reference(ascent, list(before["actor"].parameters()))
    for new, want in zip(nets["actor"].parameters(), expected):
        torch.testing.assert_close(new, want)
    torch.testing.assert_close(values["actor_loss"], ascent.detach())
    # Both targets: theta' <- tau theta + (1 - tau) theta', from the networks just updated.
    for online, target in (("actor", "target_actor"), ("critic", "target_critic")):
        for new, theta, old in zip(nets[target].parameters(), nets[online].parameters(), before[target].parameters()):
            torch.testing.assert_close(new, 0.25 * theta + 0.75 * old)


# --- Part 2: acting in numpy, evaluation ---


def test_acting_actions_match_the_actor_and_follow_its_updates():
    torch.manual_seed(0)
    actor = ddpg.Actor(4, 2, [32, 16], LOW, HIGH)
    act = ddpg.acting_actions(actor)
    obs = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)

    def torch_actions():
        with torch.no_grad():
            return actor(torch.from_numpy(obs)).numpy()
    np.testing.assert_allclose(act(obs), torch_actions(), rtol=1e-5, atol=1e-6)
    # The numpy arrays are views of the parameters: an optimizer step and a load_state_dict, both
    # in place, show up without rebuilding anything.
    optimizer = torch.optim.Adam(actor.parameters(), lr=0.1, fused=True)
    actor(torch.from_numpy(obs)).sum().backward()
    optimizer.step()
    np.testing.assert_allclose(act(obs), torch_actions(), rtol=1e-5, atol=1e-6)
    actor.load_state_dict(ddpg.Actor(4, 2, [32, 16], LOW, HIGH).state_dict())
    np.testing.assert_allclose(act(obs), torch_actions(), rtol=1e-5, atol=1e-6)


def test_evaluate_reports_predicted_q_beside_earned_discounted_return():
    # GlassboxCountingBox-v0 with first coordinate 0.25 (no termination): 3 steps, rewards 1, 2, 3.
    actor = constant_actor(1, LOW, HIGH, [-0.5, 0.0])  # a = (0.25, -1)
    critic = ddpg.Critic(1, 2, [4])
    with torch.no_grad():
        for p in critic.parameters():
            p.zero_()
        critic.out.bias.fill_(5.0)
    returns, discounted, start_q = ddpg.evaluate(actor, critic, "GlassboxCountingBox-v0", {}, 2, 0, 0.5, torch.device("cpu"))
    assert returns == [6.0, 6.0]
    assert discounted == [1 + 0.5 * 2 + 0.25 * 3] * 2
    assert start_q == [5.0, 5.0]


# --- train() end to end ---


def test_train_smoke_writes_metrics_model_and_summary(in_tmp):
    summary = ddpg.train(tiny_args("--run-name", "smoke"))
    run_dir = in_tmp / "runs" / "smoke"
    rows = read_metrics(run_dir)
    assert [int(r["global_step"]) for r in rows] == [100, 200, 300, 400]
    # The buffer holds 100 transitions at step 100: one critic update per step from there on.
    assert [int(r["gradient_steps"]) for r in rows] == [1, 101, 201, 301]
    assert rows[0]["actor_loss"] == ""  # the first actor update is the second critic update's
    for key in ("critic_loss", "q_taken", "sps"):
        assert all(np.isfinite(float(r[key])) for r in rows), key
    assert all(np.isfinite(float(r["actor_loss"])) for r in rows[1:])
    evaluated = [r for r in rows if r["eval_return"]]
    assert [int(r["global_step"]) for r in evaluated] == [200, 400]
    assert summary["global_step"] == 400 and len(summary["eval_returns"]) == 2
    assert summary["algorithm"] == "ddpg" and summary["env_id"] == "Pendulum-v1"
    assert json.loads((run_dir / "summary.json").read_text())["eval_mean"] == summary["eval_mean"]
    actor, critic, _ = ddpg.load_model(str(run_dir / "model.pt"), torch.device("cpu"))
    returns = ddpg.evaluate(actor, critic, "Pendulum-v1", {}, 2, ddpg.eval_seed(1), 0.98, torch.device("cpu"))[0]
    assert returns == summary["eval_returns"]


def test_training_loop_stores_only_real_transitions(in_tmp):
    """The buffer that train() filled, from its checkpoint: on GlassboxCountingBox-v0 every stored
    transition must go from x to x + 1, stay inside the asymmetric bounds, and be done exactly when
    its first action coordinate was above 0.5; episodes that ran into the 3-step limit keep 0."""
    ddpg.train(tiny_args("--env-id", "GlassboxCountingBox-v0", "--run-name", "count", "--checkpoint-every", "400",
                         "--eval-episodes", "0", "--num-envs", "2", "--exploration-noise", "0.5"))
    buffer = torch.load(in_tmp / "runs/count/checkpoint.pt", weights_only=True)["buffer"]
    obs, next_obs = buffer["obs"][:, 0], buffer["next_obs"][:, 0]
    actions, terminated = buffer["actions"], buffer["terminated"]
    assert buffer["size"] == 400
    torch.testing.assert_close(next_obs, obs + 1)
    torch.testing.assert_close(terminated, (actions[:, 0] > 0.5).float())
    assert (actions >= torch.from_numpy(LOW)).all() and (actions <= torch.from_numpy(HIGH)).all()
    truncated = (obs % 100 == 2) & (actions[:, 0] <= 0.5)  # the third step of an episode, not terminated
    assert truncated.sum() > 10 and terminated[truncated].sum() == 0


def test_same_seed_gives_the_same_numbers_on_cpu(in_tmp):
    a = ddpg.train(tiny_args("--run-name", "a", "--seed", "7", "--ou-noise"))
    b = ddpg.train(tiny_args("--run-name", "b", "--seed", "7", "--ou-noise"))
    c = ddpg.train(tiny_args("--run-name", "c", "--seed", "8", "--ou-noise"))
    drop_timing = lambda rows: [{k: v for k, v in r.items() if k not in ("time", "sps")} for r in rows]
    assert drop_timing(read_metrics(in_tmp / "runs/a")) == drop_timing(read_metrics(in_tmp / "runs/b"))
    assert a["eval_start_q"] == b["eval_start_q"]
    wa = torch.load(in_tmp / "runs/a/model.pt", weights_only=True)["actor"]
    wb = torch.load(in_tmp / "runs/b/model.pt", weights_only=True)["actor"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert c["eval_start_q"] != a["eval_start_q"]


def test_checkpoint_with_buffer_then_resume_trains_at_once(in_tmp):
    ddpg.train(tiny_args("--run-name", "ck", "--checkpoint-every", "200", "--eval-episodes", "0"))
    ckpt = torch.load(in_tmp / "runs/ck/checkpoint.pt", weights_only=True)
    assert ckpt["global_step"] == 400 and ckpt["num_updates"] == 301
    assert ckpt["buffer"]["size"] == 400 and not (in_tmp / "runs/ck/checkpoint.pt.tmp").exists()
    model = torch.load(in_tmp / "runs/ck/model.pt", weights_only=True)
    assert all(torch.equal(ckpt["actor"][k], model["actor"][k]) for k in model["actor"])
    assert ckpt["actor_optimizer"]["state"] and ckpt["critic_optimizer"]["state"]

    args = ddpg.parse_args(["--resume", str(in_tmp / "runs/ck/checkpoint.pt"), "--total-timesteps", "500"])
    assert args.batch_size == 16 and args.hidden_sizes == [16, 16]  # settings come from the checkpoint
    summary = ddpg.train(args)
    assert summary["global_step"] == 500
    rows = read_metrics(in_tmp / "runs/ck")
    assert [int(r["global_step"]) for r in rows] == [100, 200, 300, 400, 500]
    # The buffer came back, so training went on from the first step: 100 more updates.
    assert int(rows[-1]["gradient_steps"]) == 301 + 100


def test_resume_without_buffer_collects_uniform_data_first(in_tmp):
    ddpg.train(tiny_args("--run-name", "nb", "--checkpoint-every", "400", "--eval-episodes", "0", "--no-save-buffer"))
    assert torch.load(in_tmp / "runs/nb/checkpoint.pt", weights_only=True)["buffer"] is None
    ddpg.train(ddpg.parse_args(["--resume", str(in_tmp / "runs/nb/checkpoint.pt"), "--total-timesteps", "600"]))
    rows = read_metrics(in_tmp / "runs/nb")
    # An empty buffer needs --learning-starts 100 transitions again: updates resume at step 500.
    assert [int(r["gradient_steps"]) for r in rows][-2:] == [301 + 1, 301 + 101]


# --- Bad input: one line on stderr, exit code 2, no traceback ---


@pytest.mark.parametrize("flags, message", [
    (["--env-id", "Pendulum-v2"], "cannot make Pendulum-v2: Environment version `v2` for environment `Pendulum` "
                                  "doesn't exist. It provides versioned environments: [ `v1` ]."),
    (["--num-envs", "0"], "--num-envs must be positive"),
    (["--policy-frequency", "0"], "--policy-frequency must be positive"),
    (["--updates-per-step", "-1"], "--updates-per-step must be positive"),
    (["--exploration-noise", "-0.1"], "--exploration-noise must be 0 or more"),
    (["--ou-theta", "0"], "--ou-theta must be in (0, 1]"),
    (["--learning-starts", "5000", "--buffer-size", "1000"], "the buffer could never hold enough"),
    (["--total-timesteps", "500", "--learning-starts", "1000"], "training would never start"),
    (["--tau", "1.5"], "--tau must be in (0, 1]"),
    (["--hidden-sizes", "64", "0"], "--hidden-sizes needs one or more positive"),
    (["--evaluate", "no/such/model.pt"], "no file at no/such/model.pt"),
    (["--env-id", "CartPole-v1"],
     ("CartPole-v1 has a Discrete action space; ddpg.py needs a flat Box one (continuous actions); for "
     "discrete actions use dqn.py")),
    # The tiny budget beside the flags below: code that lets them through trains for a second, not minutes.
    ([*TINY_DDPG, "--learning-rate", "nan"], "--learning-rate must be a finite number, got nan"),
    ([*TINY_DDPG, "--gamma", "inf"], "--gamma must be a finite number, got inf"),
    ([*TINY_DDPG, "--exploration-noise", "nan"], "--exploration-noise must be a finite number, got nan"),
    ([*TINY_DDPG, "--env-id", "nosuchmod:Foo-v0"],
     "cannot make nosuchmod:Foo-v0: No module named 'nosuchmod'"),
    ([*TINY_DDPG, "--env-id", "GlassboxImage-v0"],
     ("GlassboxImage-v0 has Box(0, 255, (8, 8, 3), uint8) observations; ddpg.py's networks take a flat vector (a "
      "1-D Box, or a Discrete, MultiDiscrete, Tuple or Dict space, which it flattens); image observations need a "
      "convolutional network, which it does not have")),
    ([*TINY_DDPG, "--evaluate", __file__],
     f"cannot read {__file__}: not a model.pt or checkpoint.pt saved by these scripts"),
])
def test_bad_input_is_one_line_and_exit_code_2(in_tmp, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        ddpg.main(flags)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


def test_help_lists_the_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        ddpg.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--env-id", "--total-timesteps", "--buffer-size", "--learning-starts", "--batch-size",
                 "--learning-rate", "--gamma", "--tau", "--updates-per-step", "--policy-frequency",
                 "--exploration-noise", "--ou-noise", "--ou-theta", "--hidden-sizes", "--save-buffer",
                 "--checkpoint-every", "--resume", "--evaluate", "--capture-video", "--track"):
        assert flag in out, flag


# --- The script as a subprocess ---


def test_save_evaluate_later_with_video_then_resume(tmp_path):
    train = run_script("ddpg.py", *TINY_DDPG, "--eval-episodes", "1", "--run-name", "cli", "--checkpoint-every", "400",
                       cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    assert "step" in train.stdout and "SPS" in train.stdout and "Gaussian noise 0.1" in train.stdout
    summary = json.loads((tmp_path / "runs/cli/summary.json").read_text())

    later = run_script("ddpg.py", "--evaluate", "runs/cli/model.pt", "--capture-video", cwd=tmp_path)
    assert later.returncode == 0, later.stderr
    # The same episode and the same greedy action: the same result as at the end of training.
    assert f"eval: {summary['eval_mean']:.1f} ± {summary['eval_std']:.1f} over 1 episodes" in later.stdout
    assert f"Q(first state) predicted {np.mean(summary['eval_start_q']):.2f}" in later.stdout
    assert len(list((tmp_path / "runs/cli/videos").glob("*.mp4"))) == 1

    resumed = run_script("ddpg.py", "--resume", "runs/cli/checkpoint.pt", "--total-timesteps", "500",
                         "--eval-episodes", "0", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from runs/cli/checkpoint.pt at step 400 with 400 transitions in the buffer" in resumed.stdout
    assert json.loads((tmp_path / "runs/cli/summary.json").read_text())["global_step"] == 500


def test_track_without_network_falls_back_to_offline(tmp_path):
    result = run_script("ddpg.py", *TINY_DDPG, "--run-name", "tr", "--track", "--eval-episodes", "0",
                        cwd=tmp_path, timeout=180)
    assert result.returncode == 0, result.stderr
    assert "wandb: no network, logging offline" in result.stdout
    assert list((tmp_path / "runs/tr/wandb").glob("offline-run-*"))


# --- Failures that must lose nothing and hide nothing ---


def test_atomic_save_on_a_full_disk_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    ddpg.atomic_save({"step": 1}, path)
    before = path.read_bytes()

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(ddpg.os, "fsync", full_disk)
    with pytest.raises(ddpg.UsageError) as error:
        ddpg.atomic_save({"step": 2}, path)
    assert str(error.value) == (f"cannot write {path}: No space left on device; the previous checkpoint.pt is kept; "
                                "free space and --resume from it")
    assert path.read_bytes() == before and list(tmp_path.iterdir()) == [path]
    with pytest.raises(ddpg.UsageError, match="the previous summary.json is kept; free space and run again"):
        ddpg.atomic_save("{}", tmp_path / "summary.json")


def test_run_directory_that_cannot_be_made_is_one_line(in_tmp, capsys):
    (in_tmp / "runs").write_text("a regular file where the directory of runs should be")
    with pytest.raises(SystemExit) as exit_info:
        ddpg.main([*TINY_DDPG, "--run-name", "x"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "error: cannot write the run directory runs/x: Not a directory; choose another --run-name or a writable "
        "working directory")


def test_divergence_stops_the_run_with_exit_code_3_and_keeps_the_last_finite_checkpoint(in_tmp, capsys):
    # One Adam step moves every weight by about the learning rate: 1e30 sends the next losses to inf.
    with pytest.raises(SystemExit) as exit_info:
        ddpg.main([*TINY_DDPG, "--learning-rate", "1e30", "--run-name", "div", "--checkpoint-every", "100"])
    assert exit_info.value.code == 3
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: training diverged at step 200: critic_loss is "), lines
    assert lines[0].endswith("; runs/div/checkpoint.pt (step 100) holds the last finite weights; try a lower "
                             "--learning-rate or check --exploration-noise")
    run_dir = in_tmp / "runs/div"
    assert not (run_dir / "model.pt").exists() and not (run_dir / "summary.json").exists()
    rows = read_metrics(run_dir)  # the row that diverged is written: it is the diagnosis
    assert int(rows[-1]["global_step"]) == 200 and not np.isfinite(float(rows[-1]["critic_loss"]))
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert ckpt["global_step"] == 100 and all(torch.isfinite(t).all() for t in ckpt["critic"].values())


def test_discrete_observations_one_hot_and_video_skipped_without_frames(in_tmp, capsys):
    # Discrete(5) observations train one-hot; the env cannot render, so --capture-video says so and
    # the run still ends with its model and summary.
    summary = ddpg.train(tiny_args("--env-id", "toy_envs:ToyWalkDiscrete-v0", "--run-name", "walk", "--capture-video",
                                   "--total-timesteps", "200"))
    assert ("video skipped: toy_envs:ToyWalkDiscrete-v0 cannot render frames here (it has no rgb_array render "
            "mode); evaluating without video") in capsys.readouterr().out
    run_dir = in_tmp / "runs/walk"
    assert (run_dir / "model.pt").exists() and (run_dir / "summary.json").exists()
    assert not (run_dir / "videos").exists()
    actor, critic, state = ddpg.load_model(str(run_dir / "model.pt"), torch.device("cpu"))
    assert state["obs_dim"] == 5
    returns = ddpg.evaluate(actor, critic, "toy_envs:ToyWalkDiscrete-v0", {}, 2, ddpg.eval_seed(1), 0.98,
                            torch.device("cpu"))[0]
    assert returns == summary["eval_returns"]


def test_dict_observations_are_flattened_by_make_env():
    env = ddpg.make_env("toy_envs:ToyWalkDict-v0")
    assert env.observation_space.shape == (6,)
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs, [0, 0, 1, 0, 0, 0])  # position 2 one-hot, then the last action, 0


def test_resume_refuses_a_finished_run_and_other_networks_leaving_its_files_alone(in_tmp, capsys):
    ddpg.train(tiny_args("--run-name", "fin", "--checkpoint-every", "150", "--eval-episodes", "0",
                         "--total-timesteps", "200"))
    run_dir = in_tmp / "runs/fin"
    ckpt_path = run_dir / "checkpoint.pt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    assert ckpt["global_step"] == 200  # the final state, written at the end of training

    def refused(*flags):
        files = {f: (run_dir / f).read_bytes() for f in ("model.pt", "summary.json", "metrics.csv", "args.json",
                                                         "checkpoint.pt")}
        with pytest.raises(SystemExit) as exit_info:
            ddpg.main(["--resume", str(ckpt_path), *flags])
        assert exit_info.value.code == 2
        assert {f: (run_dir / f).read_bytes() for f in files} == files
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1, lines
        return lines[0]

    assert refused("--total-timesteps", "600", "--hidden-sizes", "8") == (
        f"error: {ckpt_path} does not fit these networks: size mismatch for out.weight: copying a param with shape "
        "torch.Size([1, 16]) from checkpoint, the shape in current model is torch.Size([1, 8]).; resume with the "
        "flags it was trained with (drop --hidden-sizes)")
    assert refused("--total-timesteps", "600", "--env-id", "GlassboxCountingBox-v0") == (
        f"error: {ckpt_path} does not fit these networks: obs_dim is 3 there, 1 here; resume with the flags it was "
        "trained with (drop --env-id)")
    # A checkpoint from before the end of a finished run: resuming would redo its last steps.
    torch.save(ckpt | {"global_step": 150}, ckpt_path)
    assert refused() == (
        f"error: {run_dir} finished at step 200 (summary.json); its checkpoint.pt is from step 150, so resuming "
        "would redo steps past it and overwrite the finished run's files; resume into a new run with --run-name NAME "
        "instead")


def test_a_cpu_run_on_a_cuda_machine_never_touches_cuda_and_a_resumed_run_reads_as_one_run(in_tmp, monkeypatch):
    # A machine with a GPU, where torch.cuda's state functions fail: a --no-cuda run must not call them, neither
    # to save CUDA's random state nor to restore one that a checkpoint from a GPU run holds.
    def touched(*args, **kwargs):
        raise AssertionError("a --no-cuda run touched CUDA")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for name in ("get_rng_state_all", "set_rng_state_all", "device_count", "_lazy_init"):
        monkeypatch.setattr(torch.cuda, name, touched)
    ddpg.train(tiny_args("--run-name", "one", "--checkpoint-every", "200", "--eval-episodes", "0",
                         "--total-timesteps", "200"))
    ckpt_path = in_tmp / "runs/one/checkpoint.pt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    assert ckpt["elapsed"] > 0 and ckpt["cuda_rng"] is None

    def tensors(x):
        if isinstance(x, dict):
            return [t for v in x.values() for t in tensors(v)]
        return [t for v in x for t in tensors(v)] if isinstance(x, list | tuple) else [x] * isinstance(x, torch.Tensor)
    assert {t.device.type for t in tensors(ckpt)} == {"cpu"}
    # As if the first 200 steps had taken 10,000 s (on a GPU, which left its random state): the resumed part's
    # time and speed continue from them.
    torch.save(ckpt | {"elapsed": 10_000.0, "cuda_rng": [torch.tensor([7, 8], dtype=torch.uint8)]}, ckpt_path)
    summary = ddpg.train(ddpg.parse_args(["--resume", str(ckpt_path), "--total-timesteps", "300"]))
    rows = read_metrics(in_tmp / "runs/one")
    assert float(rows[1]["time"]) < 10_000 <= float(rows[2]["time"]) and rows[2]["sps"] == "0"
    assert summary["wall_time"] >= 10_000 and summary["sps"] == 0  # 300 steps over the whole run's time


def test_sps_after_resuming_a_checkpoint_without_a_clock_counts_only_the_steps_since(in_tmp):
    ddpg.train(tiny_args("--run-name", "old", "--checkpoint-every", "200", "--eval-episodes", "0",
                         "--total-timesteps", "200"))
    ckpt_path = in_tmp / "runs/old/checkpoint.pt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    torch.save({k: v for k, v in ckpt.items() if k not in ("elapsed", "eval_time")}, ckpt_path)  # an older file
    summary = ddpg.train(ddpg.parse_args(["--resume", str(ckpt_path), "--total-timesteps", "400"]))
    # The 200 steps before the resume have no time to go with: the speed is this process's 200 steps over its
    # time, where counting all 400 would double it. The last row's time (to 0.01 s) rather than the summary's
    # wall_time (to 0.1 s), which on a run this short is off by more than the tolerance.
    last = read_metrics(in_tmp / "runs/old")[-1]
    assert int(last["global_step"]) == summary["global_step"] == 400
    assert float(last["sps"]) * float(last["time"]) == pytest.approx(200, rel=0.15)


def test_wandb_probes_the_named_port_and_goes_offline_without_an_api_key(tmp_path, monkeypatch, capsys):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    assert ddpg.wandb_reachable(timeout=2.0)
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=lambda **kw: kw))
    assert ddpg.init_wandb(ddpg.Args(), "r", tmp_path)["mode"] == "offline"
    assert capsys.readouterr().out.strip() == (
        f"wandb: no API key (run `wandb login` or set WANDB_API_KEY), logging offline to {tmp_path}/wandb; upload "
        "later with `wandb sync`")
    (tmp_path / "netrc").write_text(f"machine 127.0.0.1:{port} login user password key\n")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert ddpg.init_wandb(ddpg.Args(), "r", tmp_path)["mode"] == "online"
    server.close()
    assert not ddpg.wandb_reachable(timeout=2.0)


# --- Devices: files that load anywhere, acting on the host, the buffer on the device ---


def test_load_model_loads_onto_the_cpu_then_moves_the_networks(tmp_path):
    # "meta" tensors cannot become numpy or be read: a device unlike the CPU, available everywhere.
    actor, critic = ddpg.Actor(3, 2, [4], LOW, HIGH), ddpg.Critic(3, 2, [4])
    torch.save({"algorithm": "ddpg", "args": {"hidden_sizes": [4]}, "obs_dim": 3, "act_dim": 2,
                "action_low": LOW.tolist(), "action_high": HIGH.tolist(), "actor": actor.state_dict(),
                "critic": critic.state_dict(), "global_step": 1}, tmp_path / "model.pt")
    on_meta, critic_on_meta, state = ddpg.load_model(str(tmp_path / "model.pt"), torch.device("meta"))
    assert {p.device.type for p in [*on_meta.parameters(), *critic_on_meta.parameters()]} == {"meta"}
    assert {t.device.type for t in [*state["actor"].values(), *state["critic"].values()]} == {"cpu"}


def test_the_host_copy_acts_with_the_weights_of_its_last_refresh():
    torch.manual_seed(0)
    actor = ddpg.Actor(4, 2, [16], LOW, HIGH)
    assert ddpg.host_copy(actor, torch.device("cpu")) is actor  # on the CPU the actor acts itself
    host = copy.deepcopy(actor)  # what host_copy makes on a GPU
    act = ddpg.acting_actions(host)
    obs = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    before = act(obs)
    optimizer = torch.optim.Adam(actor.parameters(), lr=0.1)
    actor(torch.from_numpy(obs)).sum().backward()
    optimizer.step()
    np.testing.assert_array_equal(act(obs), before)  # not refreshed: the old weights still act
    ddpg.refresh_host_copy(host, actor)
    with torch.no_grad():
        np.testing.assert_allclose(act(obs), actor(torch.from_numpy(obs)).numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(act(obs), before)


def test_replay_buffer_stores_and_samples_on_its_device():
    rb = ddpg.ReplayBuffer(4, obs_dim=5, act_dim=1, device=torch.device("meta"))
    one_hot = np.eye(5, dtype=np.int64)[[1, 3]]  # one-hot observations arrive as int64
    rb.add(one_hot, np.zeros((2, 1), np.float32), one_hot, np.ones(2), np.zeros(2, bool), np.zeros(2, bool), {})
    batch = next(rb.sample(3, 1, np.random.default_rng(0)))
    assert [(t.device.type, t.dtype, tuple(t.shape)) for t in batch] == [
        ("meta", torch.float32, (3, 5)), ("meta", torch.float32, (3, 1)), ("meta", torch.float32, (3,)),
        ("meta", torch.float32, (3, 5)), ("meta", torch.float32, (3,))]
    on_cpu = ddpg.ReplayBuffer(4, obs_dim=5, act_dim=1, device=torch.device("cpu"))
    on_cpu.add(one_hot, np.zeros((2, 1), np.float32), one_hot, np.ones(2), np.zeros(2, bool), np.zeros(2, bool), {})
    assert on_cpu.obs[:2].tolist() == one_hot.tolist() and on_cpu.obs.dtype == torch.float32


def test_acting_through_a_refreshed_host_copy_gives_the_same_run(in_tmp, monkeypatch):
    # What a GPU does (a copy of the actor in host memory acts), forced on the CPU: refreshed after
    # every actor step, the copy must choose the actions the actor itself would, so the run is the same.
    flags = ("--total-timesteps", "150", "--metrics-every", "50", "--eval-episodes", "0")
    ddpg.train(tiny_args("--run-name", "itself", *flags))
    monkeypatch.setattr(ddpg, "host_copy", lambda module, device: copy.deepcopy(module))
    ddpg.train(tiny_args("--run-name", "copy", *flags))
    drop_timing = lambda rows: [{k: v for k, v in r.items() if k not in ("time", "sps")} for r in rows]
    assert drop_timing(read_metrics(in_tmp / "runs/itself")) == drop_timing(read_metrics(in_tmp / "runs/copy"))


def test_the_numpy_path_on_the_cpu_and_the_torch_path_of_a_gpu_store_and_gather_the_same_rows():
    # On the CPU the buffer writes and gathers through a numpy view of its rows; on a GPU through torch. Forced
    # onto the CPU (no numpy view), the torch path must hold the same rows, wrap-around included, and give the
    # same minibatches.
    numpy_path, torch_path = (ddpg.ReplayBuffer(7, obs_dim=3, act_dim=2, device=torch.device("cpu")) for _ in "ab")
    torch_path.host = None
    rng = np.random.default_rng(5)
    for _ in range(6):  # 3 envs x 6 steps = 18 transitions into 7 rows: some steps wrap around the end
        final_obs = np.empty(3, object)  # where an episode ends, s' is the vector env's info["final_obs"]
        final_obs[:] = list(rng.standard_normal((3, 3)))
        step = (rng.standard_normal((3, 3)), rng.uniform(-1, 1, (3, 2)).astype(np.float32), rng.standard_normal((3, 3)),
                rng.standard_normal(3), rng.random(3) < 0.3, np.zeros(3, bool), {"final_obs": final_obs})
        numpy_path.add(*step)
        torch_path.add(*step)
        filled = numpy_path.size  # rows past it are unwritten (the buffer is made with torch.empty)
        assert torch.equal(numpy_path.rows[:filled], torch_path.rows[:filled]) and numpy_path.pos == torch_path.pos
    assert numpy_path.size == 7 and numpy_path.rows.abs().sum() > 0
    batches = zip(numpy_path.sample(4, 3, np.random.default_rng(1)), torch_path.sample(4, 3, np.random.default_rng(1)))
    for a, b in batches:
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_flush_denormal_is_off_unless_its_flag_asks_for_it(in_tmp):
    subnormal = lambda: (torch.tensor([2e-38]) / 4).item()  # 5e-39: below float32's smallest normal number
    flags = ("--total-timesteps", "150", "--eval-episodes", "0")
    try:
        ddpg.train(tiny_args("--run-name", "flush", *flags, "--flush-denormal"))
        assert subnormal() == 0.0
        ddpg.train(tiny_args("--run-name", "default", *flags))
        assert 0 < subnormal() < 1.2e-38
    finally:
        torch.set_flush_denormal(False)
