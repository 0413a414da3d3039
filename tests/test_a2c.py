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


@pytest.mark.parametrize("norm_adv", [False, True])
def test_update_is_one_step_on_the_policy_gradient_value_and_entropy_loss(norm_adv):
    """a2c.update against the same step written from torch.distributions: one RMSprop step on
    L = -E[log pi(a|s) A] + vf_coef * 0.5 E[(V(s) - R)^2] - ent_coef * E[H], gradients clipped."""
    import copy

    torch.manual_seed(0)
    agent = a2c.Agent(obs_dim=3, dims=[4], continuous=False)
    reference = copy.deepcopy(agent)
    obs = torch.randn(40, 3)
    batch = {"obs": obs, "actions": torch.randint(0, 4, (40, 1)), "values": torch.zeros(40),
             "advantages": torch.randn(40) * 3 + 1, "returns": torch.randn(40) * 2}
    args = a2c.Args(ent_coef=0.05, vf_coef=0.7, max_grad_norm=0.5, norm_adv=norm_adv)
    optimizer = torch.optim.RMSprop(agent.parameters(), lr=1e-2, alpha=0.99, eps=1e-5)
    stats = a2c.update(agent, optimizer, batch, args)

    dist = torch.distributions.Categorical(logits=reference.actor(obs))
    advantages = batch["advantages"]
    if norm_adv:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    pg = -(advantages * dist.log_prob(batch["actions"][:, 0])).mean()
    v = 0.5 * ((reference.critic(obs)[:, 0] - batch["returns"]) ** 2).mean()
    entropy = dist.entropy().mean()
    ref_optimizer = torch.optim.RMSprop(reference.parameters(), lr=1e-2, alpha=0.99, eps=1e-5)
    (pg + 0.7 * v - 0.05 * entropy).backward()
    torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.5)
    ref_optimizer.step()

    expected = {"policy_loss": pg.item(), "value_loss": v.item(), "entropy": entropy.item()}
    assert stats == pytest.approx(expected, rel=1e-5, abs=1e-6)
    for p, q in zip(agent.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q)
    assert {int(s["step"]) for s in optimizer.state.values()} == {1}
