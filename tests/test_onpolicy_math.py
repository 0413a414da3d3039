"""The on-policy scripts' shared pure functions against plain, independently written references.

Every script is self-contained, so each keeps its own copy of these functions: each copy is tested.
"""

import importlib
import math

import gymnasium as gym
import numpy as np
import pytest
import torch

import toy_envs  # noqa: F401  (registers the test environments)

ONPOLICY = {"ppo_continuous": "Pendulum-v1", "ppo_discrete": "CartPole-v1", "a2c": "CartPole-v1"}
PPO = ["ppo_continuous", "ppo_discrete"]


@pytest.fixture(params=list(ONPOLICY))
def algo(request):
    return importlib.import_module(request.param)


@pytest.fixture(params=PPO)
def ppo(request):
    return importlib.import_module(request.param)


def reference_advantages(rewards, values, bootstrap, terminated, ended, gamma, lam):
    """GAE by its definition: A_t = sum_k (gamma*lambda)^k delta_{t+k}, the sum running to the end
    of t's episode within the rollout. One env, plain Python floats, no recursion.

    bootstrap[t] is the value of the state after step t: the true final observation's value where
    the episode ended, else the next row's value (or the value after the rollout on the last row).
    """
    T = len(rewards)
    deltas = []
    for t in range(T):
        future = 0.0 if terminated[t] else gamma * bootstrap[t]
        deltas.append(rewards[t] + future - values[t])
    advantages = []
    for t in range(T):
        total, k = 0.0, 0
        while True:
            total += (gamma * lam) ** k * deltas[t + k]
            if ended[t + k] or t + k == T - 1:
                break
            k += 1
        advantages.append(total)
    return advantages


# One env's rollout of 7 steps: an episode truncated by a time limit at t=2 (the env autoresets,
# so row 3 starts a new episode), a termination at t=4 (autoreset again), and an unfinished
# episode at the end of the rollout that bootstraps from the value of where it stopped.
REWARDS = [1.0, 0.5, -1.0, 2.0, 0.25, 1.5, -0.5]
VALUES = [0.3, -0.2, 0.8, 1.1, -0.7, 0.4, 0.9]
TERMINATED = [0, 0, 0, 0, 1, 0, 0]
TRUNCATED = [0, 0, 1, 0, 0, 0, 0]
FINAL_VALUE_AT_TRUNCATION = 5.0  # V(true final observation) of the truncated episode
LAST_VALUE = -0.6  # V(state the rollout stopped in)


def rollout_arrays():
    ended = [a or b for a, b in zip(TERMINATED, TRUNCATED)]
    final_values = [FINAL_VALUE_AT_TRUNCATION if TRUNCATED[t] else 0.0 for t in range(7)]
    as_col = lambda xs: np.array(xs, np.float32)[:, None]  # noqa: E731  [T, num_envs=1]
    return as_col(REWARDS), as_col(VALUES), as_col(TERMINATED), as_col(ended), as_col(final_values)


def test_successor_values_use_final_observation_and_never_the_next_episode(algo):
    _, values, _, ended, final_values = rollout_arrays()
    next_values = algo.successor_values(values, np.array([LAST_VALUE], np.float32), final_values, ended)[:, 0]
    assert next_values[0] == VALUES[1] and next_values[1] == VALUES[2]
    assert next_values[2] == FINAL_VALUE_AT_TRUNCATION  # not VALUES[3], the reset state
    assert next_values[5] == VALUES[6]
    assert next_values[6] == pytest.approx(LAST_VALUE)


@pytest.mark.parametrize("gamma, lam", [(0.99, 0.95), (0.9, 1.0), (0.5, 0.0)])
def test_gae_matches_reference_with_termination_truncation_and_autoreset(algo, gamma, lam):
    rewards, values, terminated, ended, final_values = rollout_arrays()
    next_values = algo.successor_values(values, np.array([LAST_VALUE], np.float32), final_values, ended)
    adv, returns = algo.compute_gae(rewards, values, next_values, terminated, ended, gamma, lam)

    bootstrap = [VALUES[t + 1] if t < 6 else LAST_VALUE for t in range(7)]
    bootstrap[2] = FINAL_VALUE_AT_TRUNCATION
    expected = reference_advantages(REWARDS, VALUES, bootstrap, TERMINATED, [e[0] for e in ended], gamma, lam)
    np.testing.assert_allclose(adv[:, 0], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(returns[:, 0], np.array(expected) + np.array(VALUES), rtol=1e-5, atol=1e-6)


def test_gae_hand_computed_truncation_and_termination_steps(algo):
    rewards, values, terminated, ended, final_values = rollout_arrays()
    next_values = algo.successor_values(values, np.array([LAST_VALUE], np.float32), final_values, ended)
    adv, _ = algo.compute_gae(rewards, values, next_values, terminated, ended, 0.9, 0.8)
    # Truncated step: bootstraps from the final observation, and nothing from the next episode.
    assert adv[2, 0] == pytest.approx(-1.0 + 0.9 * 5.0 - 0.8)
    # Terminated step: no bootstrap at all.
    assert adv[4, 0] == pytest.approx(0.25 - (-0.7))


def test_gae_does_not_leak_across_an_autoreset(algo):
    rewards, values, terminated, ended, final_values = rollout_arrays()
    last = np.array([LAST_VALUE], np.float32)
    base, _ = algo.compute_gae(rewards, values, algo.successor_values(values, last, final_values, ended),
                              terminated, ended, 0.99, 0.95)
    # Change everything about the episode that starts after the truncation (rows 3 and 4).
    rewards2, values2 = rewards.copy(), values.copy()
    rewards2[3:5] += 100.0
    values2[3:5] -= 50.0
    changed, _ = algo.compute_gae(rewards2, values2, algo.successor_values(values2, last, final_values, ended),
                                 terminated, ended, 0.99, 0.95)
    np.testing.assert_array_equal(changed[:3], base[:3])


def test_gae_handles_several_envs_independently(algo):
    rng = np.random.default_rng(0)
    T, N = 9, 3
    rewards = rng.normal(size=(T, N)).astype(np.float32)
    values = rng.normal(size=(T, N)).astype(np.float32)
    terminated = (rng.random((T, N)) < 0.15).astype(np.float32)
    truncated = ((rng.random((T, N)) < 0.15) & (terminated == 0)).astype(np.float32)
    ended = np.maximum(terminated, truncated)
    final_values = np.where(truncated > 0, rng.normal(size=(T, N)), 0.0).astype(np.float32)
    last = rng.normal(size=N).astype(np.float32)
    next_values = algo.successor_values(values, last, final_values, ended)
    adv, _ = algo.compute_gae(rewards, values, next_values, terminated, ended, 0.97, 0.9)
    for n in range(N):
        bootstrap = [final_values[t, n] if ended[t, n] else (values[t + 1, n] if t < T - 1 else last[n])
                     for t in range(T)]
        expected = reference_advantages(rewards[:, n].tolist(), values[:, n].tolist(), bootstrap,
                                        terminated[:, n].tolist(), ended[:, n].tolist(), 0.97, 0.9)
        np.testing.assert_allclose(adv[:, n], expected, rtol=1e-4, atol=1e-5)


def test_clipped_policy_loss_hand_computed(ppo):
    # ratios 1.5, 0.5, 0.5, 1.5 with advantages +1, +1, -1, -1 and eps = 0.2:
    #   A>0, rho=1.5: min(1.5, 1.2) = 1.2      A>0, rho=0.5: min(0.5, 0.8) = 0.5
    #   A<0, rho=0.5: min(-0.5, -0.8) = -0.8   A<0, rho=1.5: min(-1.5, -1.2) = -1.5
    # loss = -mean(1.2, 0.5, -0.8, -1.5) = 0.15
    old = torch.zeros(4)
    new = torch.log(torch.tensor([1.5, 0.5, 0.5, 1.5])).requires_grad_()
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    loss = ppo.clipped_policy_loss(new, old, adv, 0.2)
    assert loss.item() == pytest.approx(0.15, abs=1e-6)
    loss.backward()
    # Clipped entries (first and third) give no gradient; the others give -A * rho / 4.
    np.testing.assert_allclose(new.grad.numpy(), [0.0, -0.5 / 4, 0.0, 1.5 / 4], atol=1e-6)


def test_kl_penalty_policy_loss_hand_computed(ppo):
    new, old = torch.log(torch.tensor([2.0, 0.5])), torch.zeros(2)
    adv = torch.tensor([1.0, -2.0])
    surrogate = (2.0 * 1.0 + 0.5 * -2.0) / 2
    kl = ((2.0 - 1.0 - math.log(2.0)) + (0.5 - 1.0 - math.log(0.5))) / 2
    loss = ppo.kl_penalty_policy_loss(new, old, adv, beta=3.0)
    assert loss.item() == pytest.approx(-surrogate + 3.0 * kl, rel=1e-6)


def test_value_loss_hand_computed(ppo):
    old = torch.tensor([1.0, 1.0])
    new = torch.tensor([1.5, 0.7])
    target = torch.tensor([2.0, 2.0])
    # Unclipped: 0.5 * mean(0.25, 1.69)
    assert ppo.value_loss(new, old, target, None).item() == pytest.approx(0.5 * (0.25 + 1.69) / 2)
    # Clipped at 0.2: V_clip = (1.2, 0.8) with errors (0.64, 1.44); max per entry: (0.64, 1.69).
    assert ppo.value_loss(new, old, target, 0.2).item() == pytest.approx(0.5 * (0.64 + 1.69) / 2)


def test_approx_kl_and_beta_adaptation(ppo):
    assert ppo.approx_kl(torch.zeros(3)).item() == 0.0
    assert ppo.approx_kl(torch.tensor([math.log(2.0)])).item() == pytest.approx(1.0 - math.log(2.0))
    assert ppo.approx_kl(torch.randn(100)).item() > 0
    assert ppo.adapt_kl_beta(1.0, kl=0.02, kl_target=0.01) == 2.0
    assert ppo.adapt_kl_beta(1.0, kl=0.005, kl_target=0.01) == 0.5
    assert ppo.adapt_kl_beta(1.0, kl=0.01, kl_target=0.01) == 1.0


def test_explained_variance(algo):
    target = np.array([1.0, 2.0, 3.0, 4.0])
    assert algo.explained_variance(target, target) == 1.0
    assert algo.explained_variance(np.full(4, 2.5), target) == pytest.approx(0.0)


def test_running_mean_std_matches_numpy_over_batches(algo):
    rng = np.random.default_rng(1)
    data = rng.normal(3.0, 2.0, size=(1000, 4))
    rms = algo.RunningMeanStd((4,))
    for chunk in np.array_split(data, 7):
        rms.update(chunk)
    np.testing.assert_allclose(rms.mean, data.mean(0), rtol=1e-5)
    np.testing.assert_allclose(rms.var, data.var(0), rtol=1e-4)
    restored = algo.RunningMeanStd((4,))
    restored.load_state_dict(rms.state_dict())  # what checkpoints save of it
    np.testing.assert_array_equal(restored.mean, rms.mean)
    np.testing.assert_array_equal(restored.var, rms.var)
    assert restored.count == rms.count


def test_reward_scaler_divides_by_std_of_discounted_return(algo):
    scaler = algo.RewardScaler(num_envs=1, num_steps=4, gamma=0.5)
    rewards = np.array([[2.0], [2.0], [2.0], [2.0]])
    for t in range(4):
        scaler.observe(t, rewards[t], np.array([t == 1]))  # the episode ends after step 1
    # Discounted returns: 2, 3 (episode ends, reset), 2, 3.
    np.testing.assert_allclose(scaler.history[:, 0], [2.0, 3.0, 2.0, 3.0])
    scaled = scaler.scale(rewards)
    np.testing.assert_allclose(scaled, rewards / np.sqrt(scaler.rms.var + 1e-8), rtol=1e-6)
    assert scaler.rms.var == pytest.approx(0.25, rel=1e-3)  # var of (2, 3, 2, 3)


@pytest.mark.parametrize("name, env_id", [
    ("ppo_continuous", "ToyCounterBox-v0"), ("ppo_discrete", "ToyCounterDiscrete-v0"),
    ("a2c", "ToyCounterBox-v0"), ("a2c", "ToyCounterDiscrete-v0"),
])
def test_vector_env_gives_true_final_observation_on_truncation(name, env_id):
    """The rollout relies on SAME_STEP autoreset: the step that truncates returns the next episode's
    first observation and puts the true last one in info["final_obs"]; no step crosses a reset."""
    algo = importlib.import_module(name)
    envs = algo.make_vector_env(algo.Args(env_id=env_id, num_envs=2))
    obs, _ = envs.reset(seed=0)
    seen = [obs[:, 0].tolist()]
    for _ in range(7):
        obs, rewards, terminated, truncated, infos = envs.step(envs.action_space.sample())
        seen.append(obs[:, 0].tolist())
        if truncated.any():
            assert not terminated.any()
            np.testing.assert_array_equal(np.stack(infos["final_obs"][truncated])[:, 0], 5.0)
    envs.close()
    # The time limit is 5 steps: counts 0..4, then the 5th step returns the reset observation 0
    # (the final observation 5 went to info), and the new episode counts on from there.
    assert [row[0] for row in seen] == [0, 1, 2, 3, 4, 0, 1, 2]
    assert envs.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP


# --- The algorithm's steps: collect_rollout, compute_advantages, update ---


def make_agent(module, obs_dim: int, continuous: bool):
    """A policy of the script's own kind: a 2-dimensional Gaussian, or one categorical of 4 choices."""
    dims = [2] if continuous else [4]
    if module.__name__ == "a2c":
        return module.Agent(obs_dim, dims, continuous)
    return module.Agent(obs_dim, dims[0] if continuous else dims)


def make_rollout(module, num_steps: int, num_envs: int, obs_dim: int, continuous: bool):
    act_dim = 2 if continuous else 1
    if module.__name__ == "a2c":
        return module.Rollout(num_steps, num_envs, obs_dim, act_dim, np.float32 if continuous else np.int64)
    return module.Rollout(num_steps, num_envs, obs_dim, act_dim)


KINDS = [("ppo_continuous", True), ("ppo_discrete", False), ("a2c", True), ("a2c", False)]


@pytest.mark.parametrize("name, continuous", KINDS)
def test_collect_rollout_keeps_the_final_observation_and_the_unclipped_action(name, continuous):
    algo = importlib.import_module(name)
    torch.manual_seed(0)
    env_id = "ToyCounterBox-v0" if continuous else "ToyCounterDiscrete-v0"
    envs = algo.make_vector_env(algo.Args(env_id=env_id, num_envs=2))
    sent = []  # what the envs were given, beside what the rollout keeps

    class Recording:
        def __getattr__(self, name):
            return getattr(envs, name)

        def step(self, action):
            sent.append(np.array(action))
            return envs.step(action)

    agent = make_agent(algo, 1, continuous)
    if continuous:
        with torch.no_grad():
            agent.actor_logstd.fill_(math.log(3.0))  # most samples fall outside the bounds [-1, 1]
    rollout = make_rollout(algo, 7, 2, 1, continuous)
    scaler = algo.RewardScaler(num_envs=2, num_steps=7, gamma=0.5)
    rms = algo.RunningMeanStd((1,))
    obs, _ = envs.reset(seed=0)
    obs, episodes = algo.collect_rollout(Recording(), agent, rollout, obs, rms, scaler)
    envs.close()

    # The time limit is 5 steps: the 5th step (row 4) truncates, returns the next episode's first
    # observation (0), and keeps the true last one (5) for the bootstrap.
    np.testing.assert_array_equal(rollout.obs[:, :, 0].T, [[0, 1, 2, 3, 4, 0, 1]] * 2)
    np.testing.assert_array_equal(obs[:, 0], [2, 2])
    np.testing.assert_array_equal(rollout.truncated, np.arange(7)[:, None].repeat(2, 1) == 4)
    np.testing.assert_array_equal(rollout.episode_ends, rollout.truncated.astype(np.float32))
    assert not rollout.terminations.any()
    np.testing.assert_array_equal(rollout.final_obs[4, :, 0], [5.0, 5.0])
    np.testing.assert_array_equal(rollout.rewards, np.ones((7, 2)))
    assert episodes == [(5.0, 5), (5.0, 5)]
    # The reward scaler saw every step (discounted return with gamma 0.5, reset after the truncation);
    # the observation statistics did not move during the rollout.
    np.testing.assert_allclose(scaler.history[:, 0], [1, 1.5, 1.75, 1.875, 1.9375, 1, 1.5])
    assert rms.count == pytest.approx(1e-4)
    if continuous:
        # The rollout keeps the unclipped sample (its log-prob is pi_old's); the env got it clipped.
        assert (np.abs(rollout.actions) > 1).any()
        np.testing.assert_array_equal(np.stack(sent), np.clip(rollout.actions, -1.0, 1.0))
    else:
        np.testing.assert_array_equal(np.stack(sent), rollout.actions[..., 0])


@pytest.mark.parametrize("name, continuous", KINDS)
@pytest.mark.parametrize("scale_rewards", [False, True])
def test_compute_advantages_matches_a_plain_reference(name, continuous, scale_rewards):
    algo = importlib.import_module(name)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    T, N, obs_dim = 6, 2, 3
    agent = make_agent(algo, obs_dim, continuous)
    rollout = make_rollout(algo, T, N, obs_dim, continuous)
    rollout.obs[:] = rng.normal(2.0, 3.0, size=(T, N, obs_dim))
    rollout.actions[:] = rng.normal(size=(T, N, 2)) if continuous else rng.integers(0, 4, size=(T, N, 1))
    rollout.rewards[:] = rng.normal(size=(T, N))
    terminated = np.zeros((T, N), bool)
    terminated[3, 0] = True
    truncated = np.zeros((T, N), bool)
    truncated[1, 0] = truncated[4, 1] = True
    ended = terminated | truncated
    rollout.terminations[:], rollout.episode_ends[:], rollout.truncated[:] = terminated, ended, truncated
    rollout.final_obs[truncated] = rng.normal(size=(2, obs_dim))
    next_obs = rng.normal(size=(N, obs_dim))
    rms = algo.RunningMeanStd((obs_dim,))
    rms.update(rng.normal(1.0, 2.0, size=(50, obs_dim)))
    mean, std = rms.mean.copy(), np.sqrt(rms.var + 1e-8)
    scaler = None
    if scale_rewards:
        scaler = algo.RewardScaler(N, T, 0.9)
        scaler.history[:] = rng.normal(size=(T, N)) * 4.0

    batch = algo.compute_advantages(agent, rollout, next_obs, rms, scaler, 0.9, 0.8, torch.device("cpu"))

    # The batch is normalised with the statistics from before this rollout; they move only after.
    normalise = lambda x: np.clip((x - mean) / std, -10, 10).astype(np.float32)  # noqa: E731
    np.testing.assert_allclose(batch["obs"].numpy(), normalise(rollout.obs.reshape(-1, obs_dim)), rtol=1e-6)
    assert rms.count == pytest.approx(50 + T * N, abs=1e-3)
    with torch.no_grad():
        value = lambda x: agent.value(torch.from_numpy(normalise(x))).numpy().astype(float)  # noqa: E731
        values = value(rollout.obs.reshape(-1, obs_dim)).reshape(T, N)
        last, final = value(next_obs), value(rollout.final_obs[truncated])
        if "logprobs" in batch:  # PPO: log pi_old(a|s) of the rollout's actions
            actions = torch.from_numpy(rollout.actions.reshape(T * N, -1))
            torch.testing.assert_close(batch["logprobs"], agent.log_prob_entropy(batch["obs"], actions)[0])
    final_at = dict(zip(map(tuple, np.argwhere(truncated)), final))
    rewards = rollout.rewards / (np.sqrt(scaler.rms.var + 1e-8) if scaler else 1.0)
    for n in range(N):
        bootstrap = [final_at.get((t, n), 0.0) if ended[t, n] else (values[t + 1, n] if t < T - 1 else last[n])
                     for t in range(T)]
        expected = reference_advantages(rewards[:, n].tolist(), values[:, n].tolist(), bootstrap,
                                        terminated[:, n].tolist(), ended[:, n].tolist(), 0.9, 0.8)
        np.testing.assert_allclose(batch["advantages"].numpy().reshape(T, N)[:, n], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(batch["values"].numpy(), values.reshape(-1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(batch["returns"].numpy(), (batch["advantages"] + batch["values"]).numpy(), rtol=1e-6)


def ppo_update_fixture(ppo, seed: int = 0, lr: float = 3e-3):
    """A fresh agent, optimizer and batch, the same for the same seed."""
    torch.manual_seed(seed)
    agent = make_agent(ppo, 3, ppo.__name__ == "ppo_continuous")
    obs = torch.randn(64, 3)
    with torch.no_grad():
        actions = agent.act(obs)
        logprobs, _ = agent.log_prob_entropy(obs, actions)
        values = agent.value(obs)
    batch = {"obs": obs, "actions": actions, "logprobs": logprobs, "values": values,
             "advantages": torch.randn(64), "returns": torch.randn(64)}
    optimizer = torch.optim.Adam(agent.parameters(), lr=lr, eps=1e-5)
    return agent, optimizer, batch


def adam_steps(optimizer) -> set[int]:
    return {int(state["step"]) for state in optimizer.state.values()}


def test_minibatch_shuffles_come_from_the_cpu_generator_whatever_the_device(ppo, monkeypatch):
    # A GPU run must shuffle as the CPU run with its seed does: the permutation is drawn by the CPU generator and
    # sent over. "meta" stands in for the GPU, whose own generator would be another stream.
    agent, optimizer, batch = ppo_update_fixture(ppo)
    real_randperm, drawn = torch.randperm, []

    class Drawn(Exception):
        pass

    def randperm(*args, **kwargs):
        drawn.append(real_randperm(*args, **kwargs).device.type)
        raise Drawn  # the update itself cannot run on meta tensors; the draw is what this test is about

    monkeypatch.setattr(torch, "randperm", randperm)
    with pytest.raises(Drawn):
        ppo.update(agent, optimizer, {key: value.to("meta") for key, value in batch.items()}, ppo.Args(), kl_beta=1.0)
    assert drawn == ["cpu"]


def test_ppo_update_runs_every_epoch_and_minibatch_without_a_target_kl(ppo):
    agent, optimizer, batch = ppo_update_fixture(ppo)
    stats = ppo.update(agent, optimizer, batch, ppo.Args(num_minibatches=4, update_epochs=3), kl_beta=1.0)
    assert stats["epochs"] == 3 and adam_steps(optimizer) == {12}
    assert stats["approx_kl"] > 0 and 0 <= stats["clip_frac"] <= 1


def test_ppo_update_first_kl_is_zero_it_is_taken_before_the_step(ppo):
    """Each minibatch's KL is measured before its own gradient step, so the very first is exactly 0."""
    agent, optimizer, batch = ppo_update_fixture(ppo)
    stats = ppo.update(agent, optimizer, batch, ppo.Args(num_minibatches=1, update_epochs=1), kl_beta=1.0)
    assert stats["approx_kl"] == 0.0 and stats["clip_frac"] == 0.0 and adam_steps(optimizer) == {1}


def test_ppo_target_kl_stops_after_the_epoch_whose_kl_exceeds_it(ppo, monkeypatch):
    calls = []  # (samples, KL) of each approx_kl call: one per epoch, then one over every epoch run
    approx_kl = ppo.approx_kl

    def recording(log_ratio):
        kl = approx_kl(log_ratio)
        calls.append((len(log_ratio), kl.item()))
        return kl

    monkeypatch.setattr(ppo, "approx_kl", recording)
    args = lambda target: ppo.Args(num_minibatches=4, update_epochs=5, target_kl=target)  # noqa: E731
    agent, optimizer, batch = ppo_update_fixture(ppo)
    torch.manual_seed(1)
    assert ppo.update(agent, optimizer, batch, args(math.inf), kl_beta=1.0)["epochs"] == 5
    assert [n for n, _ in calls] == [64] * 5 + [5 * 64]  # each epoch's KL covers its 4 minibatches
    kls = [kl for _, kl in calls[:5]]
    assert kls[0] < kls[1] < kls[2]  # the policy drifts further from pi_old epoch by epoch

    for target, epochs in [((kls[1] + kls[2]) / 2, 3), ((kls[0] + kls[1]) / 2, 2), (kls[0] / 2, 1)]:
        calls.clear()
        agent, optimizer, batch = ppo_update_fixture(ppo)
        torch.manual_seed(1)
        stats = ppo.update(agent, optimizer, batch, args(target), kl_beta=1.0)
        # The epoch that crossed the target still ran all its minibatches; no epoch after it ran.
        assert stats["epochs"] == epochs and adam_steps(optimizer) == {4 * epochs}
        assert [n for n, _ in calls] == [64] * epochs + [epochs * 64]
        assert [kl for _, kl in calls[:epochs]] == pytest.approx(kls[:epochs], rel=1e-6)
