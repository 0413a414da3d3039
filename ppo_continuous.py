"""PPO for continuous actions: one file, read top to bottom.

Proximal Policy Optimization (Schulman et al. 2017, https://arxiv.org/abs/1707.06347) with a
diagonal Gaussian policy, Generalized Advantage Estimation (Schulman et al. 2016,
https://arxiv.org/abs/1506.02438) and the implementation details that make it work.

`train()` reads as the loop: `collect_rollout` (num_steps steps of num_envs envs with pi_old),
`compute_advantages`, `update` (update_epochs passes of minibatches, keeping pi_new close to pi_old).

Key equations (t indexes time, s_t the state, a_t the action):

    TD residual       delta_t = r_t + gamma * (1 - terminated_t) * V(s_{t+1}) - V(s_t)
    GAE               A_t     = delta_t + gamma * lambda * (1 - episode_ended_t) * A_{t+1}
    value target      R_t     = A_t + V(s_t)
    ratio             rho_t   = pi_new(a_t | s_t) / pi_old(a_t | s_t)
    clipped objective L_clip  = E[ min(rho_t * A_t, clip(rho_t, 1 - eps, 1 + eps) * A_t) ]
    penalty objective L_kl    = E[ rho_t * A_t ] - beta * KL(pi_old || pi_new)    (the paper's L^KLPEN)
    loss              L       = -L_policy + vf_coef * L_value - ent_coef * entropy

Time limits are the classic trap. A *truncated* episode (Pendulum-v1 stops each after 200 steps) has
a future, so its target bootstraps from V(true final observation); only *termination* is worth zero.
Conflating them teaches the critic an unpredictable jump up to zero at step 200, and learning stalls.

Run it:       python ppo_continuous.py --env-id Pendulum-v1      (all flags: --help)
Evaluate:     python ppo_continuous.py --evaluate runs/<run-name>/model.pt --capture-video
"""

import contextlib
import copy
import csv
import io
import json
import math
import netrc
import os
import random
import signal
import socket
import sys
import tempfile
import threading
import time
import urllib.parse
import warnings
import weakref
from collections import deque
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import tyro

ALGORITHM = "ppo_continuous"

# =============================================================================================
# Part 1: the algorithm
# =============================================================================================
# Everything that decides what is learned, ending in train(). Part 2 only runs it.


@dataclass
class Args:
    # --- Experiment ---
    env_id: str = "Pendulum-v1"
    """gymnasium id of an environment with a Box action space (Pendulum-v1, HalfCheetah-v5, ...)"""
    env_kwargs: dict[str, bool | int | float | str] = field(default_factory=dict)
    """keyword arguments of gym.make as NAME VALUE pairs, for training and every evaluation of the model"""
    seed: int = 1
    """seed of torch, numpy, random and the environments: the same seed gives the same run on CPU"""
    total_timesteps: int = 1_000_000
    """environment steps to train for, summed over all envs (1M, the usual MuJoCo budget)"""
    cuda: bool = True
    """use CUDA when it is available (CPU otherwise)"""

    # --- Environment and rollout ---
    num_envs: int = 4
    """parallel environments (batch: num_envs * num_steps), sharing each policy forward pass (CPU time)"""
    async_envs: bool = False
    """step the envs in subprocesses (gymnasium AsyncVectorEnv); pays off only for slow envs"""
    num_steps: int = 512
    """steps per env per rollout (4 x 512 = 2048, the batch size of the original MuJoCo setup)"""
    norm_obs: bool = True
    """normalise observations with running mean and std (saved with the model, reused in evaluation)"""
    norm_reward: bool = True
    """divide rewards by the running std of the discounted return: value targets near unit scale"""

    # --- PPO ---
    learning_rate: float = 3e-4
    """Adam learning rate for actor and critic"""
    anneal_lr: bool = True
    """decay the learning rate linearly towards 0 over training"""
    gamma: float = 0.99
    """discount factor"""
    gae_lambda: float = 0.95
    """GAE lambda: 0 gives the one-step TD advantage (biased by V); 1 the Monte-Carlo one, bootstrapped where the
    rollout or a truncation cuts the episode (a2c.py's n-step return)"""
    num_minibatches: int = 32
    """minibatches per epoch; the rollout batch must divide evenly into them"""
    update_epochs: int = 10
    """passes over each rollout batch"""
    norm_adv: bool = True
    """normalise advantages to zero mean and unit std within each minibatch"""
    clip_coef: float = 0.2
    """clip epsilon: how far pi_new/pi_old may move the way a sample's advantage favours before it stops pulling"""
    clip_vloss: bool = False
    """clip the value update around the old prediction (baselines' ppo2); off as in SB3: holds the critic back"""
    ent_coef: float = 0.0
    """entropy bonus coefficient; 0 as in the paper's MuJoCo runs: the learned log-std sets exploration"""
    vf_coef: float = 0.5
    """value loss coefficient"""
    max_grad_norm: float = 0.5
    """clip the global gradient norm of all parameters to this"""
    target_kl: float | None = None
    """stop an update after the first epoch whose approximate KL(pi_old || pi_new) exceeds this"""
    ppo_penalty: bool = False
    """use the adaptive KL-penalty objective (the paper's L^KLPEN) instead of the clipped one"""
    kl_beta: float = 1.0
    """initial KL penalty coefficient beta (with --ppo-penalty)"""
    kl_beta_target: float = 0.01
    """KL the penalty aims for (see adapt_kl_beta; with --ppo-penalty)"""

    # --- Running the experiment: files, tracking, evaluation, threads ---
    run_name: str | None = None
    """directory name under runs/ (default: <env-id>__ppo_continuous__<seed>__<unix-time>)"""
    track: bool = False
    """log to Weights & Biases; without a network wandb runs offline and says so"""
    wandb_project_name: str = "glassbox-rl"
    """wandb project"""
    wandb_entity: str | None = None
    """wandb entity (team or user)"""
    capture_video: bool = False
    """record the evaluation episodes to runs/<run-name>/videos/"""
    save_model: bool = True
    """save the final model (weights, normalisation statistics, args) to runs/<run-name>/model.pt"""
    checkpoint_every: int = 0
    """write a resumable runs/<run-name>/checkpoint.pt every this many environment steps; 0: none"""
    resume: str | None = None
    """continue training from this checkpoint.pt, with its settings unless a flag overrides them"""
    evaluate: str | None = None
    """only evaluate this saved model.pt (or checkpoint.pt) for --eval-episodes episodes"""
    eval_episodes: int = 10
    """episodes of deterministic evaluation (the mean action) at the end; 0 skips it"""
    log_interval: float = 5.0
    """seconds between progress lines on the console"""
    torch_threads: int = 1
    """CPU threads for torch; one lets seeds run side by side, one per core"""


# --- Environment construction ---

def make_env(env_id: str, env_kwargs: dict | None = None, render_mode: str | None = None) -> gym.Env:
    """gym.make, its observations one flat vector, the networks' input: Discrete, MultiDiscrete, Tuple and
    Dict ones through FlattenObservation (a Discrete one becomes one-hot). check_env refused other spaces."""
    env = gym.make(env_id, render_mode=render_mode, **(env_kwargs or {}))
    if isinstance(env.observation_space, (gym.spaces.Discrete, gym.spaces.MultiDiscrete, gym.spaces.Tuple,
                                          gym.spaces.Dict)):
        env = gym.wrappers.FlattenObservation(env)
    return env


def make_vector_env(args: Args) -> gym.vector.VectorEnv:
    """Vectorised envs in SAME_STEP autoreset mode (gymnasium 1.x's NEXT_STEP spends the step after an episode
    on a fake reset transition): every transition is real, the true last observation in info["final_obs"]."""
    env_cls = gym.vector.AsyncVectorEnv if args.async_envs else gym.vector.SyncVectorEnv
    envs = env_cls([lambda: make_env(args.env_id, args.env_kwargs) for _ in range(args.num_envs)],
                   autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    return gym.wrappers.vector.RecordEpisodeStatistics(envs)


class RunningMeanStd:
    """Running mean and variance over batches (Chan et al.'s parallel update), in float64."""

    def __init__(self, shape: tuple[int, ...] = ()):
        self.mean, self.var, self.count = np.zeros(shape, np.float64), np.ones(shape, np.float64), 1e-4

    def update(self, x: np.ndarray) -> None:
        batch_mean, batch_var, n = x.mean(axis=0), x.var(axis=0), x.shape[0]
        delta, total = batch_mean - self.mean, self.count + n
        self.mean = self.mean + delta * n / total
        self.var = (self.var * self.count + batch_var * n + delta**2 * self.count * n / total) / total
        self.count = total

    def state_dict(self) -> dict:  # what checkpoints and model.pt keep, as of a module
        return {"mean": torch.tensor(self.mean), "var": torch.tensor(self.var), "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.var, self.count = state["mean"].double().numpy(), state["var"].double().numpy(), state["count"]


def normalize_obs(obs: np.ndarray, rms: RunningMeanStd | None) -> np.ndarray:
    if rms is None:
        return obs.astype(np.float32)
    return np.clip((obs - rms.mean) / np.sqrt(rms.var + 1e-8), -10.0, 10.0).astype(np.float32)


class RewardScaler:
    """Scales rewards by the running std of a discounted sum of past rewards (baselines' VecNormalize), a proxy
    for the return's scale. No mean subtracted: shifting rewards changes the optimal policy (ending early pays)."""

    def __init__(self, num_envs: int, num_steps: int, gamma: float):
        self.rms, self.gamma = RunningMeanStd(), gamma
        self.returns, self.history = np.zeros(num_envs, np.float64), np.zeros((num_steps, num_envs), np.float64)

    def observe(self, step: int, rewards: np.ndarray, episode_ends: np.ndarray) -> None:
        self.returns = self.returns * self.gamma + rewards
        self.history[step] = self.returns
        self.returns[episode_ends] = 0.0

    def scale(self, rewards: np.ndarray) -> np.ndarray:
        self.rms.update(self.history.reshape(-1))
        return (rewards / np.sqrt(self.rms.var + 1e-8)).astype(np.float32)


# --- Networks ---

def layer_init(layer: nn.Linear, std: float = math.sqrt(2), bias: float = 0.0) -> nn.Linear:
    """Orthogonal weights keep activations' scale through the layers at the start of training."""
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


def mlp(in_dim: int, out_dim: int, out_std: float, hidden: int = 64) -> nn.Sequential:
    return nn.Sequential(
        layer_init(nn.Linear(in_dim, hidden)), nn.Tanh(),
        layer_init(nn.Linear(hidden, hidden)), nn.Tanh(),
        layer_init(nn.Linear(hidden, out_dim), std=out_std),
    )


class Agent(nn.Module):
    """Separate actor and critic MLPs: value gradients never reach the actor's weights (they only scale its step through
    the shared --max-grad-norm clip). The policy is N(mu(s), diag(exp(log_std))^2), log_std one learned,
    state-independent parameter per dimension: a fixed std needs tuning and cannot shrink; a state-conditioned one
    (SAC's) gives the surrogate an output to collapse on a few states."""

    def __init__(self, obs_dim: int, act_dim: int):
        super().__init__()
        self.critic = mlp(obs_dim, 1, out_std=1.0)
        # A small last layer starts the mean near zero, mid-range for symmetric bounds; the std, exp(0) = 1
        # at first, alone spreads the early actions.
        self.actor_mean = mlp(obs_dim, act_dim, out_std=0.01)
        self.actor_logstd = nn.Parameter(torch.zeros(act_dim))

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(obs).squeeze(-1)

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """Samples a ~ N(mu(s), sigma^2): all the rollout needs step by step."""
        mean = self.actor_mean(obs)
        return mean + self.actor_logstd.exp() * torch.randn_like(mean)

    def log_prob_entropy(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log pi(a|s) of the given actions, and the entropy of pi(.|s) (the same for every s here)."""
        return gaussian_log_prob(action, self.actor_mean(obs), self.actor_logstd), gaussian_entropy(self.actor_logstd)

    def greedy(self, obs: torch.Tensor) -> torch.Tensor:
        """The mean action mu(s): the deterministic policy used in evaluation."""
        return self.actor_mean(obs)


# --- The algorithm's pure functions ---

def gaussian_log_prob(action: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log N(a; mu, diag(sigma^2)) = sum_i [ -(a_i - mu_i)^2 / (2 sigma_i^2) - log sigma_i - log(2 pi)/2 ].
    Written out: torch.distributions costs more than the network at these sizes. `action` is the
    *unclipped* sample: clipping piles the distribution up on the bounds as point masses."""
    z = (action - mean) * torch.exp(-log_std)
    return (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def gaussian_entropy(log_std: torch.Tensor) -> torch.Tensor:
    """H = sum_i [ log sigma_i + (1 + log(2 pi)) / 2 ]; the same for every state here."""
    return (log_std + 0.5 * (1.0 + math.log(2 * math.pi))).sum(-1)


def successor_values(values: np.ndarray, last_values: np.ndarray, final_values: np.ndarray,
                     episode_ends: np.ndarray) -> np.ndarray:
    """V(s_{t+1}) for every step of a [num_steps, num_envs] rollout: the next row's inside an episode
    (last_values after the last row), final_values (V(true final obs)) where it was truncated (unused if terminated)."""
    next_values = np.concatenate([values[1:], last_values[None]])
    return np.where(episode_ends > 0, final_values, next_values)


def compute_gae(rewards: np.ndarray, values: np.ndarray, next_values: np.ndarray, terminations: np.ndarray,
                episode_ends: np.ndarray, gamma: float, gae_lambda: float) -> tuple[np.ndarray, np.ndarray]:
    """GAE over a [num_steps, num_envs] rollout; next_values[t] is V of the state that really followed step t.
    Returns (advantages, targets = A + V). A truncated step keeps gamma * V(final obs), cutting only the recursion:
    - terminations[t] removes the bootstrap, since a terminal state has no future;
    - episode_ends[t] (terminated or truncated) stops the lambda-recursion: no TD residuals of the next episode."""
    deltas = rewards + gamma * (1.0 - terminations) * next_values - values  # every delta_t at once
    decay = gamma * gae_lambda * (1.0 - episode_ends)  # only the recursion needs a loop
    advantages = np.zeros_like(rewards)
    next_advantage = np.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        next_advantage = deltas[t] + decay[t] * next_advantage
        advantages[t] = next_advantage
    return advantages, advantages + values


def clipped_policy_loss(new_logprob: torch.Tensor, old_logprob: torch.Tensor, advantages: torch.Tensor,
                        clip_coef: float) -> torch.Tensor:
    """-L_clip = -E[ min(rho A, clip(rho, 1 - eps, 1 + eps) A) ], old_logprob pi_old's (no gradient). A pessimistic
    bound: moving rho past [1 - eps, 1 + eps] the way A favours earns nothing; worse moves cost in full."""
    ratio = torch.exp(new_logprob - old_logprob)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_coef, 1.0 + clip_coef)
    return torch.max(unclipped, clipped).mean()


def kl_penalty_policy_loss(new_logprob: torch.Tensor, old_logprob: torch.Tensor, advantages: torch.Tensor,
                           beta: float) -> torch.Tensor:
    """-L_kl = -E[ rho A ] + beta * KL(pi_old || pi_new) (KL by `approx_kl`, beta by `adapt_kl_beta`): the
    paper's L^KLPEN, "PPO1" in lecture notes (though OpenAI baselines' ppo1 optimises the clipped one)."""
    log_ratio = new_logprob - old_logprob
    return -(advantages * torch.exp(log_ratio)).mean() + beta * approx_kl(log_ratio)


def value_loss(new_values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               clip_coef: float | None) -> torch.Tensor:
    """0.5 * E[(V(s) - R)^2], optionally clipped: V_clip = V_old + clip(V - V_old, -eps, eps), and the *max*
    of the two errors, pessimistic like the policy objective: a sample stops pulling V once it moved eps
    toward the target (the clipped error, constant in V, is then larger); a wrong-way move is never hidden."""
    unclipped = (new_values - returns).pow(2)
    if clip_coef is None:
        return 0.5 * unclipped.mean()
    v_clipped = old_values + torch.clamp(new_values - old_values, -clip_coef, clip_coef)
    return 0.5 * torch.max(unclipped, (v_clipped - returns).pow(2)).mean()


def approx_kl(log_ratio: torch.Tensor) -> torch.Tensor:
    """KL(pi_old || pi_new) ~= E_old[(rho - 1) - log rho], unbiased, never negative (joschu.net/blog/kl-approx.html)."""
    return (torch.exp(log_ratio) - 1.0 - log_ratio).mean()


def adapt_kl_beta(beta: float, kl: float, kl_target: float) -> float:
    """The PPO paper's rule on d, an update's KL: double beta when d > 1.5 * target, halve it when
    d < target / 1.5. The paper's d is KL(pi_old || pi_new) after the update; `update` gives (and logs as
    approx_kl) the mean over its minibatches of the KL taken before each one's own step, which runs below
    it (the first is 0), so beta halves more readily, but needs no extra pass. --target-kl tests each epoch alike."""
    if kl > 1.5 * kl_target:
        return beta * 2.0
    if kl < kl_target / 1.5:
        return beta / 2.0
    return beta


# --- The algorithm's steps ---

class Rollout:
    """One rollout, row t holding step t of every env, in numpy on the host (cheap writes per step)."""

    def __init__(self, num_steps: int, num_envs: int, obs_dim: int, act_dim: int):
        shape = (num_steps, num_envs)
        self.obs = np.zeros(shape + (obs_dim,), np.float64)  # s_t as the env gave it, not normalised
        self.actions = np.zeros(shape + (act_dim,), np.float32)  # a_t ~ pi_old(.|s_t), the unclipped sample
        self.rewards = np.zeros(shape, np.float32)  # r_t
        self.terminations = np.zeros(shape, np.float32)  # s_{t+1} is terminal: no bootstrap
        self.episode_ends = np.zeros(shape, np.float32)  # terminated or truncated: the GAE recursion stops
        self.truncated = np.zeros(shape, bool)  # truncated, not terminated: bootstrap from final_obs
        self.final_obs = np.zeros(shape + (obs_dim,), np.float64)  # true last observation where truncated


def collect_rollout(envs: gym.vector.VectorEnv, agent: Agent, rollout: Rollout, obs: np.ndarray,
                    obs_rms: RunningMeanStd | None,
                    reward_scaler: RewardScaler | None) -> tuple[np.ndarray, list[tuple[float, int]]]:
    """Steps the envs num_steps times with pi_old, filling `rollout` (only actions are needed here; the
    obs statistics stay fixed); returns the last observation and each ended episode's (return, length)."""
    low, high = envs.single_action_space.low, envs.single_action_space.high
    episodes = []
    for step in range(len(rollout.rewards)):
        rollout.obs[step] = obs
        with torch.inference_mode():
            action = agent.act(torch.from_numpy(normalize_obs(obs, obs_rms))).numpy()
        # The rollout keeps the unclipped sample (its log-prob is pi_old's); only the env sees it clipped.
        rollout.actions[step] = action
        obs, rewards, terminations, truncations, infos = envs.step(np.clip(action, low, high))
        episode_ends = terminations | truncations
        rollout.rewards[step] = rewards
        rollout.terminations[step] = terminations
        rollout.episode_ends[step] = episode_ends
        if reward_scaler is not None:
            reward_scaler.observe(step, rewards, episode_ends)
        # An ended env's obs is already the next episode's; a truncated one bootstraps from final_obs.
        truncated = rollout.truncated[step] = truncations & ~terminations
        if truncated.any():
            rollout.final_obs[step, truncated] = np.stack(infos["final_obs"][truncated])
        episodes.extend(finished_episodes(infos))  # for the metrics (Part 2)
    return obs, episodes


def compute_advantages(agent: Agent, rollout: Rollout, next_obs: np.ndarray, obs_rms: RunningMeanStd | None,
                       reward_scaler: RewardScaler | None, gamma: float, gae_lambda: float,
                       device: torch.device) -> dict[str, torch.Tensor]:
    """pi_old's log-probs and values (the networks have not changed since the rollout) in one batched
    pass, cheaper than step by step, then GAE. Returns the update's batch, one row per transition."""
    num_steps, num_envs, obs_dim = rollout.obs.shape
    b_obs = to_device(normalize_obs(rollout.obs.reshape(-1, obs_dim), obs_rms), device)
    b_actions = to_device(rollout.actions.reshape(num_steps * num_envs, -1), device)
    with torch.inference_mode():
        b_logprobs, _ = agent.log_prob_entropy(b_obs, b_actions)  # log pi_old(a_t | s_t)
        b_values = agent.value(b_obs)  # V(s_t)
        last_values = agent.value(to_device(normalize_obs(next_obs, obs_rms), device)).cpu().numpy()
        final_values = np.zeros((num_steps, num_envs), np.float32)  # V(true final obs) where truncated
        if rollout.truncated.any():
            final_obs = to_device(normalize_obs(rollout.final_obs[rollout.truncated], obs_rms), device)
            final_values[rollout.truncated] = agent.value(final_obs).cpu().numpy()
    values = b_values.cpu().numpy().reshape(num_steps, num_envs)
    if obs_rms is not None:
        obs_rms.update(rollout.obs.reshape(-1, obs_dim))
    # Rewards and bootstrap values are both in scaled units: V learned scaled returns.
    rewards = reward_scaler.scale(rollout.rewards) if reward_scaler is not None else rollout.rewards
    next_values = successor_values(values, last_values, final_values, rollout.episode_ends)  # V(s_{t+1})
    advantages, returns = compute_gae(rewards, values, next_values, rollout.terminations, rollout.episode_ends,
                                      gamma, gae_lambda)
    # Inference tensors cannot be saved for backward; clone() makes ordinary ones for any direct use.
    return {"obs": b_obs, "actions": b_actions, "logprobs": b_logprobs.clone(), "values": b_values.clone(),
            "advantages": to_device(advantages.reshape(-1), device),  # A_t
            "returns": to_device(returns.reshape(-1), device)}  # R_t = A_t + V(s_t), the value target


def update(agent: Agent, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor], args: Args,
           kl_beta: float) -> dict[str, float]:
    """update_epochs passes over the batch, each shuffled into num_minibatches minibatches, one gradient
    step each; --target-kl stops them early. Returns the metrics (means over minibatches), epochs run."""
    batch_size = len(batch["obs"])
    minibatch_size = batch_size // args.num_minibatches
    losses, log_ratios = [], []  # per minibatch, detached: diagnostics are computed once per update
    for epoch in range(args.update_epochs):
        # One shuffle per epoch, then contiguous slices: cheaper than gathering each minibatch. The CPU generator
        # draws it (as it draws actions) on either device: a GPU run shuffles as the CPU run does.
        perm = torch.randperm(batch_size).to(batch["obs"].device)
        shuffled = {key: value[perm] for key, value in batch.items()}
        for start in range(0, batch_size, minibatch_size):
            mb = {key: value[start : start + minibatch_size] for key, value in shuffled.items()}
            new_logprob, entropy = agent.log_prob_entropy(mb["obs"], mb["actions"])  # log pi_new(a|s)
            advantages = mb["advantages"]
            if args.norm_adv:
                advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
            if args.ppo_penalty:  # -E[rho A] + beta KL
                pg_loss = kl_penalty_policy_loss(new_logprob, mb["logprobs"], advantages, kl_beta)
            else:  # -E[min(rho A, clip(rho, 1 - eps, 1 + eps) A)]
                pg_loss = clipped_policy_loss(new_logprob, mb["logprobs"], advantages, args.clip_coef)
            v_loss = value_loss(agent.value(mb["obs"]), mb["values"], mb["returns"],  # 0.5 E[(V(s) - R)^2]
                                args.clip_coef if args.clip_vloss else None)
            entropy = entropy.mean()
            loss = pg_loss - args.ent_coef * entropy + args.vf_coef * v_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
            optimizer.step()
            losses.append(torch.stack([pg_loss, v_loss, entropy]).detach())
            log_ratios.append((new_logprob - mb["logprobs"]).detach())
        epoch_log_ratio = torch.cat(log_ratios[-args.num_minibatches:])
        if args.target_kl is not None and approx_kl(epoch_log_ratio).item() > args.target_kl:
            break
    pg_loss, v_loss, entropy = torch.stack(losses).mean(0).tolist()
    # approx_kl and clip_frac lag the KL the update ends at (see adapt_kl_beta).
    all_log_ratios = torch.cat(log_ratios)
    return {"policy_loss": pg_loss, "value_loss": v_loss, "entropy": entropy, "epochs": epoch + 1,
            "approx_kl": approx_kl(all_log_ratios).item(),
            "clip_frac": ((all_log_ratios.exp() - 1.0).abs() > args.clip_coef).float().mean().item()}


def train(args: Args) -> dict:
    """Trains, evaluates and saves; returns a summary (also written to runs/<run-name>/summary.json)."""
    check_args(args)
    batch_size = args.num_envs * args.num_steps

    # Seeding: python, numpy and torch here; each env gets seed + index at its first reset.
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.torch_threads)
    device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")

    envs = make_vector_env(args)
    obs_dim = envs.single_observation_space.shape[0]
    act_dim = envs.single_action_space.shape[0]
    agent = Agent(obs_dim, act_dim).to(device)
    # eps 1e-5, not 1e-8: for tiny gradients m / (sqrt(v) + eps) would be a full step of noise. fused: one pass.
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5, fused=True)
    obs_rms = RunningMeanStd((obs_dim,)) if args.norm_obs else None
    reward_scaler = RewardScaler(args.num_envs, args.num_steps, args.gamma) if args.norm_reward else None
    run = Run(args, device, batch_size, shapes={"obs_dim": obs_dim, "act_dim": act_dim},
              model={"agent": agent, "obs_rms": obs_rms},
              training={"optimizer": optimizer, "reward_rms": reward_scaler.rms if reward_scaler else None},
              counters={"global_step": 0, "iteration": 0, "kl_beta": args.kl_beta})
    global_step, iteration, kl_beta = run.start["global_step"], run.start["iteration"], run.start["kl_beta"]
    rollout = Rollout(args.num_steps, args.num_envs, obs_dim, act_dim)
    acting_agent = host_copy(agent, device)  # the agent itself, or its CPU copy when it trains on a GPU (Part 2)
    obs, _ = envs.reset(seed=args.seed + global_step)  # a resumed run starts fresh episodes: env state is not saved

    while global_step < run.total_steps:  # whole rollouts up to --total-timesteps
        iteration += 1
        if args.anneal_lr:
            optimizer.param_groups[0]["lr"] = args.learning_rate * (1.0 - global_step / run.total_steps)
        obs, episodes = collect_rollout(envs, acting_agent, rollout, obs, obs_rms, reward_scaler)
        global_step += batch_size
        batch = compute_advantages(agent, rollout, obs, obs_rms, reward_scaler, args.gamma, args.gae_lambda, device)
        stats = update(agent, optimizer, batch, args, kl_beta)
        refresh_host_copy(acting_agent, agent)  # the copy is pi_old for the next rollout
        if args.ppo_penalty:  # beta for the next update, from this update's measured KL
            kl_beta = adapt_kl_beta(kl_beta, stats["approx_kl"], args.kl_beta_target)

        run.log({
            "global_step": global_step, "iteration": iteration, "learning_rate": optimizer.param_groups[0]["lr"],
            "policy_loss": stats["policy_loss"], "value_loss": stats["value_loss"], "entropy": stats["entropy"],
            "approx_kl": stats["approx_kl"],
            "clip_frac": stats["clip_frac"], "kl_beta": kl_beta,
            "explained_variance": explained_variance(batch["values"].cpu().numpy(), batch["returns"].cpu().numpy()),
        }, episodes)
        if run.checkpoint_due(global_step, global_step - batch_size):
            run.save_checkpoint(global_step=global_step, iteration=iteration, kl_beta=kl_beta)
        run.progress(global_step)
    envs.close()
    return run.finish(global_step)


# =============================================================================================
# Part 2: running it
# =============================================================================================
# Checks, files, evaluation, the command line. `# <shared NAME>` blocks: tools/shared/NAME.py (tools/sync.py)


def check_args(args: Args) -> None:
    check_flags(args, {
        "positive": ("total_timesteps", "num_envs", "num_steps", "num_minibatches", "update_epochs", "torch_threads",
                     "learning_rate", "clip_coef", "kl_beta", "kl_beta_target", "max_grad_norm", "log_interval"),
        "0 or more": ("eval_episodes", "checkpoint_every"), "in (0, 1]": ("gamma",), "in [0, 1]": ("gae_lambda",),
    })
    batch = args.num_envs * args.num_steps
    if batch % args.num_minibatches:
        raise UsageError(f"the rollout batch num_envs * num_steps = {args.num_envs} * {args.num_steps} = {batch} "
                         f"does not divide into --num-minibatches {args.num_minibatches}; pick a divisor of {batch}")
    if args.norm_adv and batch == args.num_minibatches:  # the std of one advantage is 0 (or NaN): no scale
        raise UsageError(f"--num-minibatches {args.num_minibatches} makes minibatches of one sample, whose advantage "
                         "cannot be normalised; use fewer minibatches or --no-norm-adv")
    if args.total_timesteps < batch:
        raise UsageError(f"--total-timesteps {args.total_timesteps} is less than one rollout ({batch} steps); "
                         "raise it or lower --num-envs / --num-steps")
    check_env(args.env_id, args.env_kwargs)


def action_space_error(space: gym.Space) -> str | None:
    if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
        return (f"has a {type(space).__name__} action space of shape {space.shape}; {ALGORITHM}.py needs a flat Box "
                "one (continuous actions, one dimension); use ppo_discrete.py for discrete actions")
    return None


METRICS = ["global_step", "iteration", "time", "sps", "learning_rate", "policy_loss", "value_loss", "entropy",
           "approx_kl", "clip_frac", "explained_variance", "kl_beta", "episodic_return", "episodic_length", "episodes"]


def evaluate(agent: Agent, obs_rms: RunningMeanStd | None, env_id: str, env_kwargs: dict, episodes: int, seed: int,
             device: torch.device, video_dir: Path | None = None) -> list[float]:
    """Returns of `episodes` episodes acting with the mean action mu(s), no exploration noise.
    Observations go through the frozen *training* statistics, which the policy was trained on."""
    env = evaluation_env(env_id, env_kwargs, video_dir)
    agent = host_copy(agent, device)  # one observation at a time: on the host, as in the rollouts
    low, high = env.action_space.low, env.action_space.high
    returns = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        done, total = False, 0.0
        while not done:
            with torch.no_grad():
                action = agent.greedy(torch.from_numpy(normalize_obs(obs[None], obs_rms)))
            obs, reward, terminated, truncated, _ = env.step(np.clip(action[0].numpy(), low, high))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return returns


def load_model(path: str, device: torch.device) -> tuple[Agent, RunningMeanStd | None, dict]:
    """model.pt or checkpoint.pt, read onto the CPU (from any machine), its networks then on `device`."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("algorithm") != ALGORITHM:
        raise UsageError(f"{path} is not a {ALGORITHM}.py model (algorithm: {state.get('algorithm')})")
    agent = Agent(state["obs_dim"], state["act_dim"])
    agent.load_state_dict(state["agent"])
    agent.to(device)  # after loading: from the host's copy of the weights to where they will act
    obs_rms = RunningMeanStd((state["obs_dim"],)) if state["obs_rms"] is not None else None
    if obs_rms is not None:
        obs_rms.load_state_dict(state["obs_rms"])
    return agent, obs_rms, state


# <shared onpolicy_run>
def finished_episodes(infos: dict) -> list[tuple[float, int]]:  # (return, length) of those that ended in this step
    episode, done = infos.get("episode"), infos.get("_episode")
    return [] if episode is None else list(zip(episode["r"][done].tolist(), episode["l"][done].tolist()))


def explained_variance(predicted: np.ndarray, target: np.ndarray) -> float:
    """1 - Var[target - predicted] / Var[target]: 1 is a perfect critic, 0 no better than a constant."""
    with np.errstate(over="ignore", invalid="ignore"):  # a diverged run's inf values: Run.log says so in one line
        var = np.var(target)
        return float("nan") if var == 0 else float(1.0 - np.var(target - predicted) / var)


def state_dicts(objects: dict) -> dict:
    return {key: obj.state_dict() if obj is not None else None for key, obj in objects.items()}


def non_finite(state: dict) -> str | None:  # the first floating-point tensor (object.key) with a NaN or inf
    bad = (f"{name}.{key}" for name, tensors in state.items() if tensors is not None for key, v in tensors.items()
           if torch.is_tensor(v) and v.is_floating_point() and not v.isfinite().all())
    return next(bad, None)


class Run:
    """The files and console of one run, so that train() reads as the algorithm (docs/running.md). train() names
    what a checkpoint holds: `model` and `training` (objects with a state_dict, None for one switched off) and
    `counters` (numbers, with their starting values; `start` holds them as training starts)."""

    def __init__(self, args, device: torch.device, batch_size: int, shapes: dict, model: dict, training: dict,
                 counters: dict):
        self.args, self.device, self.shapes, self.model, self.training = args, device, shapes, model, training
        self.checkpoint_step, self.elapsed_before = None, 0.0  # the last checkpoint's step; wall time before resuming
        self.start = self.resume(batch_size, counters) if args.resume else dict(counters)
        # Where training ends: the last whole rollout within --total-timesteps, counted in env steps from where it
        # starts, so that a run resumed with another --num-envs or --num-steps goes on from the same step.
        step = self.start["global_step"]
        self.total_steps = step + (args.total_timesteps - step) // batch_size * batch_size
        self.dir, self.metrics = open_run(args, self.start["global_step"] if args.resume else None)
        if device.type == "cuda":
            print("device cuda: acting on a CPU copy of the agent (refreshed after each update); "
                  "updates and the advantage pass on the GPU")
        self.recent_returns: deque[float] = deque(maxlen=20)
        self.acted_finite = True  # whether the last rollout's policy was finite (Run.log checks after each update)
        self.start_time = self.last_print = time.time()

    def resume(self, batch_size: int, counters: dict) -> dict:
        """Everything in a checkpoint back in place, once it fits and would overwrite no finished run."""
        path = self.args.resume
        ckpt = torch.load(path, map_location="cpu", weights_only=True)  # load_state_dict moves weights to the device
        if ckpt.get("algorithm") != ALGORITHM or "torch_rng" not in ckpt:  # model.pt holds no training state
            raise UsageError(f"{path} is not a checkpoint.pt of {ALGORITHM}.py; resume from that run's checkpoint.pt")
        start = {key: ckpt[key] for key in counters}
        check_resumable(path, start["global_step"], self.args.total_timesteps - start["global_step"] < batch_size,
                        self.args)
        for key, value in self.shapes.items():  # another env's spaces: say so before torch's size mismatch
            if ckpt.get(key) != value:
                raise UsageError(f"{path} was trained on {ckpt['args']['env_id']} ({key} {ckpt.get(key)}), these "
                                 f"flags give {self.args.env_id} ({key} {value}); resume with the flags it was "
                                 "trained with (drop --env-id)")
        for key, obj in (self.model | self.training).items():
            if obj is None:
                continue
            if ckpt[key] is None:  # --norm-obs / --norm-reward added on resume
                raise UsageError(f"{path} holds no {key}: its run trained without it; "
                                 "resume without --norm-obs / --norm-reward")
            try:
                obj.load_state_dict(ckpt[key])
            except (RuntimeError, ValueError, KeyError) as e:  # torch's size mismatch, in one line
                raise UsageError(f"{path} does not fit these networks: {str(e).strip().splitlines()[0]}; "
                                 "resume with the flags it was trained with (drop --env-id)") from None
        set_torch_rng(ckpt, self.device)
        self.checkpoint_step, self.elapsed_before = start["global_step"], ckpt.get("elapsed", 0.0)
        print(f"resumed from {path} at step {start['global_step']}")
        return start

    def elapsed(self) -> float:  # the whole run's wall time: this process's and its checkpoint's
        return self.elapsed_before + time.time() - self.start_time

    def diverged(self, step: int, what: str, value) -> "Diverged":
        kept = (f"{self.dir / 'checkpoint.pt'} (step {self.checkpoint_step}) holds the last finite weights"
                if self.checkpoint_step is not None else "no checkpoint was written")
        # Rewards, or observations (through their statistics), that are not finite from a rollout whose policy was
        # finite: the env returned them, and a lower learning rate would not help.
        stats = non_finite({"obs_rms": state_dicts(self.model).get("obs_rms")})
        if self.acted_finite and (stats or what == "episodic_return"):
            return Diverged(f"{self.args.env_id} returned {'observations' if stats else 'rewards'} that are not "
                            f"finite to a finite policy (at step {step} {stats or what} is not finite); check the env; "
                            f"{kept}")
        return Diverged(f"training diverged at step {step}: {what} is {value}; {kept}; try a lower --learning-rate")

    def model_state(self, global_step: int) -> dict:
        """model.pt's contents; Diverged if a weight is not finite, so no file holds diverged weights."""
        model = state_dicts(self.model)
        if bad := non_finite(model):
            raise self.diverged(global_step, bad, "not finite")
        return {"algorithm": ALGORITHM, "args": asdict(self.args), **self.shapes, **model, "global_step": global_step}

    def checkpoint_due(self, step: int, previous_step: int) -> bool:
        every = self.args.checkpoint_every  # a multiple of it in (previous_step, step], or the last step
        return bool(every) and (step // every > previous_step // every or step == self.total_steps)

    def save_checkpoint(self, **counters) -> None:
        counters = {key: counters[key] for key in self.start}  # exactly the counters named in train()
        atomic_save(self.model_state(counters["global_step"]) | state_dicts(self.training) | counters | {
            "torch_rng": torch.get_rng_state(), "elapsed": self.elapsed(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,  # a CPU run: no CUDA
        }, self.dir / "checkpoint.pt")
        self.checkpoint_step = counters["global_step"]

    def log(self, row: dict, episodes: list[tuple[float, int]]) -> None:
        """A metrics row with the clock and the episodes that ended; a loss, the entropy or a return that is not
        finite is Diverged once the row (the diagnosis) is written."""
        episode_returns, episode_lengths = [r for r, _ in episodes], [n for _, n in episodes]
        self.recent_returns.extend(episode_returns)
        elapsed = self.elapsed()
        row = row | {"time": round(elapsed, 2), "sps": round(row["global_step"] / elapsed),
                     "episodic_return": np.mean(episode_returns) if episode_returns else "",
                     "episodic_length": np.mean(episode_lengths) if episode_lengths else "", "episodes": len(episodes)}
        self.metrics.write(row)
        for column in sorted(row, key=lambda c: c != "episodic_return"):  # the env's numbers first: the cause
            if (column.endswith("_loss") or column in ("entropy", "episodic_return")) and row[column] != "" \
                    and not math.isfinite(row[column]):
                raise self.diverged(row["global_step"], column, row[column])
        self.acted_finite = non_finite(state_dicts(self.model)) is None  # the weights the next rollout acts with

    def progress(self, global_step: int) -> None:
        if time.time() - self.last_print < self.args.log_interval and global_step < self.total_steps:
            return
        self.last_print, elapsed = time.time(), self.elapsed()
        sps = global_step / elapsed
        recent = f"{np.mean(self.recent_returns):.1f}" if self.recent_returns else "n/a"
        eta = (self.total_steps - global_step) / max(sps, 1e-9)
        print(f"step {global_step:>9}/{self.total_steps} | {sps:5.0f} SPS | return {recent} "
              f"(last {len(self.recent_returns)} episodes) | {elapsed:5.0f}s elapsed, ~{eta:.0f}s left", flush=True)

    def finish(self, global_step: int) -> dict:
        """model.pt (before anything that could fail), the final evaluation, summary.json; returns the summary."""
        wall_time, args = self.elapsed(), self.args
        model = self.model_state(global_step)
        if args.save_model:
            atomic_save(model, path := self.dir / "model.pt")
            print(f"model saved to {path}; evaluate it with: python {ALGORITHM}.py --evaluate {path}")
        summary = {"algorithm": ALGORITHM, "env_id": args.env_id, "seed": args.seed, "global_step": global_step,
                   "wall_time": round(wall_time, 1), "sps": round(global_step / wall_time),
                   "train_return_recent": float(np.mean(self.recent_returns)) if self.recent_returns else None}
        if args.eval_episodes:
            video_dir = self.dir / "videos" if args.capture_video else None
            returns = evaluate(self.model["agent"], self.model["obs_rms"], args.env_id, args.env_kwargs,
                               args.eval_episodes, eval_seed(args.seed), self.device, video_dir)
            print_eval(returns)
            summary |= {"eval_mean": float(np.mean(returns)), "eval_std": float(np.std(returns)),
                        "eval_returns": returns}
        atomic_save(json.dumps(summary, indent=2), self.dir / "summary.json")
        self.metrics.close()
        return summary


def print_eval(returns: list[float]) -> None:
    print(f"eval: {np.mean(returns):.1f} ± {np.std(returns):.1f} over {len(returns)} episodes (deterministic)")


def run_evaluation(args) -> dict:
    torch.set_num_threads(args.torch_threads)
    device = torch.device("cpu")  # evaluation acts one observation at a time, on the host in any case
    agent, obs_rms, state = load_model(args.evaluate, device)
    check_model_fits(args.evaluate, state, args)
    video_dir = Path(args.evaluate).parent / "videos" if args.capture_video else None
    returns = evaluate(agent, obs_rms, args.env_id, args.env_kwargs, args.eval_episodes, eval_seed(args.seed), device,
                       video_dir)
    print(f"{args.env_id}, model {args.evaluate} (trained {state['global_step']} steps)")
    print_eval(returns)
    if video_dir is not None and video_dir.is_dir():  # not when video was skipped
        print(f"videos in {video_dir}")
    return {"eval_mean": float(np.mean(returns)), "eval_std": float(np.std(returns)), "eval_returns": returns}
# </shared onpolicy_run>


# <shared common>
class UsageError(Exception):
    """Bad input: reported as one `error:` line and exit code 2, without a traceback."""


class Diverged(Exception):
    """A loss, value, return or weight that is no longer finite: one `error:` line and exit code 3."""


RANGES = {"positive": lambda v: v > 0, "0 or more": lambda v: v >= 0,
          "in (0, 1]": lambda v: 0 < v <= 1, "in [0, 1]": lambda v: 0 <= v <= 1}


def check_flags(args, ranges: dict[str, tuple[str, ...]]) -> None:
    """--seed's range, every float finite (nan passes any comparison), `ranges`, the --resume/--evaluate file."""
    if not 0 <= args.seed < 2**31:  # numpy and the envs take seeds up to 2**32 - 1, offsets added
        raise UsageError(f"--seed must be from 0 to 2**31 - 1, got {args.seed}")
    if args.run_name is not None and (args.run_name in ("", "..") or Path(args.run_name).name != args.run_name):
        raise UsageError(f"--run-name must be one directory name, made under runs/ (no / and not . or ..), got "
                         f"{args.run_name!r}")
    checks = [(name, "a finite number", math.isfinite) for name, v in vars(args).items() if isinstance(v, float)]
    for name, want, ok in checks + [(name, kind, RANGES[kind]) for kind, names in ranges.items() for name in names]:
        if not ok(getattr(args, name)):
            raise UsageError(f"--{name.replace('_', '-')} must be {want}, got {getattr(args, name)}")
    for name in ("resume", "evaluate"):
        if getattr(args, name) is not None and not Path(getattr(args, name)).is_file():
            raise UsageError(f"--{name}: no file at {getattr(args, name)}")
    if args.evaluate and args.eval_episodes == 0:
        raise UsageError("--eval-episodes must be positive with --evaluate")


EVAL_STEP_CAP = 10_000  # evaluation steps per episode of an env with no time limit: 10x MuJoCo's 1,000


def check_env(env_id: str, env_kwargs: dict | None = None) -> tuple[gym.Space, gym.Space]:
    """Makes the env once, resets it and takes a step: a bad id, package, keyword or space, or an env that breaks
    its contract from the start, is one error line before anything is written. Returns its spaces."""
    try:
        env = make_env(env_id, env_kwargs)
    except (gym.error.Error, ImportError, TypeError) as e:
        raise UsageError(f"cannot make {env_id}" + (f" with --env-kwargs {env_kwargs}" if env_kwargs else "")
                         + f": {e}") from None
    space, action_space = env.observation_space, env.action_space  # as make_env flattened them
    if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
        env.close()
        raise UsageError(f"{env_id} has {space} observations; {ALGORITHM}.py's networks take a flat vector (a 1-D "
                         "Box, or a Discrete, MultiDiscrete, Tuple or Dict space, which it flattens); image "
                         "observations need a convolutional network, which it does not have")
    if problem := action_space_error(action_space):
        env.close()
        raise UsageError(f"{env_id} {problem}")
    limit, call, shapes = env.spec.max_episode_steps if env.spec else None, "reset", []
    with warnings.catch_warnings():  # gymnasium's env checker would warn first: the error line says it
        warnings.simplefilter("ignore")
        try:  # a broken env would otherwise fail deep inside the vector env, as a traceback
            shapes.append(np.shape(env.reset(seed=0)[0]))
            call = "step"
            obs, reward, *_ = env.step(action_space.sample())
            np.asarray(obs, np.float32), float(reward)  # numbers, as the networks and the return need them
            problem = next((f"returns observations of shape {shape}, not {space.shape}"
                            for shape in (*shapes, np.shape(obs)) if shape != space.shape), None)
        except Exception as e:  # noqa: BLE001 (an env can raise anything)
            problem = f"raised {type(e).__name__} in {call}(): {(str(e).strip().splitlines() or [''])[0]}"
        finally:
            env.close()
    if problem:
        raise UsageError(f"{env_id} breaks the gymnasium env contract: it {problem}; fix the env")
    if limit is None:
        print(f"note: {env_id} has no time limit; each evaluation episode stops after {EVAL_STEP_CAP} steps")
    return space, action_space


def atomic_save(obj: dict | str, path: Path) -> None:
    """torch.save (a dict) or UTF-8 text (a str) to a temporary file renamed over `path`: a crash, Ctrl-C or
    full disk mid-write leaves the previous file whole."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(obj.encode()) if isinstance(obj, str) else torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:  # an interrupt too: no .tmp left beside the previous file
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if not isinstance(e, OSError):
            raise
        then = "--resume from it" if path.name == "checkpoint.pt" else "run again"
        raise UsageError(f"cannot write {path}: {e.strerror or e}; the previous {path.name} is kept; free space "
                         f"and {then}") from None


def run_directory(args) -> Path:  # runs/<--run-name>; with --resume and no --run-name, the checkpoint's own
    if args.resume and not args.run_name:
        return Path(args.resume).parent
    return Path("runs") / (args.run_name or f"{args.env_id}__{ALGORITHM}__{args.seed}__{int(time.time())}")


def check_resumable(path: str, step: int, at_end: bool, args) -> None:
    """Refuses a checkpoint that would overwrite a finished run (one from before its end, resumed in place) or
    that has nothing left to do. At the end of an unfinished run (stopped in its final evaluation) only the
    final evaluation and summary.json are left."""
    summary = Path(path).parent / "summary.json"
    try:
        finished = int(json.loads(summary.read_text())["global_step"]) if summary.is_file() else None
    except (OSError, ValueError, KeyError, TypeError):
        raise UsageError(f"{summary} is damaged; start a new run (without --resume) instead") from None
    in_place = run_directory(args).resolve() == summary.parent.resolve()
    if finished is not None and step < finished and in_place:  # at or past it, the checkpoint extends the run
        raise UsageError(f"{summary.parent} finished at step {finished} (summary.json); its checkpoint.pt is from "
                         f"step {step}, so resuming would redo steps past it and overwrite the finished run's files; "
                         "resume into a new run with --run-name NAME instead")
    if at_end and finished is not None:
        raise UsageError(f"{path} ends at step {step}, already the end of --total-timesteps {args.total_timesteps}; "
                         "pass a larger --total-timesteps to train on")
    if at_end:
        print(f"{path} is at the end of training (step {step}): the final evaluation and summary.json are left")


def set_torch_rng(ckpt: dict, device: torch.device) -> None:  # and CUDA's, its first devices, for a run on CUDA
    torch.set_rng_state(ckpt["torch_rng"])
    if ckpt.get("cuda_rng") is not None and device.type == "cuda":
        torch.cuda.set_rng_state_all(ckpt["cuda_rng"][: torch.cuda.device_count()])


class MetricsLog:
    """runs/<run-name>/metrics.csv (METRICS' columns, one flushed write a row) and wandb. A resumed run starts
    with the rows of `source` (its checkpoint's run) up to its checkpoint; any other starts afresh."""

    def __init__(self, path: Path, wandb_run=None, resume_step: int | None = None, source: Path | None = None):
        kept, dropped = [], 0
        if source is not None and source.is_file():
            # Read as untrusted: a row cut by a crash, NUL bytes, a step that is no whole number or out of order.
            for row in csv.DictReader(io.StringIO(source.read_text(errors="replace").replace("\0", ""))):
                try:  # whole: no field missing or extra, its step a whole number after the last row kept
                    step = int(row["global_step"])
                    whole = None not in row and None not in row.values() and step > int(kept[-1]["global_step"]
                                                                                          if kept else -1)
                except (KeyError, ValueError, TypeError):
                    whole = False
                kept += [row] if whole and step <= resume_step else []
                dropped += not whole
            if dropped:
                print(f"{source}: left out {dropped} damaged rows")
        table = io.StringIO()
        csv.DictWriter(table, fieldnames=METRICS).writeheader()
        csv.DictWriter(table, fieldnames=METRICS, extrasaction="ignore").writerows(kept)
        atomic_save(table.getvalue(), path)
        self.file = open(path, "a", newline="")  # noqa: SIM115 (open for the run; close() closes it)
        self.writer = csv.DictWriter(self.file, fieldnames=METRICS, extrasaction="ignore")
        self.wandb_run = wandb_run
        self.release = lambda: None  # open_run's: the run directory's lock

    def write(self, row: dict) -> None:
        self.writer.writerow(row)
        self.file.flush()
        if self.wandb_run is not None:
            self.wandb_run.log({k: v for k, v in row.items() if v != ""}, step=row["global_step"])

    def close(self) -> None:
        self.file.close()
        self.release()
        if self.wandb_run is not None:
            self.wandb_run.finish()


def wandb_server() -> tuple[str, int]:
    url = urllib.parse.urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    port = None
    with contextlib.suppress(ValueError):  # not a number; wandb itself will report the URL
        port = url.port
    return url.hostname or "", port or (80 if url.scheme == "http" else 443)


def wandb_reachable(timeout: float = 3.0) -> bool:
    """Whether the wandb server (WANDB_BASE_URL) answers, probed in a thread: DNS cannot hang the run either."""
    result = []

    def probe():
        with contextlib.suppress(OSError):
            socket.create_connection(wandb_server(), timeout=timeout).close()
            result.append(True)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result)


def init_wandb(args, run_name: str, run_dir: Path):
    """wandb.init, offline when the server does not answer or no API key is set (wandb would wait, prompt or fail)."""
    import wandb  # here: only --track needs it

    mode, reason = os.environ.get("WANDB_MODE"), None
    if mode is None and not wandb_reachable():
        reason = "no network"
    elif mode is None and not os.environ.get("WANDB_API_KEY"):
        netloc = urllib.parse.urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).netloc
        key = None
        with contextlib.suppress(OSError, netrc.NetrcParseError):  # no netrc file, or a broken one: no key
            key = netrc.netrc(os.environ.get("NETRC") or None).authenticators(netloc)
        reason = None if key else "no API key (run `wandb login` or set WANDB_API_KEY)"
    if reason:
        mode = "offline"
        print(f"wandb: {reason}, logging offline to {run_dir}/wandb; upload later with `wandb sync`")
    return wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, name=run_name,
                      config=asdict(args), dir=str(run_dir), mode=mode or "online")


def lock_directory(run_dir: Path) -> int | None:
    """The run directory locked for this process: by flock, which the system lets go when the process ends, however
    it ends. None where there is no flock (Windows): there runs go unlocked."""
    try:
        import fcntl
    except ImportError:
        return None
    lock = os.open(run_dir, os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock)
        raise UsageError(f"{run_dir} is in use by another run that is still going; wait for it to end or choose "
                         "another --run-name") from None
    return lock


def open_run(args, resume_step: int | None) -> tuple[Path, MetricsLog]:
    """The run's directory (run_directory), locked while the run goes on, with its args.json, and its metrics.csv
    (and wandb, with --track); one line saying why before any training when the directory cannot be written,
    is another live process's, or holds a finished run that this one would overwrite."""
    run_dir, source = run_directory(args), Path(args.resume).parent if args.resume else None
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=run_dir).close()  # an existing directory on a read-only filesystem passes mkdir
        lock = lock_directory(run_dir)
    except OSError as e:
        raise UsageError(f"cannot write the run directory {run_dir}: {e.strerror or e}; choose another --run-name or "
                         "a writable working directory") from None
    if (run_dir / "summary.json").exists() and not (source and source.resolve() == run_dir.resolve()):
        if lock is not None:
            os.close(lock)
        raise UsageError(f"{run_dir} holds a finished run (summary.json), which this run would overwrite; choose "
                         "another --run-name, or delete that directory first")
    atomic_save(json.dumps(asdict(args) | {"run_name": run_dir.name}, indent=2), run_dir / "args.json")
    wandb_run = init_wandb(args, run_dir.name, run_dir) if args.track else None
    metrics = MetricsLog(run_dir / "metrics.csv", wandb_run, resume_step, source and source / "metrics.csv")
    if lock is not None:  # let go once: when the run ends (MetricsLog.close) or its objects are dropped
        metrics.release = weakref.finalize(metrics, os.close, lock)
    return run_dir, metrics


def check_model_fits(path: str, state: dict, args) -> None:
    """--evaluate on another env (--env-id, --env-kwargs): it must give the model's observation size and, where
    the model's own env can be made to compare with, an action space of its kind and size."""
    trained = state["args"]["env_id"], state["args"].get("env_kwargs", {})  # none before the flag
    if (args.env_id, args.env_kwargs) == trained:
        return
    kind = lambda env: (env.observation_space.shape[0], type(env.action_space).__name__,  # noqa: E731
                        gym.spaces.flatdim(env.action_space))
    with contextlib.closing(make_env(args.env_id, args.env_kwargs)) as env:
        here = kind(env)
    there = (state["obs_dim"], *here[1:])
    with contextlib.suppress(Exception), contextlib.closing(make_env(*trained)) as env:  # not installed here: skip
        there = kind(env)
    if here != there:
        raise UsageError(f"{path} was trained on {trained[0]} (observation size, action space and size {there}); "
                         f"{args.env_id} gives {here}; evaluate it on an env of the same sizes")


def host_copy(module: nn.Module, device: torch.device) -> nn.Module:  # a GPU module's acting copy in host memory
    return module if device.type == "cpu" else copy.deepcopy(module).cpu()


def refresh_host_copy(host: nn.Module, module: nn.Module, parts: tuple[str, ...] = ("",)) -> None:
    """The host copy's weights (those under `parts`, the ones acting reads) from a GPU module's, written in place:
    one flat copy from the device, one wait, where copying tensor by tensor waits once for each."""
    if host is not module:
        names = [name for name, _ in module.named_parameters() if name.startswith(parts)]
        flat = torch.cat([module.get_parameter(name).detach().reshape(-1) for name in names]).cpu()
        for name, values in zip(names, flat.split([module.get_parameter(name).numel() for name in names])):
            host.get_parameter(name).data.copy_(values.view_as(host.get_parameter(name)))


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array on `device` in one copy: to a GPU from page-locked memory, a copy the host does not wait for."""
    tensor = torch.from_numpy(array)
    return tensor.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else tensor.to(device)


def eval_seed(seed: int) -> int:  # episode i gets seed + 10_000 + i, apart from the training envs', alike later
    return seed + 10_000


def evaluation_env(env_id: str, env_kwargs: dict, video_dir: Path | None) -> gym.Env:
    """The evaluation env, recording every episode to video_dir if given and the env renders (else one line);
    an env with no time limit gets one of EVAL_STEP_CAP steps, so that evaluation always ends."""
    def make(render_mode: str | None = None) -> gym.Env:
        env = make_env(env_id, env_kwargs, render_mode=render_mode)
        return env if env.spec and env.spec.max_episode_steps else gym.wrappers.TimeLimit(env, EVAL_STEP_CAP)

    env = make()
    if video_dir is None:
        return env
    env.close()
    reason = "it has no rgb_array render mode"
    if "rgb_array" in env.metadata.get("render_modes", []):
        if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
            os.environ.setdefault("MUJOCO_GL", "egl")  # MuJoCo renders off-screen through EGL, without a display
        env = make("rgb_array")
        try:
            env.reset()
            env.render()  # the first frame: where a missing display or GL library shows, before any episode
            return gym.wrappers.RecordVideo(env, str(video_dir), episode_trigger=lambda _: True, name_prefix="eval")
        except Exception as e:  # noqa: BLE001 (renderers fail in many ways: no display, no GL library, no package)
            env.close()
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
    print(f"video skipped: {env_id} cannot render frames here ({reason}); evaluating without video", flush=True)
    return make()


def tyro_cli(argv: list[str] | None, **kwargs) -> Args:
    """tyro.cli, its parse error (a wrong type, an unknown flag, a missing value) as one line: the first paragraph
    under the title of tyro's message, boxed or plain."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            args = tyro.cli(Args, args=argv, **kwargs)
    except SystemExit as e:
        if not e.code:  # --help
            raise
        message = []
        for line in captured.getvalue().splitlines()[1:]:  # the title: a line, or in the box's top edge
            line = line.strip("│ ")
            if line and not set(line) <= set("─-╰╯"):
                message.append(line)
            elif message:  # a rule, the box's bottom edge or a blank line ends it
                break
        raise UsageError(f"{' '.join(message).rstrip('.') or captured.getvalue().strip()}; see --help") from None
    sys.stderr.write(captured.getvalue())  # anything else tyro said
    return args


def parse_args(argv: list[str] | None = None) -> Args:
    """The command line; with --resume or --evaluate the saved run's settings are the defaults."""
    args = tyro_cli(argv)
    saved_from = args.resume or args.evaluate
    if saved_from and Path(saved_from).is_file():
        try:
            saved = torch.load(saved_from, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 (unreadable, not a torch file, or objects weights_only refuses)
            saved = e
        if not isinstance(saved, dict) or not isinstance(saved.get("args"), dict) or "algorithm" not in saved:
            with open(saved_from, "rb") as f:  # torch.save writes a zip archive; one it cannot read is cut short
                damaged = isinstance(saved, (RuntimeError, OSError)) and f.read(4) == b"PK\x03\x04"
            raise UsageError(f"cannot read {saved_from}: " + ("the file is damaged or incomplete (written when the "
                             "machine failed?); use an earlier copy" if damaged else
                             "not a model.pt or checkpoint.pt saved by these scripts"))
        if saved["algorithm"] != ALGORITHM:
            other, flag = saved["algorithm"], "--resume" if args.resume else "--evaluate"
            raise UsageError(f"{saved_from} was saved by {other}.py, not {ALGORITHM}.py; use python {other}.py "
                             f"{flag} {saved_from}")
        saved = {k: v for k, v in saved["args"].items() if k in {f.name for f in fields(Args)}}
        # --run-name is not inherited: given, it names a new run, started from the checkpoint (run_directory)
        args = tyro_cli(argv, default=Args(**saved | {"resume": args.resume, "evaluate": args.evaluate,
                                                      "run_name": None}))
    return args


def stop(signum: int, frame) -> None:  # SIGTERM (kill, a scheduler ending the job) stops a run as Ctrl-C does
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> None:
    # numpy's overflow warnings from acting on diverging weights: the divergence check says it in one line
    warnings.filterwarnings("ignore", "(overflow|invalid value) encountered", RuntimeWarning, __name__)
    if threading.current_thread() is threading.main_thread():  # where Python lets a handler be set
        signal.signal(signal.SIGTERM, stop)
    try:
        args = parse_args(argv)
        if args.evaluate:
            check_args(args)
            run_evaluation(args)
        else:
            train(args)
    except (UsageError, Diverged) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(3 if isinstance(e, Diverged) else 2)
    except KeyboardInterrupt as e:
        print(f"\ninterrupted{f' ({e})' if str(e) else ''}; checkpoints and logs written so far are complete",
              file=sys.stderr)
        sys.exit(143 if str(e) == "SIGTERM" else 130)  # the codes a shell gives for each signal
    except (MemoryError, torch.OutOfMemoryError) as e:
        print(f"error: out of memory ({(str(e).strip().splitlines() or ['no detail'])[0]}); lower the sizes your "
              "flags ask for (--buffer-size, --num-envs, --num-steps, --batch-size)", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # the last resort for the file system's errors: one line too
        print(f"error: {f'{e.filename}: ' if e.filename else ''}{e.strerror or e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
# </shared common>
