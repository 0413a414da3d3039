"""Double DQN: one file, read top to bottom.

Double DQN (van Hasselt, Guez and Silver 2016, https://arxiv.org/abs/1509.06461) is DQN (Mnih et
al. 2015, https://www.nature.com/articles/nature14236) with one change, in the TD target. This file
is dqn.py with that change: `diff dqn.py ddqn.py` shows this docstring, the algorithm's name and
`td_target`, nothing else.

The loop: act in `num_envs` environments, mostly greedily with respect to Q but with some
exploration; store every transition (s, a, r, s', terminated) in a replay buffer; every
`train_frequency` steps take `gradient_steps` gradient steps on random minibatches from the buffer,
regressing Q(s, a) onto a TD target computed with a slowly-moving copy of the network. Repeat.

Key equations (s' is the state after taking a in s, theta the online weights, theta^- the target
network's):

    DQN target        y       = r + gamma * (1 - terminated) * max_a' Q(s', a'; theta^-)
    Double DQN target y       = r + gamma * (1 - terminated) * Q(s', argmax_a' Q(s', a'; theta); theta^-)
    loss              L       = E_{(s, a, r, s') ~ buffer} [ (Q(s, a; theta) - y)^2 ]   (Huber by flag)
    target update     theta^- <- tau * theta + (1 - tau) * theta^-   every C steps (tau = 1: a copy)
    epsilon-greedy    a       = uniform random action with probability epsilon, argmax_a Q(s, a) otherwise
    Boltzmann         P(a|s)  = exp(Q(s, a) / T) / sum_b exp(Q(s, b) / T)

Why DQN overestimates. Its target takes the max over estimates that are noisy. The action that
comes out on top is disproportionately one whose error happens to be positive, so even when each
estimate is right on average, their max is not: E[max_a Qhat(s', a)] >= max_a E[Qhat(s', a)]. (Two
actions truly worth the same, each estimated with independent N(0, sigma^2) error: the max is
sigma / sqrt(pi) = 0.56 sigma too high on average.) The inflated target is regressed into Q(s, a),
which is then bootstrapped from by the states before it: the optimism compounds along the horizon,
and it is not uniform, so it can change which action looks best.

Why Double DQN curbs it. It separates choosing the next action from valuing it. The online network
chooses a* = argmax_a' Q(s', a'; theta); the target network, whose errors are a different draw,
says what a* is worth. An action picked because the online network overrates it is not
systematically overrated by the target network too, so the lucky error no longer flows into y. The
two networks are not independent (the target is an older copy of the online one), so the bias
shrinks rather than vanishes, and it costs no new network: DQN's target network is the second
estimator. evaluate() logs Q(first state) beside the discounted return actually earned, to see it.

Why a target network. The target y is built from the very function being fitted. If it came from
the online weights, every gradient step on Q(s, a) would also move Q(s', .) (the two states share
all the weights), so the label moves while we regress onto it; an increase of Q at one state can
raise the targets that produced it, and the errors feed on themselves. Freezing a copy theta^- for
C steps makes each period a regression onto labels that hold still; the labels then jump to the
improved estimate. A period (384 gradient steps by default, on a buffer that keeps growing) is
not fitted to convergence, and with function approximation nothing guarantees that the fits
converge: the DQN paper says the frozen copy makes oscillations and divergence much less likely,
not impossible. Polyak averaging (tau < 1) is the smooth version: the labels drift, not jump.

Why a replay buffer. Consecutive transitions are strongly correlated and all come from the current
policy's corner of the state space; training on them in order overfits to the recent past and
forgets the rest. Sampling minibatches uniformly from a large memory of past transitions breaks the
correlation and reuses every transition many times.

Time limits are the classic trap. When an episode is *truncated* (CartPole-v1 stops every
episode after 500 steps) the state it stopped in still has a future, so the stored transition
bootstraps from Q at the true final observation. Only *termination* means the future is worth
zero, so the buffer stores done = terminated, never terminated or truncated; treating truncation as
termination teaches Q that a perfectly balanced pole at step 500 is worth one last reward, while
the same state earlier in an episode is worth about 100: the observation holds no clock, so Q gets
contradictory targets for states it cannot tell apart. Equally wrong is storing, as s', the
observation the env returns after an autoreset: that is the *next* episode's first state, and the
transition would splice two episodes together. See `true_next_obs` and `ReplayBuffer`.

Run it:       python ddqn.py                     (CartPole-v1, 73-79 s per run in docs/results.md)
Evaluate:     python ddqn.py --evaluate runs/<run-name>/model.pt --capture-video
All flags:    python ddqn.py --help
"""

import contextlib
import copy
import csv
import gc
import io
import itertools
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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro

ALGORITHM = "ddqn"

# =============================================================================================
# Part 1: the algorithm
# =============================================================================================
# What comes after train() (Part 2) only runs it: checks, files, checkpoints, evaluation, command line.


@dataclass
class Args:
    # --- Experiment ---
    env_id: str = "CartPole-v1"
    """gymnasium id of an env with a Discrete action space (CartPole-v1, Acrobot-v1, LunarLander-v3, ...)"""
    env_kwargs: dict[str, bool | int | float | str] = field(default_factory=dict)
    """keyword arguments of gym.make as NAME VALUE pairs, for training and every evaluation of the model"""
    seed: int = 1
    """seed of torch, numpy, random and the environments: the same seed gives the same run on CPU"""
    total_timesteps: int = 100_000
    """environment steps to train for, summed over all envs"""
    cuda: bool = True
    """use CUDA when it is available (CPU otherwise)"""

    # --- Environment and replay ---
    num_envs: int = 1
    """parallel environments, num_envs transitions a step; --train-frequency counts transitions whatever this is"""
    async_envs: bool = False
    """step the envs in subprocesses (gymnasium AsyncVectorEnv); pays off only for slow envs"""
    buffer_size: int = 100_000
    """transitions the buffer holds before the oldest are overwritten; all of a default run's (early failures)"""
    batch_size: int = 64
    """transitions per gradient step, drawn uniformly from the buffer"""
    learning_starts: int = 1_000
    """transitions in the buffer before training starts (refilled if a run resumes without its buffer)"""

    # --- Q-learning ---
    hidden_sizes: list[int] = field(default_factory=lambda: [256, 256])
    """sizes of the Q-network's hidden layers (ReLU between them)"""
    learning_rate: float = 2.3e-3
    """Adam learning rate; high for DQN: RL Baselines3 Zoo's CartPole-v1 value, with its training bursts"""
    anneal_lr: bool = True
    """decay the learning rate linearly to 0: small final steps let the greedy policy evaluated and saved settle"""
    gamma: float = 0.99
    """discount factor"""
    train_frequency: int = 256
    """train every this many env steps: --gradient-steps 128 every 256 is RL Baselines3 Zoo's CartPole-v1 setting"""
    gradient_steps: int = 128
    """gradient steps per training round"""
    target_network_frequency: int = 768
    """copy (or --tau average) the network into the target every this many env steps (every third burst)"""
    tau: float = 1.0
    """target update theta^- <- tau * theta + (1 - tau) * theta^-: 1 copies, below 1 averages (docs/experiments.md)"""
    loss: Literal["mse", "huber"] = "mse"
    """TD loss: mse, or huber (linear beyond --huber-delta); docs/experiments.md says why MSE is the default"""
    huber_delta: float = 1.0
    """where the Huber loss turns from quadratic to linear (with --loss huber)"""
    max_grad_norm: float = 10.0
    """clip the global gradient norm of the Q-network to this"""

    # --- Exploration ---
    exploration: Literal["epsilon-greedy", "boltzmann"] = "epsilon-greedy"
    """epsilon-greedy: a random action with probability epsilon; boltzmann: P(a|s) ~ exp(Q(s, a) / T)"""
    start_e: float = 1.0
    """epsilon at the start (epsilon-greedy)"""
    end_e: float = 0.04
    """epsilon after the decay, kept to the end (epsilon-greedy)"""
    exploration_fraction: float = 0.16
    """fraction of --total-timesteps over which epsilon (or T) falls linearly to its end value"""
    start_temperature: float = 10.0
    """Boltzmann temperature at the start, in units of Q: large next to the gaps in Q is nearly uniform"""
    end_temperature: float = 0.1
    """Boltzmann temperature after the decay, kept to the end; near 0 it is greedy"""

    # --- Running the experiment: files, tracking, evaluation, threads ---
    run_name: str | None = None
    """directory name under runs/ (default: <env-id>__<algorithm>__<seed>__<unix-time>)"""
    track: bool = False
    """log to Weights & Biases; without a network wandb runs offline and says so"""
    wandb_project_name: str = "glassbox-rl"
    """wandb project"""
    wandb_entity: str | None = None
    """wandb entity (team or user)"""
    capture_video: bool = False
    """record the final evaluation episodes to runs/<run-name>/videos/"""
    save_model: bool = True
    """save the final Q-network and args to runs/<run-name>/model.pt"""
    checkpoint_every: int = 0
    """write a resumable runs/<run-name>/checkpoint.pt every this many environment steps (0: none)"""
    save_buffer: bool = True
    """put the replay buffer into checkpoints (up to buffer_size * (2 * obs_dim + 4) * 4 bytes)"""
    resume: str | None = None
    """continue training from this checkpoint.pt, with its settings unless a flag overrides them"""
    evaluate: str | None = None
    """only evaluate this saved model.pt (or checkpoint.pt) for --eval-episodes episodes"""
    eval_episodes: int = 10
    """greedy evaluation episodes (argmax_a Q) at the end and every --eval-frequency steps; 0: none"""
    eval_frequency: int = 10_000
    """evaluate every this many env steps (0: only at the end), logging Q(first state) beside the return earned"""
    metrics_every: int = 1_000
    """environment steps between rows of metrics.csv (losses and Q values are averaged over them)"""
    log_interval: float = 5.0
    """seconds between progress lines on the console"""
    torch_threads: int = 1
    """CPU threads for torch; one lets seeds run side by side, one per core"""
    flush_denormal: bool = False
    """CPU arithmetic takes numbers below 1.2e-38 as zero: faster once Adam's moments of dead ReLU units decay into
    that range (ddpg.py: 8-13% here), but those values change: a run need not match the default's to the last digit"""


# --- Environment construction ---

def make_env(env_id: str, env_kwargs: dict | None = None, render_mode: str | None = None) -> gym.Env:
    """gym.make, its observations one flat float32 vector, the network's input: Discrete, MultiDiscrete,
    Tuple and Dict ones through FlattenObservation (a Discrete one becomes one-hot). check_env refused others."""
    env = gym.make(env_id, render_mode=render_mode, **(env_kwargs or {}))
    if isinstance(env.observation_space, (gym.spaces.Discrete, gym.spaces.MultiDiscrete, gym.spaces.Tuple,
                                          gym.spaces.Dict)):
        env = gym.wrappers.FlattenObservation(env)
    space = env.observation_space  # a flat vector of another dtype (an image is check_env's to refuse):
    if isinstance(space, gym.spaces.Box) and len(space.shape) == 1 and space.dtype != np.float32:
        low, high = space.low.astype(np.float32), space.high.astype(np.float32)  # cast here: DtypeObservation warns
        env = gym.wrappers.TransformObservation(env, lambda obs: np.asarray(obs, np.float32), gym.spaces.Box(low, high))
    return env


def make_vector_env(args: Args) -> gym.vector.VectorEnv:
    """Vectorised envs in SAME_STEP autoreset mode (gymnasium 1.x's NEXT_STEP spends the step after an episode
    on a fake reset transition): every transition is real, and the true last observation, which a truncated
    episode must bootstrap from, arrives in info["final_obs"]."""
    env_cls = gym.vector.AsyncVectorEnv if args.async_envs else gym.vector.SyncVectorEnv
    envs = env_cls([lambda: make_env(args.env_id, args.env_kwargs) for _ in range(args.num_envs)],
                   autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    return gym.wrappers.vector.RecordEpisodeStatistics(envs)


def true_next_obs(next_obs: np.ndarray, episode_ends: np.ndarray, infos: dict) -> np.ndarray:
    """The state each env really reached in this step, s' of the transition to store. An env whose
    episode just ended has already been reset: `next_obs` holds the next episode's first observation
    and infos["final_obs"] the state the episode ended in (after a termination s' is multiplied by
    zero in the target anyway; after a truncation the target bootstraps from it)."""
    if not episode_ends.any():
        return next_obs
    real = next_obs.copy()
    real[episode_ends] = np.stack(infos["final_obs"][episode_ends])
    return real


# --- Replay buffer ---

class ReplayBuffer:
    """A circular memory of transitions, preallocated on the device that trains on them: one float32 row each.

    Row i holds one whole transition (s, a, r, s', terminated): s' is stored next to s, not read from row i + 1,
    as one env's rows are not adjacent with several envs, and after an autoreset the next row is another
    episode's. One more copy of each observation ends every question about which rows follow which. The
    columns share one tensor, so on a GPU a step's rows go up in one copy and a minibatch comes back in one
    gather (on the CPU numpy does both, cheaper); the action, a small integer, is exact in float32."""

    names = ("obs", "actions", "rewards", "next_obs", "terminated")  # its columns, in a row's order

    def __init__(self, capacity: int, obs_dim: int, device: torch.device):
        self.capacity, self.pos, self.size, self.device = capacity, 0, 0, device
        d = obs_dim  # where each column sits in a row: a slice for a vector, an index for one number
        self.places = dict(zip(self.names, (slice(0, d), d, d + 1, slice(d + 2, 2 * d + 2), 2 * d + 2)))
        self.rows = torch.zeros((capacity, 2 * d + 3), dtype=torch.float32, device=device)
        self.host = self.rows.numpy() if device.type == "cpu" else None  # the same memory, for numpy
        for name, place in self.places.items():  # rb.obs, rb.actions, ...: views of the rows
            setattr(self, name, self.rows[:, place])

# <shared replay_add>
    def add(self, obs: np.ndarray, actions: np.ndarray, next_obs: np.ndarray, rewards: np.ndarray,
            terminations: np.ndarray, truncations: np.ndarray, infos: dict) -> None:
        """Stores one step of the vector env, as it returned it (row k of each array is env k's),
        with s' = true_next_obs(...) and done = terminations alone: truncations keep their bootstrap."""
        next_obs = true_next_obs(next_obs, terminations | truncations, infos)
        n, columns = len(actions), (obs, actions, rewards, next_obs, terminations)
        where = slice(self.pos, self.pos + n)  # a slice unless the rows wrap around the end: far cheaper to index
        if self.pos + n > self.capacity:
            where = (self.pos + np.arange(n)) % self.capacity
        if self.host is not None:  # on the CPU, numpy writes each column in place: a fraction of torch's cost per call
            for place, column in zip(self.places.values(), columns):
                self.host[where, place] = column
        else:  # on a GPU, the step's rows go up in one copy
            new_rows = np.concatenate([np.reshape(column, (n, -1)) for column in columns], 1, dtype=np.float32)
            index = where if isinstance(where, slice) else to_device(where, self.device)
            self.rows[index] = to_device(new_rows, self.device)
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)
# </shared replay_add>

    def sample(self, batch_size: int, count: int, rng: np.random.Generator) -> Iterator[tuple[torch.Tensor, ...]]:
        """`count` uniform minibatches (with replacement) of the filled rows, one gather each; their row numbers are
        drawn at once (the same numbers as one by one) and sent to the device in one copy."""
        if count == 0:
            return
        rows = rng.integers(0, self.size, (count, batch_size))
        for index in (rows if self.host is not None else to_device(rows, self.device)):
            batch = torch.from_numpy(self.host[index]) if self.host is not None else self.rows[index]  # numpy: cheaper
            obs, actions, rewards, next_obs, terminated = (batch[:, place] for place in self.places.values())
            yield obs, actions.long(), rewards, next_obs, terminated

    # For checkpoints (a first read can skip these): the filled rows oldest first, so that they load into a buffer
    # of any capacity, which keeps the newest.
    def state_dict(self) -> dict:
        order = (torch.arange(self.size) + self.pos) % max(self.size, 1)  # pos: the oldest row, or size if not full
        return {"size": self.size} | {name: getattr(self, name)[order.to(self.device)] for name in self.names}

    def load_state_dict(self, state: dict) -> None:
        self.size = min(state["size"], self.capacity)
        self.pos = self.size % self.capacity
        for name in self.names:
            getattr(self, name)[: self.size] = state[name][state["size"] - self.size:].to(self.device)


# --- Networks ---

class QNetwork(nn.Module):
    """An MLP from an observation to one Q value per action, Q(s, .) in a single forward pass: ReLU
    hidden layers with PyTorch's default initialisation, a linear last layer (Q is unbounded)."""

    def __init__(self, obs_dim: int, n_actions: int, hidden_sizes: list[int]):
        super().__init__()
        sizes = [obs_dim, *hidden_sizes]
        self.hidden = nn.ModuleList(nn.Linear(i, o) for i, o in itertools.pairwise(sizes))
        self.out = nn.Linear(sizes[-1], n_actions)
        self.obs_dim, self.n_actions = obs_dim, n_actions

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs
        for layer in self.hidden:
            x = torch.relu(layer(x))
        return self.out(x)


# Speed only, a first read can skip it: Q(obs, .) in numpy, the same numbers without torch's per-call cost.
def acting_q_values(q_network: QNetwork) -> Callable[[np.ndarray], np.ndarray]:
    """Q(obs, .) for the envs' observations, numpy in and out, on views of the parameters of a network in host
    memory (optimizer steps and load_state_dict write them in place, so it always uses the current weights).
    For one observation torch's fixed cost per call is several times the arithmetic."""
    layers = [(layer.weight.detach().numpy(), layer.bias.detach().numpy())
              for layer in (*q_network.hidden, q_network.out)]

    def q_values(obs: np.ndarray) -> np.ndarray:
        x = obs
        for weight, bias in layers[:-1]:
            x = np.maximum(x @ weight.T + bias, 0.0)
        weight, bias = layers[-1]
        return x @ weight.T + bias
    return q_values

# --- The algorithm's pure functions ---

def linear_schedule(start: float, end: float, duration: float, step: int) -> float:
    """start at step 0, end from step `duration` on, a straight line in between."""
    if step >= duration:
        return end
    return start + (end - start) * step / duration


def td_target(q_network: nn.Module, target_network: nn.Module, rewards: torch.Tensor, next_obs: torch.Tensor,
              terminated: torch.Tensor, gamma: float) -> torch.Tensor:
    """y = r + gamma * (1 - terminated) * Q_target(s', argmax_a' Q_online(s', a')).

    The online network picks the next action, the target network values it. Everything else in
    this file is dqn.py's; DQN's target, max_a' Q_target(s', a'), lets the target network do both.
    """
    best_next_actions = q_network(next_obs).argmax(1, keepdim=True)
    next_q = target_network(next_obs).gather(1, best_next_actions).squeeze(1)
    return rewards + gamma * (1.0 - terminated) * next_q


def td_loss(q_taken: torch.Tensor, target: torch.Tensor, kind: str, delta: float = 1.0) -> torch.Tensor:
    """Mean over the batch of d^2 ("mse") or of Huber(d) ("huber": d^2 / 2 for |d| <= delta,
    delta * (|d| - delta / 2) beyond, so the gradient never exceeds delta), d = Q(s, a) - y."""
    if kind == "huber":
        return F.huber_loss(q_taken, target, delta=delta)
    return F.mse_loss(q_taken, target)


def clip_grad_norm(parameters: Iterable[nn.Parameter], max_norm: float) -> None:
    """g <- g * min(1, max_norm / (||g|| + 1e-6)), ||g|| the norm of all the gradients as one vector. These are
    the operations of torch's clip_grad_norm_, so the same numbers, without its bookkeeping, which costs more
    than they do at this network size."""
    grads = [p.grad for p in parameters if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    torch._foreach_mul_(grads, torch.clamp(max_norm / (norm + 1e-6), max=1.0))


def boltzmann_probabilities(q_values: np.ndarray, temperature: float) -> np.ndarray:
    """P(a|s) = exp(Q(s, a) / T) / sum_b exp(Q(s, b) / T), row by row. Subtracting each row's max
    first changes nothing (it cancels in the ratio) but keeps exp() from overflowing at large Q / T."""
    z = (q_values - q_values.max(axis=1, keepdims=True)) / temperature
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def steps_crossed(every: int, step: int, previous_step: int) -> int:
    """How many multiples of `every` lie in (previous_step, step]: how many times a thing done
    "every `every` environment steps" is due when one vector step moves from previous_step to step."""
    return step // every - previous_step // every if every > 0 else 0


# --- The algorithm's steps ---

def select_actions(q_values: Callable[[np.ndarray], np.ndarray], n_actions: int, obs: np.ndarray, exploration: str,
                   epsilon: float, temperature: float, rng: np.random.Generator) -> np.ndarray:
    """One action per env, epsilon-greedy or Boltzmann with respect to q_values(obs) = Q(obs, .)."""
    num_envs = obs.shape[0]
    if exploration == "boltzmann":
        cdf = boltzmann_probabilities(q_values(obs), temperature).cumsum(axis=1)
        # Inverse-CDF sampling: the first action whose cumulative probability exceeds u ~ U(0, 1).
        u = rng.random((num_envs, 1))
        return np.minimum((cdf < u).sum(axis=1), n_actions - 1)
    explore = rng.random(num_envs) < epsilon
    if explore.all():  # while epsilon is high, most steps need no forward pass at all
        return rng.integers(0, n_actions, num_envs)
    actions = q_values(obs).argmax(axis=1)
    if explore.any():
        actions[explore] = rng.integers(0, n_actions, explore.sum())
    return actions


def gradient_step(q_network: QNetwork, target_network: QNetwork, optimizer: torch.optim.Optimizer,
                  batch: tuple[torch.Tensor, ...], args: Args) -> dict[str, torch.Tensor]:
    """One gradient step on the TD loss of a minibatch (s, a, r, s', terminated). Returns the loss
    and Q(s, a) by metrics.csv column, detached tensors: averaged once per row, no sync per step."""
    obs, actions, rewards, next_obs, terminated = batch
    with torch.no_grad():  # y is a label: no gradient flows through it, only Q(s, a) moves
        target = td_target(q_network, target_network, rewards, next_obs, terminated, args.gamma)  # y, above
    q = q_network(obs).gather(1, actions[:, None]).squeeze(1)  # Q(s, a; theta)
    loss = td_loss(q, target, args.loss, args.huber_delta)  # L = mean of (Q(s, a) - y)^2, or Huber
    q_network.zero_grad()  # the grads to None; the optimizer's zero_grad does the same at several times the cost
    loss.backward()  # dL/dtheta
    clip_grad_norm(q_network.parameters(), args.max_grad_norm)  # ||g|| <= max_grad_norm
    optimizer.step()  # theta <- Adam's update of theta with g
    return {"td_loss": loss.detach(), "q_taken": q.detach()}


@torch.no_grad()
def update_target(target_network: nn.Module, q_network: nn.Module, tau: float) -> None:
    """theta^- <- tau * theta + (1 - tau) * theta^-, in place; tau = 1 copies exactly."""
    for target_param, param in zip(target_network.parameters(), q_network.parameters()):
        target_param.copy_(param) if tau == 1.0 else target_param.lerp_(param, tau)


def train(args: Args) -> dict:
    """Trains, evaluates and saves; returns a summary (also written to runs/<run-name>/summary.json)."""
    check_args(args)

    # Seeding: python, numpy, torch; env i gets seed + i at its first reset. rng (exploration, minibatches) is saved.
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    torch.set_flush_denormal(args.flush_denormal)  # first: the threads torch starts later inherit the setting
    torch.set_num_threads(args.torch_threads)
    device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")

    envs = make_vector_env(args)
    obs_dim = envs.single_observation_space.shape[0]
    n_actions = int(envs.single_action_space.n)

    q_network = QNetwork(obs_dim, n_actions, args.hidden_sizes).to(device)
    target_network = QNetwork(obs_dim, n_actions, args.hidden_sizes).to(device)
    target_network.load_state_dict(q_network.state_dict())
    # fused: Adam's update of each tensor in one pass instead of several small ops on it.
    optimizer = torch.optim.Adam(q_network.parameters(), lr=args.learning_rate, fused=True)
    rb = ReplayBuffer(args.buffer_size, obs_dim, device)
    # What model.pt holds, and what a checkpoint adds to go on training: listed once, to save and to resume.
    model = {"obs_dim": obs_dim, "n_actions": n_actions, "q_network": q_network}
    run = Run(args, device, model, {"target_network": target_network, "optimizer": optimizer, "buffer": rb}, rng)
    global_step, num_updates = run.start_step, run.start_updates

    acting_network = host_copy(q_network, device)  # q_network itself on the CPU, a copy in host memory on a GPU
    q_values = acting_q_values(acting_network)
    obs, _ = envs.reset(seed=args.seed + global_step)  # a resumed run starts fresh episodes: env state is not saved
    exploration_steps = args.exploration_fraction * args.total_timesteps

    gc.freeze()  # speed: the garbage collector's full passes skip every object made so far (torch's among them)
    evaluation = None  # the last evaluation, for run.finish (which makes it itself for a run resumed at its end)
    while global_step < args.total_timesteps:
        # --- Act and store ---
        epsilon = linear_schedule(args.start_e, args.end_e, exploration_steps, global_step)
        temperature = linear_schedule(args.start_temperature, args.end_temperature, exploration_steps, global_step)
        actions = select_actions(q_values, n_actions, obs, args.exploration, epsilon, temperature, rng)
        next_obs, rewards, terminations, truncations, infos = envs.step(actions)
        rb.add(obs, actions, next_obs, rewards, terminations, truncations, infos)
        obs = next_obs
        previous_step, global_step = global_step, global_step + args.num_envs
        run.record_episodes(infos)

        # --- Learn ---
        if rb.size >= args.learning_starts:
            if steps_crossed(args.target_network_frequency, global_step, previous_step):
                update_target(target_network, q_network, args.tau)
            rounds = steps_crossed(args.train_frequency, global_step, previous_step)
            if rounds and args.anneal_lr:
                optimizer.param_groups[0]["lr"] = args.learning_rate * (1.0 - previous_step / args.total_timesteps)
            for batch in rb.sample(args.batch_size, rounds * args.gradient_steps, rng):
                run.record(gradient_step(q_network, target_network, optimizer, batch, args))
                num_updates += 1
            if rounds:
                refresh_host_copy(acting_network, q_network)  # acting goes on with the new weights

        # --- Evaluate, log, checkpoint ---
        if global_step >= args.total_timesteps:  # first the final checkpoint and model.pt: nothing can lose them
            run.save_final(global_step, num_updates)
        evaluation = None
        if args.eval_episodes > 0 and run.due(args.eval_frequency, global_step, previous_step):
            evaluation = evaluate(q_network, args.env_id, args.env_kwargs, args.eval_episodes,
                                  eval_seed(args.seed), args.gamma, device, run.video_dir(global_step))
        if evaluation is not None or run.due(args.metrics_every, global_step, previous_step):
            run.log({"global_step": global_step, "gradient_steps": num_updates,
                     "epsilon": epsilon if args.exploration == "epsilon-greedy" else "",
                     "temperature": temperature if args.exploration == "boltzmann" else ""}, evaluation)
        if run.due(args.checkpoint_every, global_step, previous_step, last=False):  # the last: save_final
            run.save_checkpoint(global_step, num_updates)
        run.progress(global_step, f"epsilon {epsilon:.3f}" if args.exploration == "epsilon-greedy"
                     else f"T {temperature:.3f}")
    envs.close()
    return run.finish(global_step, evaluation)


# =============================================================================================
# Part 2: running it
# =============================================================================================
# Checks, files, evaluation, the command line. `# <shared NAME>` blocks: tools/shared/NAME.py (tools/sync.py)


FLAG_RANGES = {  # what check_flags holds each flag to
    "positive": ("total_timesteps", "num_envs", "buffer_size", "batch_size", "train_frequency", "gradient_steps",
                 "target_network_frequency", "torch_threads", "metrics_every", "learning_rate", "max_grad_norm",
                 "log_interval", "start_temperature", "end_temperature", "huber_delta"),
    "0 or more": ("eval_episodes", "eval_frequency", "checkpoint_every", "learning_starts"),
    "in (0, 1]": ("gamma", "tau"), "in [0, 1]": ("start_e", "end_e", "exploration_fraction"),
}


def action_space_error(space: gym.Space) -> str | None:
    if not isinstance(space, gym.spaces.Discrete) or space.start != 0:
        return (f"has a {type(space).__name__} action space; {ALGORITHM}.py needs a Discrete one (actions 0..n-1); "
                "for continuous actions use ddpg.py or naf.py")
    return None


METRICS = ["global_step", "time", "sps", "gradient_steps", "td_loss", "q_taken", "epsilon", "temperature",
           "episodic_return", "episodic_length", "episodes", "eval_return", "eval_discounted_return", "eval_start_q"]


def evaluate(q_network: QNetwork, env_id: str, env_kwargs: dict, episodes: int, seed: int, gamma: float,
             device: torch.device, video_dir: Path | None = None) -> tuple[list[float], list[float], list[float]]:
    """Greedy episodes (argmax_a Q(s, a)). Per episode: the return, the discounted return sum_t gamma^t r_t
    earned, and max_a Q(s_0, a), its prediction at the first state; a prediction persistently above what is
    earned is overestimation (on CartPole-v1 the time limit alone makes a perfect policy earn 99.3, not 100)."""
    env = evaluation_env(env_id, env_kwargs, video_dir)
    q_network = host_copy(q_network, device)  # one observation at a time: on the host, like acting in training
    returns, discounted_returns, start_q = [], [], []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        done, total, discounted, discount, t = False, 0.0, 0.0, 1.0, 0
        while not done:
            with torch.inference_mode():
                q = q_network(torch.from_numpy(np.asarray(obs, np.float32)[None]))[0]
            if t == 0:
                start_q.append(float(q.max()))
            obs, reward, terminated, truncated, _ = env.step(int(q.argmax()))
            total += float(reward)
            discounted += discount * float(reward)
            discount *= gamma
            done, t = terminated or truncated, t + 1
        returns.append(total)
        discounted_returns.append(discounted)
    env.close()
    return returns, discounted_returns, start_q


def load_model(path: str, device: torch.device) -> tuple[QNetwork, dict]:
    """model.pt or checkpoint.pt, read onto the CPU (from any machine), its networks then on `device`."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("algorithm") != ALGORITHM:
        raise UsageError(f"{path} is not a {ALGORITHM}.py model (algorithm: {state.get('algorithm')})")
    q_network = QNetwork(state["obs_dim"], state["n_actions"], state["args"]["hidden_sizes"])
    q_network.load_state_dict(state["q_network"])
    return q_network.to(device), state


# <shared offpolicy_run>
def check_args(args) -> None:
    check_flags(args, FLAG_RANGES)
    if not args.hidden_sizes or min(args.hidden_sizes) <= 0:
        raise UsageError(f"--hidden-sizes needs one or more positive layer sizes, got {args.hidden_sizes}")
    if args.learning_starts > args.buffer_size:
        raise UsageError(f"--learning-starts {args.learning_starts} is more than --buffer-size {args.buffer_size}: "
                         "the buffer could never hold enough transitions to start training")
    if args.total_timesteps <= args.learning_starts:
        raise UsageError(f"--total-timesteps {args.total_timesteps} is not more than --learning-starts "
                         f"{args.learning_starts}: training would never start")
    space, action_space = check_env(args.env_id, args.env_kwargs)
    # The buffer's float32 rows (s, a, r, s', terminated), allocated at once: more than the machine has is refused
    # here, where allocating it would fail with a traceback or be killed by the system once it fills.
    need = 4 * args.buffer_size * (2 * space.shape[0] + (action_space.shape or (1,))[0] + 2)
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else need
    if need > have:
        raise UsageError(f"--buffer-size {args.buffer_size} needs {need / 2**30:.1f} GiB for the replay buffer on "
                         f"{args.env_id}, more than this machine's {have / 2**30:.1f} GiB of memory; lower "
                         "--buffer-size")


class Run:
    """The files and console of one run, so that train() reads as the algorithm (docs/running.md). Saving and
    resuming go by train()'s lists: what model.pt holds (`model`) and what a checkpoint adds (`training`)."""

    def __init__(self, args, device: torch.device, model: dict, training: dict, rng: np.random.Generator):
        self.args, self.device, self.model, self.training, self.rng = args, device, model, training, rng
        self.start_step, self.start_updates, self.checkpoint_step, self.final_saved = 0, 0, None, False
        self.time_before, self.clock_step = 0.0, 0  # wall time before a resume; the step the clock starts at
        if args.resume:
            self.resume(args.resume)
        self.dir, self.metrics = open_run(args, self.start_step if args.resume else None)
        if device.type == "cuda":
            acting = next(name for name, obj in self.model.items() if isinstance(obj, nn.Module))
            print(f"device cuda: acting on a CPU copy of the {acting} (refreshed after each update); "
                  "updates and the replay buffer on the GPU")
        self.values: dict[str, list[torch.Tensor]] = {}  # per gradient step, averaged per row: no sync per step
        self.episode_returns, self.episode_lengths, self.recent_returns = [], [], deque(maxlen=20)
        self.start_time = self.last_print = time.time()

    def state(self, objects: dict) -> dict:  # the env's spaces as they are, the buffer unless --no-save-buffer
        return {name: None if isinstance(obj, ReplayBuffer) and not self.args.save_buffer else obj.state_dict()
                if hasattr(obj, "state_dict") else obj for name, obj in objects.items()}

    def model_state(self, step: int) -> dict:
        return {"algorithm": ALGORITHM, "args": asdict(self.args), **self.state(self.model), "global_step": step}

    def save_checkpoint(self, step: int, num_updates: int) -> None:
        if what := self.non_finite_weight():  # never replace the last finite checkpoint with a diverged one
            raise self.diverged(step, what)
        atomic_save(self.model_state(step) | self.state(self.training) | {
            "num_updates": num_updates, "numpy_rng": json.dumps(self.rng.bit_generator.state),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,  # a CPU run: no CUDA
            "elapsed": self.elapsed()}, self.dir / "checkpoint.pt")
        self.checkpoint_step = step

    def save_final(self, step: int, num_updates: int) -> None:
        """Before the final evaluation (which may fail): the final checkpoint (with --checkpoint-every), model.pt."""
        if what := self.non_finite_weight():  # first the last row, the diagnosis
            self.log({"global_step": step, "gradient_steps": num_updates}, None)
            raise self.diverged(step, what)
        if self.args.checkpoint_every > 0:
            self.save_checkpoint(step, num_updates)
        if self.args.save_model:
            atomic_save(self.model_state(step), path := self.dir / "model.pt")
            print(f"model saved to {path}; evaluate it with: python {ALGORITHM}.py --evaluate {path}")
        self.final_saved = True

    def resume(self, path: str) -> None:
        """Everything in a checkpoint back in place, once it fits and would overwrite no finished run."""
        ckpt = torch.load(path, map_location="cpu", weights_only=True)  # load_state_dict moves it to the device
        if ckpt.get("algorithm") != ALGORITHM or "torch_rng" not in ckpt:  # model.pt holds no training state
            raise UsageError(f"{path} is not a checkpoint.pt of {ALGORITHM}.py; resume from that run's checkpoint.pt")
        self.start_step, self.start_updates = ckpt["global_step"], ckpt["num_updates"]
        check_resumable(path, self.start_step, self.start_step >= self.args.total_timesteps, self.args)
        changed = [f"--{k.replace('_', '-')}" for k in ("env_id", "hidden_sizes")
                   if ckpt["args"][k] != getattr(self.args, k)]
        fix = f"resume with the flags it was trained with (drop {' and '.join(changed) or '--env-id/--hidden-sizes'})"
        for name, obj in (self.model | self.training).items():
            try:
                if hasattr(obj, "load_state_dict") and ckpt[name] is not None:  # None: --no-save-buffer
                    obj.load_state_dict(ckpt[name])
                elif not hasattr(obj, "load_state_dict") and ckpt[name] != obj:  # the env's spaces
                    raise ValueError(f"{name} is {ckpt[name]} there, {obj} here")
            except (RuntimeError, ValueError) as e:  # torch's size mismatch, in one line
                raise UsageError(f"{path} does not fit these networks: {str(e).strip().splitlines()[-1].strip()}; "
                                 f"{fix}") from None
        self.rng.bit_generator.state = json.loads(ckpt["numpy_rng"])
        set_torch_rng(ckpt, self.device)
        self.checkpoint_step, self.time_before = self.start_step, ckpt.get("elapsed", 0.0)
        self.clock_step = 0 if "elapsed" in ckpt else self.start_step  # older files had no clock
        print(f"resumed from {path} at step {self.start_step} with {self.training['buffer'].size} transitions "
              "in the buffer")

    def diverged(self, step: int, what: str) -> "Diverged":
        """The error that stops a run; no model.pt or summary.json of it is left to look like a result."""
        kept = (f"{self.dir}/checkpoint.pt (step {self.checkpoint_step}) holds the last finite weights"
                if self.checkpoint_step is not None else "no checkpoint was written")
        if self.final_saved and self.args.save_model:
            (self.dir / "model.pt").unlink(missing_ok=True)
        self.metrics.close()
        rows = self.training["buffer"].rows[: self.training["buffer"].size]
        first_bad = rows[~rows.isfinite().all(1)][:1]  # a transition with a number that is not finite
        if len(first_bad) and first_bad[0, self.training["buffer"].places["actions"]].isfinite().all():
            return Diverged(f"{self.args.env_id} returned observations or rewards that are not finite for a finite "
                            f"action (a transition in the replay buffer; at step {step} {what}); check the env; {kept}")
        if what.split()[0].endswith("return") and self.non_finite_weight() is None:  # finite weights: the rewards
            return Diverged(f"{self.args.env_id} returned rewards that are not finite (at step {step} {what}); "
                            f"check the env; {kept}")
        noise = " or check --exploration-noise" if hasattr(self.args, "exploration_noise") else ""
        return Diverged(f"training diverged at step {step}: {what}; {kept}; try a lower --learning-rate{noise}")

    def non_finite_weight(self) -> str | None:
        return next((f"{name}.{key} is not finite" for name, obj in self.model.items() if isinstance(obj, nn.Module)
                     for key, t in obj.state_dict().items() if t.is_floating_point() and not t.isfinite().all()), None)

    def record_episodes(self, infos: dict) -> None:  # those that ended in this step (RecordEpisodeStatistics)
        if "episode" in infos:
            self.episode_returns.extend(infos["episode"]["r"][infos["_episode"]].tolist())
            self.episode_lengths.extend(infos["episode"]["l"][infos["_episode"]].tolist())

    def record(self, values: dict[str, torch.Tensor]) -> None:  # one gradient step's, by metrics.csv column
        for name, value in values.items():
            self.values.setdefault(name, []).append(value)

    def due(self, every: int, step: int, previous_step: int, last: bool = True) -> bool:
        """A multiple of `every` (0: never) in (previous_step, step]; at the last step, `last`."""
        return last if step >= self.args.total_timesteps else every > 0 and step // every > previous_step // every

    def video_dir(self, step: int) -> Path | None:  # the final evaluation's, with --capture-video
        return self.dir / "videos" if self.args.capture_video and step >= self.args.total_timesteps else None

    def elapsed(self) -> float:  # the whole run's wall time: this process's and its checkpoint's
        return self.time_before + time.time() - self.start_time

    def sps(self, step: int, elapsed: float) -> float:  # steps per second of wall time, evaluations included
        return (step - self.clock_step) / max(elapsed, 1e-9)

    def log(self, row: dict, evaluation: tuple[list[float], list[float], list[float]] | None) -> None:
        """A metrics row: the caller's values, recorded ones averaged, episodes ended since, the evaluation. A value
        that is not finite stops the run after its row (the diagnosis) is written."""
        elapsed = self.elapsed()
        self.recent_returns.extend(self.episode_returns)
        row = row | {"time": round(elapsed, 2), "sps": round(self.sps(row["global_step"], elapsed))}
        row |= {name: torch.cat([v.reshape(-1) for v in values]).mean().item() for name, values in self.values.items()}
        row |= {"episodic_return": np.mean(self.episode_returns) if self.episode_returns else "",
                "episodic_length": np.mean(self.episode_lengths) if self.episode_lengths else "",
                "episodes": len(self.episode_returns)}  # after the losses: the first non-finite one is named
        if evaluation is not None:
            returns, discounted, start_q = (np.mean(x) for x in evaluation)
            row |= {"eval_return": returns, "eval_discounted_return": discounted, "eval_start_q": start_q}
            print(f"eval at step {row['global_step']}: return {returns:.1f} | Q(first state) {start_q:.2f} vs "
                  f"discounted return earned {discounted:.2f}", flush=True)
        self.metrics.write(row)
        self.values, self.episode_returns, self.episode_lengths = {}, [], []
        for column, value in row.items():
            if value != "" and not np.isfinite(value):
                raise self.diverged(row["global_step"], f"{column} is {value}")

    def progress(self, step: int, exploring: str) -> None:
        if time.time() - self.last_print < self.args.log_interval and step < self.args.total_timesteps:
            return
        self.last_print, elapsed = time.time(), self.elapsed()
        sps = self.sps(step, elapsed)
        recent = f"{np.mean(self.recent_returns):.1f}" if self.recent_returns else "n/a"
        print(f"step {step:>9}/{self.args.total_timesteps} | {sps:5.0f} SPS | return {recent} (last "
              f"{len(self.recent_returns)} episodes) | {exploring} | {elapsed:5.0f}s elapsed, "
              f"~{(self.args.total_timesteps - step) / max(sps, 1e-9):.0f}s left", flush=True)

    def finish(self, step: int, evaluation: tuple[list[float], list[float], list[float]] | None) -> dict:
        if step == self.start_step:  # resumed at its end, stopped in its final evaluation: what was left of it
            self.save_final(step, self.start_updates)
            if self.args.eval_episodes:
                networks = [obj for obj in self.model.values() if isinstance(obj, nn.Module)]
                evaluation = evaluate(*networks, self.args.env_id, self.args.env_kwargs, self.args.eval_episodes,
                                      eval_seed(self.args.seed), self.args.gamma, self.device, self.video_dir(step))
                self.log({"global_step": step, "gradient_steps": self.start_updates}, evaluation)
        wall_time = self.elapsed()
        summary = {"algorithm": ALGORITHM, "env_id": self.args.env_id, "seed": self.args.seed, "global_step": step,
                   "wall_time": round(wall_time, 1), "sps": round(self.sps(step, wall_time)),
                   "train_return_recent": float(np.mean(self.recent_returns)) if self.recent_returns else None}
        if evaluation is not None:
            summary |= report_eval(*evaluation)
        atomic_save(json.dumps(summary, indent=2), self.dir / "summary.json")
        self.metrics.close()
        return summary


def report_eval(returns: list[float], discounted: list[float], start_q: list[float]) -> dict:  # summary.json's entries
    print(f"eval: {np.mean(returns):.1f} ± {np.std(returns):.1f} over {len(returns)} episodes (greedy)")
    print(f"      Q(first state) predicted {np.mean(start_q):.2f}, discounted return earned "
          f"{np.mean(discounted):.2f}: overestimation {np.mean(start_q) - np.mean(discounted):+.2f}")
    return {"eval_mean": float(np.mean(returns)), "eval_std": float(np.std(returns)), "eval_returns": returns,
            "eval_discounted_returns": discounted, "eval_start_q": start_q}


def run_evaluation(args) -> dict:
    torch.set_num_threads(args.torch_threads)
    device = torch.device("cpu")  # evaluation acts one observation at a time, on the host in any case
    *networks, state = load_model(args.evaluate, device)
    check_model_fits(args.evaluate, state, args)
    video_dir = Path(args.evaluate).parent / "videos" if args.capture_video else None
    evaluation = evaluate(*networks, args.env_id, args.env_kwargs, args.eval_episodes, eval_seed(args.seed), args.gamma,
                          device, video_dir)
    print(f"{args.env_id}, model {args.evaluate} (trained {state['global_step']} steps)")
    if video_dir is not None and video_dir.is_dir():  # not when video was skipped
        print(f"videos in {video_dir}")
    return report_eval(*evaluation)
# </shared offpolicy_run>


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
