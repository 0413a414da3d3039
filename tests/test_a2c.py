"""a2c.py's own math: the n-step return and the policy-gradient and value losses."""

import numpy as np
import pytest
import torch

import a2c


def reference_n_step_returns(rewards, bootstrap, terminated, ended, gamma):
    """R_t = r_t + gamma r_{t+1} + ... + gamma^{k-1} r_{t+k-1} + gamma^k V, where t+k-1 is the last
    step of t's episode inside the rollout and V the value after it (zero after a termination).
    One env, plain floats, written as the forward sum the definition states."""
    T = len(rewards)
    returns = []
    for t in range(T):
        total, discount, u = 0.0, 1.0, t
        while True:
            total += discount * rewards[u]
            discount *= gamma
            if ended[u] or u == T - 1:
                break
            u += 1
        if not terminated[u]:
            total += discount * bootstrap[u]
        returns.append(total)
    return returns


def test_n_step_returns_match_reference_with_termination_truncation_and_autoreset():
    # 5 steps of one env: truncated at t=1 (final obs valued 4.0), autoreset, terminated at t=3,
    # autoreset, and one step that runs into the end of the rollout (bootstrap from V = 0.5).
    rewards = np.array([[1.0], [2.0], [3.0], [4.0], [5.0]], np.float32)
    values = np.array([[0.1], [0.2], [0.3], [0.4], [0.6]], np.float32)
    terminated = np.array([[0], [0], [0], [1], [0]], np.float32)
    ended = np.array([[0], [1], [0], [1], [0]], np.float32)
    final_values = np.array([[0], [4.0], [0], [0], [0]], np.float32)
    last = np.array([0.5], np.float32)
    next_values = a2c.successor_values(values, last, final_values, ended)
    advantages, returns = a2c.compute_gae(rewards, values, next_values, terminated, ended, 0.9, 1.0)

    bootstrap = [0.2, 4.0, 0.4, 0.0, 0.5]
    expected = reference_n_step_returns(rewards[:, 0].tolist(), bootstrap, terminated[:, 0], ended[:, 0], 0.9)
    np.testing.assert_allclose(returns[:, 0], expected, rtol=1e-6)
    # By hand: R_0 = 1 + 0.9 * 2 + 0.81 * 4 (truncated: bootstrap from the final observation)
    #          R_2 = 3 + 0.9 * 4 (terminated: nothing after)      R_4 = 5 + 0.9 * 0.5
    assert returns[0, 0] == pytest.approx(1 + 0.9 * 2 + 0.81 * 4.0)
    assert returns[2, 0] == pytest.approx(3 + 0.9 * 4)
    assert returns[4, 0] == pytest.approx(5 + 0.9 * 0.5)
    np.testing.assert_allclose(advantages, returns - values, rtol=1e-6)


def test_policy_gradient_and_value_losses_hand_computed():
    logprob = torch.log(torch.tensor([0.5, 0.25])).requires_grad_()
    advantages = torch.tensor([2.0, -1.0])
    loss = a2c.policy_gradient_loss(logprob, advantages)
    assert loss.item() == pytest.approx(-(2.0 * np.log(0.5) + -1.0 * np.log(0.25)) / 2)
    loss.backward()
    np.testing.assert_allclose(logprob.grad.numpy(), [-1.0, 0.5])  # -A / batch size
    assert a2c.value_loss(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 1.0])).item() == pytest.approx(0.5 * (1 + 4) / 2)


def test_one_file_picks_the_head_from_the_action_space():
    import gymnasium as gym

    box = a2c.Agent(obs_dim=3, dims=[2], continuous=True)
    cat = a2c.Agent(obs_dim=3, dims=a2c.action_dims(gym.spaces.Discrete(4)), continuous=False)
    obs = torch.zeros(5, 3)
    with torch.no_grad():
        assert box.act(obs).dtype == torch.float32 and box.act(obs).shape == (5, 2)
        assert cat.act(obs).dtype == torch.int64 and cat.act(obs).shape == (5, 1)
        assert cat.greedy(obs).shape == (5, 1)
