"""Small environments for the tests, registered on import (`--env-id toy_envs:ToyMultiDiscrete-v0`
makes gymnasium import this module when tests/ is on PYTHONPATH)."""

import gymnasium as gym
import numpy as np


class Counter(gym.Env):
    """The observation is the number of steps taken; reward 1 per step; it never terminates, so
    every episode ends by truncation (the registered time limit)."""

    def __init__(self, action_space: gym.Space, render_mode=None):
        self.observation_space = gym.spaces.Box(0.0, 1e3, (1,), np.float32)
        self.action_space = action_space
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        return np.array([self.t], np.float32), 1.0, False, False, {}


class TwoChoices(gym.Env):
    """MultiDiscrete([3, 4]) actions. The observation one-hot encodes a target per dimension; each
    dimension that matches its target earns 1. Missing both terminates the episode."""

    def __init__(self, render_mode=None):
        self.observation_space = gym.spaces.Box(0.0, 1.0, (7,), np.float32)
        self.action_space = gym.spaces.MultiDiscrete([3, 4])

    def _observe(self):
        self.target = self.np_random.integers([0, 0], [3, 4])
        obs = np.zeros(7, np.float32)
        obs[self.target[0]] = 1.0
        obs[3 + self.target[1]] = 1.0
        return obs

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self._observe(), {}

    def step(self, action):
        hits = (np.asarray(action) == self.target).astype(np.float32)
        return self._observe(), float(hits.sum()), bool(hits.sum() == 0), False, {}


gym.register("ToyCounterBox-v0", entry_point=lambda **kw: Counter(gym.spaces.Box(-1.0, 1.0, (1,), np.float32), **kw),
             max_episode_steps=5)
gym.register("ToyCounterDiscrete-v0", entry_point=lambda **kw: Counter(gym.spaces.Discrete(2), **kw), max_episode_steps=5)
gym.register("ToyMultiDiscrete-v0", entry_point=TwoChoices, max_episode_steps=20)


class Walk(gym.Env):
    """Box(-1, 1, (1,)) actions on a line of positions 0..4: a positive action steps right, any other
    left; reaching 4 earns 1 and terminates. The position is a Discrete(5) observation, or with
    dict_obs a Dict of it and the last action. No rgb_array rendering."""

    def __init__(self, dict_obs=False, render_mode=None):
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        position = gym.spaces.Discrete(5)
        last_action = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.observation_space = gym.spaces.Dict(position=position, last_action=last_action) if dict_obs else position
        self.dict_obs, self.position = dict_obs, 2

    def _observe(self, action):
        if self.dict_obs:
            return {"position": self.position, "last_action": np.array([action], np.float32)}
        return self.position

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.position = 2
        return self._observe(0.0), {}

    def step(self, action):
        a = float(np.asarray(action).reshape(-1)[0])
        self.position = min(max(self.position + (1 if a > 0 else -1), 0), 4)
        return self._observe(a), float(self.position == 4), self.position == 4, False, {}


gym.register("ToyWalkDiscrete-v0", entry_point=Walk, max_episode_steps=10)
gym.register("ToyWalkDict-v0", entry_point=lambda **kw: Walk(dict_obs=True, **kw), max_episode_steps=10)


class Float64Obs(gym.Env):
    """Box float64 observations, as custom envs often give, and Discrete(2) actions: the observation
    is (x, -x) with x uniform in [-1, 1]; action 1 earns 1 when x > 0, action 0 when it is not."""

    def __init__(self, render_mode=None):
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float64)
        self.action_space = gym.spaces.Discrete(2)

    def _observe(self):
        self.x = self.np_random.uniform(-1.0, 1.0)
        return np.array([self.x, -self.x])

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self._observe(), {}

    def step(self, action):
        reward = float(int(action) == int(self.x > 0))
        return self._observe(), reward, False, False, {}


gym.register("ToyFloat64-v0", entry_point=Float64Obs, max_episode_steps=10)


# Envs that misbehave, for the error paths.
gym.register("ToyEndlessBox-v0", entry_point=lambda **kw: Counter(gym.spaces.Box(-1.0, 1.0, (1,), np.float32), **kw))
gym.register("ToyEndlessDiscrete-v0", entry_point=lambda **kw: Counter(gym.spaces.Discrete(2), **kw))
gym.register("ToyBox2x2-v0", entry_point=lambda **kw: Counter(gym.spaces.Box(-1.0, 1.0, (2, 2), np.float32), **kw),
             max_episode_steps=5)


class Broken(Counter):
    """A Counter whose step() breaks the env contract in the way `fault` names: it raises, returns an
    observation of another shape than its space's, or one that is not a number; or, from the fourth
    step on, a reward or an observation that is not finite."""

    def __init__(self, action_space: gym.Space, fault: str, render_mode=None):
        super().__init__(action_space)
        self.fault = fault

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        if self.fault == "raise":
            raise ValueError("the simulator crashed")
        obs = {"shape": np.zeros(3, np.float32), "dtype": np.array(["x"]),
               "nan_obs": obs * (np.nan if self.t >= 4 else 1.0)}.get(self.fault, obs)
        return obs, np.nan if self.fault == "nan_reward" and self.t >= 4 else reward, terminated, truncated, info


gym.register("ToyBrokenBox-v0", entry_point=lambda fault, **kw: Broken(gym.spaces.Box(-1.0, 1.0, (1,), np.float32),
                                                                       fault, **kw), max_episode_steps=5)
gym.register("ToyBrokenDiscrete-v0", entry_point=lambda fault, **kw: Broken(gym.spaces.Discrete(2), fault, **kw),
             max_episode_steps=5)
