"""The policy heads: diagonal Gaussian (Box actions) and independent categoricals (Discrete and
MultiDiscrete), checked against torch.distributions and per-dimension sums."""

import importlib
import math

import gymnasium as gym
import pytest
import torch

GAUSSIAN = ["ppo_continuous", "a2c"]
CATEGORICAL = ["ppo_discrete", "a2c"]


@pytest.fixture(params=GAUSSIAN)
def gaussian(request):
    return importlib.import_module(request.param)


@pytest.fixture(params=CATEGORICAL)
def categorical(request):
    return importlib.import_module(request.param)


def make_agent(module, obs_dim: int, dims: list[int], continuous: bool):
    """The one-head scripts build Agent(obs_dim, act_dim or dims); a2c.py also takes the kind."""
    if module.__name__ == "a2c":
        return module.Agent(obs_dim, dims, continuous)
    return module.Agent(obs_dim, dims[0] if continuous else dims)


def test_gaussian_log_prob_and_entropy_match_torch_distributions(gaussian):
    torch.manual_seed(0)
    mean, log_std = torch.randn(5, 3), torch.randn(3) * 0.5
    action = torch.randn(5, 3) * 2
    reference = torch.distributions.Normal(mean, log_std.exp())
    torch.testing.assert_close(gaussian.gaussian_log_prob(action, mean, log_std), reference.log_prob(action).sum(-1))
    torch.testing.assert_close(gaussian.gaussian_entropy(log_std), reference.entropy()[0].sum())


def test_gaussian_agent_samples_from_its_policy_and_scores_it(gaussian):
    torch.manual_seed(0)
    agent = make_agent(gaussian, obs_dim=2, dims=[2], continuous=True)
    with torch.no_grad():
        agent.actor_logstd.fill_(math.log(0.5))
        obs = torch.zeros(20000, 2)
        actions = agent.act(obs)
        mean = agent.greedy(obs[:1])
        log_prob, entropy = agent.log_prob_entropy(obs[:3], actions[:3])
    torch.testing.assert_close(actions.mean(0), mean[0], atol=0.02, rtol=0)
    torch.testing.assert_close(actions.std(0), torch.full((2,), 0.5), atol=0.02, rtol=0)
    reference = torch.distributions.Normal(mean, 0.5)
    torch.testing.assert_close(log_prob, reference.log_prob(actions[:3]).sum(-1))
    torch.testing.assert_close(entropy.mean(), reference.entropy().sum())


def test_multidiscrete_log_prob_and_entropy_are_per_dimension_sums(categorical):
    torch.manual_seed(0)
    logits = (torch.randn(6, 3), torch.randn(6, 4), torch.randn(6, 2))
    action = torch.stack([torch.randint(0, n, (6,)) for n in (3, 4, 2)], dim=-1)
    log_prob, entropy = categorical.categorical_log_prob_entropy(logits, action)
    dists = [torch.distributions.Categorical(logits=block) for block in logits]
    torch.testing.assert_close(log_prob, sum(d.log_prob(action[:, i]) for i, d in enumerate(dists)))
    torch.testing.assert_close(entropy, sum(d.entropy() for d in dists))


def test_discrete_is_the_one_dimension_case(categorical):
    logits = torch.tensor([[0.0, math.log(3.0)]])  # probabilities 1/4, 3/4
    log_prob, entropy = categorical.categorical_log_prob_entropy((logits,), torch.tensor([[1]]))
    assert log_prob.item() == pytest.approx(math.log(0.75))
    assert entropy.item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))


def test_action_dims(categorical):
    assert categorical.action_dims(gym.spaces.Discrete(5)) == [5]
    assert categorical.action_dims(gym.spaces.MultiDiscrete([3, 4])) == [3, 4]


def test_categorical_agent_samples_with_softmax_frequencies_and_greedy_is_argmax(categorical):
    torch.manual_seed(0)
    agent = make_agent(categorical, obs_dim=2, dims=[3, 2], continuous=False)
    obs = torch.randn(1, 2).expand(30000, 2)
    with torch.no_grad():
        logits = agent.actor(obs[:1]).split([3, 2], dim=-1)
        actions = agent.act(obs)
        greedy = agent.greedy(obs[:1])
    assert actions.shape == (30000, 2)
    for i, block in enumerate(logits):
        frequencies = torch.bincount(actions[:, i], minlength=block.shape[-1]).float() / len(actions)
        torch.testing.assert_close(frequencies, block.softmax(-1)[0], atol=0.015, rtol=0)
        assert greedy[0, i] == block.argmax()
