"""Tune an algorithm script's flags with Optuna: trials of separate runs, pruned early, kept in a database.

    pip install -r requirements-cluster.txt   # Optuna (and Ray); training never needs them
    python tune.py --script a2c.py --env-ids Pendulum-v1 --trials 30 --seeds 1 2 -- --total-timesteps 300000
    python tune.py --script ppo_discrete.py --env-ids CartPole-v1 Acrobot-v1 --trials 50 --fix gamma=0.99 \\
        --narrow learning-rate=1e-4:1e-3 num-steps=128,256 -- --total-timesteps 200000

A trial is one set of flags drawn from the script's search space (SPACES below). It runs the script once
per seed and env, one after the other, each as its own process through benchmark.py's runner, so each run
keeps its directory runs/<env>__<script>__<seed>__<study>-<storage>-t<trial>/ (<storage>: six hex digits
naming --storage, so that studies of one name in two storages keep their runs apart). The trial's value is
the mean over its runs of the final deterministic evaluation (eval_mean of summary.json); with more than one
env each evaluation is first normalised to (eval - floor) / (target - floor) by the env's SCORE_RANGES, so
that envs with returns of different scales weigh the same. After each run the trial reports its mean so far,
and Optuna's median pruner stops it there when that is worse than the median of earlier trials at the same
point: a bad trial costs one run, not all of them. The runs are ordered seed by seed, each seed's envs
together.

Flags after `--` go to every run (the budget, --total-timesteps, belongs there) and leave the search space:
a parameter they set is not tuned. `--fix NAME=VALUE` does the same from the space's side; `--narrow
NAME=LOW:HIGH` narrows a range, `--narrow NAME=A,B,C` keeps some of a parameter's choices. Names are the
script's flags without the dashes (learning-rate).

The study lives in --storage (SQLite under runs/ by default). Run the same command again and an interrupted
study continues until it has --trials finished (complete or pruned) trials; a trial cut off by the
interruption counts as failed and is not resumed. Every tune.py process given the same --storage and
--study-name joins the same study, on this machine or others: Optuna hands each a different trial. For
processes on several machines, a database server (PostgreSQL or MySQL) is the storage that suits; SQLite
over a network filesystem is not safe. With --ray-address one process sends the runs to a Ray cluster
instead, and the local SQLite file is enough.

While trials run, a progress block shows the trials finished, pruned, failed and running, the best so far,
the time left, and each running run's step. At the end: a table of the best trials, the best flags as a
command line, and <out>/optimization_history.png and <out>/param_importances.png.

Exit code: 0; 1 if no trial completed; 2 for bad input; 130 when interrupted (Ctrl-C), 143 when stopped by
SIGTERM, which stops the runs and fails the trials cut off as Ctrl-C does.
"""

import hashlib
import json
import math
import os
import re
import shutil
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import tyro

import benchmark
from benchmark import Entry, Run, UsageError, duration, plan, read_progress, script_path


# ----------------------------------------------------------------------------------------------
# The search spaces: one per script, parameter names as the script's flags (without the dashes).
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Float:
    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class Int:
    low: int
    high: int
    log: bool = False


@dataclass(frozen=True)
class Choice:
    choices: tuple
    """numbers, strings (a string with spaces is several values: "64 64" is --hidden-sizes 64 64), or
    True/False for an on/off flag (--norm-adv / --no-norm-adv)"""


Param = Float | Int | Choice
ON_OFF = Choice((False, True))
GAMMA = Choice((0.9, 0.95, 0.98, 0.99, 0.995, 0.999))
LAMBDA = Choice((0.8, 0.9, 0.92, 0.95, 0.98, 0.99, 1.0))
GRAD_NORM = Choice((0.3, 0.5, 1.0, 2.0, 5.0))

PPO = {
    "learning-rate": Float(1e-5, 3e-3, log=True),
    "gamma": GAMMA,
    "gae-lambda": LAMBDA,
    "ent-coef": Float(1e-8, 0.1, log=True),
    "clip-coef": Choice((0.1, 0.2, 0.3, 0.4)),
    "vf-coef": Float(0.2, 1.0),
    "max-grad-norm": GRAD_NORM,
    "num-envs": Choice((1, 2, 4, 8, 16)),
    "num-steps": Choice((64, 128, 256, 512, 1024, 2048)),  # with num-envs, a batch of 64 to 32,768
    "num-minibatches": Choice((4, 8, 16, 32)),  # divides every batch above
    "update-epochs": Choice((3, 5, 10, 20)),
    "norm-adv": ON_OFF,
}
DQN = {
    "learning-rate": Float(1e-5, 1e-2, log=True),
    "gamma": GAMMA,
    "batch-size": Choice((32, 64, 128, 256)),
    "buffer-size": Choice((10_000, 50_000, 100_000, 1_000_000)),
    "learning-starts": Choice((1000, 5000, 10_000)),
    "train-frequency": Choice((1, 4, 16, 64, 256)),
    "gradient-steps": Choice((1, 4, 16, 64, 128)),
    "target-network-frequency": Choice((256, 768, 1000, 5000, 10_000)),
    "exploration-fraction": Float(0.05, 0.5),
    "end-e": Float(0.01, 0.2),
    "hidden-sizes": Choice(("64 64", "120 84", "256 256")),
}
DDPG = {
    "learning-rate": Float(1e-5, 3e-3, log=True),
    "gamma": Choice((0.95, 0.98, 0.99, 0.995)),
    "tau": Choice((0.001, 0.005, 0.01, 0.02)),
    "batch-size": Choice((64, 128, 256, 512)),
    "learning-starts": Choice((1000, 5000, 10_000)),
    "exploration-noise": Float(0.05, 0.5),
    "hidden-sizes": Choice(("64 64", "256 256", "400 300")),
}
SPACES: dict[str, dict[str, Param]] = {
    "ppo_continuous.py": PPO,
    "ppo_discrete.py": PPO,
    "a2c.py": {
        "learning-rate": Float(1e-5, 1e-2, log=True),
        "optimizer": Choice(("rmsprop", "adam")),
        "gamma": GAMMA,
        "gae-lambda": LAMBDA,
        "ent-coef": Float(1e-8, 0.1, log=True),
        "vf-coef": Float(0.1, 1.0),
        "max-grad-norm": GRAD_NORM,
        "num-envs": Choice((4, 8, 16)),
        "num-steps": Choice((5, 8, 16, 32)),
        "norm-adv": ON_OFF,
    },
    "dqn.py": DQN,
    "ddqn.py": DQN,
    "ddpg.py": {**DDPG, "policy-frequency": Choice((1, 2))},
    "naf.py": DDPG,
}

# (floor, target) per env for the normalised score of a study over several envs: the floor near a random
# policy's evaluation, the target near a good one (docs/results.md). --score-range overrides them.
SCORE_RANGES: dict[str, tuple[float, float]] = {
    "CartPole-v1": (0.0, 500.0),
    "Acrobot-v1": (-500.0, -80.0),
    "LunarLander-v3": (-250.0, 250.0),
    "Pendulum-v1": (-1400.0, -140.0),
    "HalfCheetah-v5": (-300.0, 5000.0),
    "InvertedPendulum-v5": (0.0, 1000.0),
}


def flags_of(params: dict) -> list[str]:
    """A trial's parameters as the script's flags."""
    flags = []
    for name, value in params.items():
        if isinstance(value, bool):
            flags.append(f"--{name}" if value else f"--no-{name}")
        else:
            flags += [f"--{name}", *str(value).split()]
    return flags


def parse_value(text: str, like):
    """A command-line value of the type of `like` (a choice or bound of the parameter)."""
    if isinstance(like, bool):
        if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"{text!r} is not true or false")
        return text.lower() in ("true", "1", "yes")
    return type(like)(text)


def flag_name(argument: str) -> str | None:
    """The flag an argument after `--` gives, in the space's spelling, whichever spelling the scripts accept:
    "--eval_episodes=0" is eval-episodes. None for a value."""
    return argument[2:].partition("=")[0].replace("_", "-") if argument.startswith("--") else None


def flag_value(extra: list[str], name: str) -> str | None:
    """The value the flags after `--` give `name` (the last one, as the scripts read them), in either form:
    --name VALUE or --name=VALUE."""
    value = None
    for i, argument in enumerate(extra):
        if flag_name(argument) == name:
            value = argument.partition("=")[2] if "=" in argument else (extra[i + 1:] or [None])[0]
    return value


def shape_space(script: str, fix: list[str], narrow: list[str], extra: list[str]) -> tuple[dict[str, Param], dict]:
    """The script's space less what --fix and the flags after `--` set, narrowed by --narrow; and the fixed values."""
    if script not in SPACES:
        raise UsageError(f"tune.py has no search space for {script}; it has one for {', '.join(SPACES)}")
    space, fixed = dict(SPACES[script]), {}

    def split(item: str, option: str) -> tuple[str, str]:
        name, sep, value = item.partition("=")
        name = name.strip().lstrip("-").replace("_", "-")
        if not sep or not value:
            raise UsageError(f"{option} {item}: give NAME=VALUE")
        if name not in SPACES[script]:
            raise UsageError(f"{option} {item}: {script}'s search space has no parameter {name!r}; "
                             f"it has {', '.join(SPACES[script])}")
        return name, value

    for item in fix:
        name, value = split(item, "--fix")
        param = space.pop(name, None) or SPACES[script][name]
        try:
            like = param.choices[0] if isinstance(param, Choice) else param.low
            fixed[name] = value if isinstance(like, str) else parse_value(value, like)
        except ValueError as e:
            raise UsageError(f"--fix {item}: {e}")
    for item in narrow:
        name, value = split(item, "--narrow")
        param = space.get(name)
        if param is None:
            raise UsageError(f"--narrow {item}: {name} is fixed")
        try:
            if isinstance(param, Choice):
                wanted = [v.strip() for v in value.split(",")]
                kept = tuple(c for c in param.choices if str(c) in wanted or str(c).lower() in wanted)
                unknown = [v for v in wanted if v not in {str(c) for c in param.choices} | {str(c).lower() for c in kept}]
                if unknown or not kept:
                    raise ValueError(f"not among {name}'s choices {', '.join(map(str, param.choices))}")
                space[name] = Choice(kept)
            else:
                low, sep, high = value.partition(":")
                if not sep:
                    raise ValueError(f"{name} is a range: give LOW:HIGH")
                low, high = float(low), float(high)
                # Checked here, before the study is touched: a bound Optuna cannot draw from (inf, nan) used to
                # raise inside the first trial, a traceback that left the trial RUNNING in the study.
                if not (param.low <= low < high <= param.high):
                    raise ValueError(f"give LOW < HIGH within {name}'s range {param.low:g}:{param.high:g}")
                if isinstance(param, Int) and not (low.is_integer() and high.is_integer()):
                    raise ValueError(f"{name} is a whole number: give whole bounds")
                space[name] = replace(param, low=type(param.low)(low), high=type(param.low)(high))
        except ValueError as e:
            raise UsageError(f"--narrow {item}: {e}")
    # A flag after `--` sets its parameter for every run: it is not tuned.
    given = {flag_name(a).removeprefix("no-") for a in extra if flag_name(a)}
    for name in list(space):
        if name in given:
            del space[name]
    return space, fixed


def suggest(trial, space: dict[str, Param]) -> dict:
    params = {}
    for name, param in space.items():
        if isinstance(param, Float):  # 3 significant digits: the flags printed are the flags that ran
            params[name] = float(f"{trial.suggest_float(name, param.low, param.high, log=param.log):.3g}")
        elif isinstance(param, Int):
            params[name] = trial.suggest_int(name, param.low, param.high, log=param.log)
        else:
            params[name] = trial.suggest_categorical(name, param.choices)
    return params


# ----------------------------------------------------------------------------------------------
# The command line.
# ----------------------------------------------------------------------------------------------
@dataclass
class Args:
    script: str
    """the algorithm script to tune (a2c.py, ppo_continuous.py, ...): one of SPACES"""
    env_ids: list[str]
    """environments each trial runs on; with more than one, each score is normalised (SCORE_RANGES)"""
    seeds: list[int] = field(default_factory=lambda: [1])
    """seeds each trial runs with, one run per env and seed"""
    trials: int = 30
    """finished trials (complete or pruned) the study should have, counting those of earlier or other
    processes joined to it"""
    storage: str = "sqlite:///runs/tune.db"
    """Optuna storage URL: SQLite by default; postgresql://... or mysql://... for processes on several machines"""
    study_name: str | None = None
    """the study's name in the storage (default <script>-<envs>); the same name continues or joins it"""
    workers: int | None = None
    """trials at once (default: the number of cores; with --ray-address, the cluster's CPUs divided by
    --cpus-per-run). Each trial runs its runs one after the other"""
    fix: list[str] = field(default_factory=list)
    """NAME=VALUE: pass this value to every run instead of tuning the parameter"""
    narrow: list[str] = field(default_factory=list)
    """NAME=LOW:HIGH narrows a range (within the space's), NAME=A,B,C keeps some choices"""
    score_range: list[str] = field(default_factory=list)
    """ENV=FLOOR:TARGET: the normalisation of an env's scores (overrides SCORE_RANGES)"""
    pruner: Literal["median", "none"] = "median"
    """median: stop a trial after a run when its mean so far is below the median of earlier trials there"""
    startup_trials: int = 5
    """trials drawn at random before the sampler (TPE) models the space, and before any trial is pruned"""
    sampler_seed: int | None = None
    """seed of the sampler (trials running side by side draw in an order that varies anyway)"""
    top: int = 10
    """rows of the table of best trials"""
    out: Path | None = None
    """folder for the figures (default runs/<study-name>/)"""
    progress_interval: float = 10.0
    """seconds between progress blocks when the output is not a terminal (a terminal redraws every second)"""
    ray_address: str | None = None
    """run the trials' runs on a Ray cluster (auto, host:port or local, as benchmark.py)"""
    cpus_per_run: float | None = None
    """CPUs each run asks of the Ray cluster (default 1)"""
    gpus_per_run: float | None = None
    """GPUs each run gets (default 0: none, it trains on the CPU), on the Ray cluster or spread over this
    machine's visible GPUs, as benchmark.py"""
    max_retries: int = 3
    """times Ray starts a run again from step 0 when the node running it is lost"""


FAILURES_IN_A_ROW = 3  # a process stops after this many failed trials in a row (failed trials do not count)


class RunFailed(Exception):
    """A run of a trial ended without an evaluation: the trial fails."""


def open_study(args: Args, space: dict[str, Param], fixed: dict, extra: list[str], ranges: dict):
    import optuna

    url = args.storage
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):  # a relative path: make its folder
        folder = Path(url.removeprefix("sqlite:///")).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # a file where a folder should be, no permission
            raise UsageError(f"cannot open storage {url}: cannot make its folder {folder} ({e.strerror or e})")
    for attempt in range(3):
        try:
            # Heartbeats: a trial whose process died (kill -9, a lost machine) is marked failed a minute later
            # instead of counting as running for ever.
            storage = optuna.storages.RDBStorage(url, heartbeat_interval=20, grace_period=60)
            break
        except Exception as e:  # sqlalchemy and Optuna raise many kinds; all mean the same to the user
            # Two processes making the same new database at once: one wins, the other retries and joins it.
            racing = any(word in str(e) for word in ("UNIQUE constraint", "already exists", "locked"))
            if attempt == 2 or not racing:
                raise UsageError(f"cannot open storage {url}: {str(e).strip().splitlines()[0]}")
            time.sleep(1.0 + attempt)
    sampler = optuna.samplers.TPESampler(n_startup_trials=args.startup_trials, seed=args.sampler_seed,
                                         multivariate=True, constant_liar=True)
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=args.startup_trials) if args.pruner == "median"
              else optuna.pruners.NopPruner())
    study = optuna.create_study(storage=storage, study_name=args.study_name, direction="maximize",
                                sampler=sampler, pruner=pruner, load_if_exists=True)
    # What the study's values mean: a study continued or joined with other runs would mix two objectives.
    setup = {"script": args.script, "env_ids": args.env_ids, "seeds": args.seeds, "fixed_flags": flags_of(fixed) + extra,
             "space": {name: repr(param) for name, param in space.items()},
             "score_ranges": {env: list(ranges[env]) for env in args.env_ids} if len(args.env_ids) > 1 else {}}
    stored = study.user_attrs.get("setup")
    if stored is None:
        study.set_user_attr("setup", setup)
    elif stored != json.loads(json.dumps(setup)):
        differs = ", ".join(key for key in setup if stored.get(key) != json.loads(json.dumps(setup[key])))
        raise UsageError(f"study {args.study_name} in {url} was made with other settings ({differs}); "
                         "give another --study-name")
    return study


def run_tag(study_name: str, storage: str) -> str:
    """The study's part of its runs' names: the study name, and a short hash of the storage, so that studies of one
    name in two storages keep their run directories apart (the second used to delete the first's). A SQLite file's
    path is made absolute first: every process given that file, by whatever path, agrees on the tag."""
    if storage.startswith("sqlite:///"):
        storage = "sqlite:///" + os.path.realpath(storage.removeprefix("sqlite:///").partition("?")[0])
    return f"{re.sub(r'[^A-Za-z0-9_.-]', '-', study_name)}-{hashlib.sha1(storage.encode()).hexdigest()[:6]}"


class Tuner:
    """Runs trials on `workers` threads, each trial's runs one after the other through `runner`."""

    def __init__(self, args: Args, study, space: dict, fixed: dict, extra: list[str], ranges: dict, runner,
                 workers: int):
        self.args, self.study, self.space, self.fixed, self.extra = args, study, space, fixed, extra
        self.ranges, self.runner, self.workers = ranges, runner, workers
        self.lock = threading.Lock()
        self.stopping = False  # Ctrl-C or an error: the running runs are stopped
        self.halted = False  # no new trials; those running finish
        self.running: dict[int, tuple[Run, float, int]] = {}  # trial number -> (its current run, start, index)
        self.in_flight: set[int] = set()  # trials asked and not yet told, in this process
        self.handles: dict[int, object] = {}
        self.events: list[str] = []
        self.ran: list[int] = []  # trial numbers this process ran
        self.failures_in_a_row = 0
        self.storage = study._storage  # the RDBStorage of open_study, for the trials' heartbeats

    def finished(self) -> list:
        import optuna

        return self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,
                                                              optuna.trial.TrialState.PRUNED))

    def score(self, env_id: str, value: float) -> float:
        if len(self.args.env_ids) == 1:
            return value
        floor, target = self.ranges[env_id]
        return (value - floor) / (target - floor)

    def work(self):
        import optuna

        while not self.stopping and not self.halted:
            with self.lock:
                optuna.storages.fail_stale_trials(self.study)  # trials of a process that died: failed
                busy = self.study.get_trials(deepcopy=False, states=(
                    optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.RUNNING))
                if len(busy) >= self.args.trials:
                    return
                trial = self.study.ask()
                try:
                    params = suggest(trial, self.space)
                except BaseException:  # a bug, but the trial must not stay RUNNING, counted against --trials
                    self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                    raise
                self.storage.record_heartbeat(trial._trial_id)
                self.ran.append(trial.number)
                self.in_flight.add(trial.number)
            try:
                value = self.run_trial(trial, params)
            except optuna.TrialPruned as pruned:
                self.failures_in_a_row = 0
                self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                self.note(f"trial {trial.number} pruned: {pruned}")
            except RunFailed as e:
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                self.note(f"trial {trial.number} FAILED: {e}")
                with self.lock:
                    self.failures_in_a_row += 1
                    if self.failures_in_a_row >= FAILURES_IN_A_ROW and not self.halted:
                        self.halted = True  # a bad fixed flag, say: every trial would fail; no new trials
                        self.events.append(f"{FAILURES_IN_A_ROW} trials failed in a row: stopping")
            except BaseException:
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                raise
            else:
                self.failures_in_a_row = 0
                self.study.tell(trial, value)
                best = self.study.best_trial
                self.note(f"trial {trial.number} complete: {value:.4g}"
                          + (" (best so far)" if best.number == trial.number else f" (best {best.value:.4g}, "
                                                                                  f"trial {best.number})"))
            finally:
                with self.lock:
                    self.running.pop(trial.number, None)
                    self.handles.pop(trial.number, None)
                    self.in_flight.discard(trial.number)

    def run_trial(self, trial, params: dict) -> float:
        import optuna

        trial.set_user_attr("flags", flags_of(params))
        tag = f"{run_tag(self.study.study_name, self.args.storage)}-t{trial.number}"
        order = [(seed, env_id) for seed in self.args.seeds for env_id in self.args.env_ids]
        scores, evaluations = [], {}
        flags = flags_of(params) + flags_of(self.fixed) + self.extra
        for index, (seed, env_id) in enumerate(order):
            run = plan([Entry(self.args.script, env_id, tag=tag)], [seed])[0]
            # Left by a deleted study of the same name in the same storage (run_tag keeps other storages' apart).
            shutil.rmtree(run.directory, ignore_errors=True)
            with self.lock:
                if self.stopping:
                    raise KeyboardInterrupt
                handle = self.runner.start(run, flags)
                self.running[trial.number] = (run, time.time(), index)
                self.handles[trial.number] = handle
            returncode, beat = None, time.time()
            while returncode is None:
                time.sleep(0.5)
                returncode = self.runner.poll(handle)
                if time.time() - beat > 10:  # the trial is alive: see the storage's heartbeat
                    self.storage.record_heartbeat(trial._trial_id)
                    beat = time.time()
            if self.stopping:
                raise KeyboardInterrupt
            summary = json.loads(run.summary_path.read_text()) if run.summary_path.exists() else {}
            if returncode != 0 or summary.get("eval_mean") is None:
                raise RunFailed(f"{run.name} ended with exit code {returncode}"
                                + ("" if returncode else " and no evaluation") + f"; last lines of {run.log_path}:\n"
                                + benchmark.tail(run.log_path))
            evaluations[run.name] = summary["eval_mean"]
            scores.append(self.score(env_id, summary["eval_mean"]))
            trial.set_user_attr("evaluations", evaluations)
            mean = sum(scores) / len(scores)
            trial.report(mean, index)
            if index + 1 < len(order) and trial.should_prune():
                raise optuna.TrialPruned(f"{mean:.4g} after {index + 1} of {len(order)} runs")
        return sum(scores) / len(scores)

    def note(self, text: str):
        with self.lock:
            self.events.append(text)

    def progress(self, elapsed: float) -> list[str]:
        import optuna

        with self.lock:  # trials are asked under the lock: the storage and in_flight agree
            trials = self.study.get_trials(deepcopy=False)
            here = len(self.in_flight)
        count = {state: sum(t.state == state for t in trials) for state in optuna.trial.TrialState}
        done = count[optuna.trial.TrialState.COMPLETE] + count[optuna.trial.TrialState.PRUNED]
        completed = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        best = max(completed, key=lambda t: t.value) if completed else None
        others = count[optuna.trial.TrialState.RUNNING] - here
        lengths = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials
                   if t.state.is_finished() and t.datetime_start and t.datetime_complete]
        left = "time left: ?"
        if lengths:
            waves = math.ceil(max(self.args.trials - done, 0) / max(self.workers, 1))
            left = f"~{duration(waves * sum(lengths) / len(lengths))} left"
        head = (f"[{duration(elapsed):>7}] {done}/{self.args.trials} trials done "
                f"({count[optuna.trial.TrialState.COMPLETE]} complete, {count[optuna.trial.TrialState.PRUNED]} "
                f"pruned), {count[optuna.trial.TrialState.FAIL]} failed, {here} running here"
                + (f", {others} elsewhere" if others > 0 else "")
                + (f"; best {best.value:.4g} (trial {best.number})" if best else "") + f"; {left}")
        lines = [head]
        now = time.time()
        with self.lock:
            running = sorted(self.running.items())
        for number, (run, started, index) in running:
            progress = read_progress(run.log_path)
            state = (f"{progress[0]:,}/{progress[1]:,} {min(progress[0] / progress[1], 1.0):4.0%} {progress[2]:>6,} SPS"
                     if progress and progress[0] > 0 else "starting")
            lines.append(f"    trial {number:<4} run {index + 1}/{len(self.args.seeds) * len(self.args.env_ids)} "
                         f"{run.name}  {state}  {duration(now - started)}")
        return lines

    def tune(self) -> None:
        view = benchmark.View()
        start, self.last_block = time.time(), 0.0
        errors = []

        def guarded(target):
            def run():
                try:
                    target()
                except BaseException as e:  # a bug or a storage error: stop everything and say it
                    errors.append(e)
                    self.stopping = True
            return run

        threads = [threading.Thread(target=guarded(self.work), daemon=True) for _ in range(self.workers)]
        for thread in threads:
            thread.start()
        try:
            while any(t.is_alive() for t in threads):
                if errors:
                    raise errors[0]
                self.show(view, start, force=False)
                time.sleep(0.5)
            if errors:
                raise errors[0]
        except BaseException:  # Ctrl-C, or a thread's error: no run may outlive tune.py
            with self.lock:
                self.stopping = True
                handles = list(self.handles.values())
            self.runner.stop(handles)
            for thread in threads:
                thread.join()
            raise
        finally:
            self.show(view, start, force=True)

    def show(self, view, start: float, force: bool):
        with self.lock:
            events, self.events = self.events, []
        for text in events + self.runner.events():
            view.event(text)
        if not force and time.time() - self.last_block >= (1.0 if view.live else self.args.progress_interval):
            self.last_block = time.time()
            view.block(self.progress(time.time() - start))


def report(args: Args, study, fixed: dict, extra: list[str], out: Path) -> int:
    import optuna

    trials = study.get_trials(deepcopy=False)
    completed = sorted((t for t in trials if t.state == optuna.trial.TrialState.COMPLETE), key=lambda t: -t.value)
    states = {s: sum(t.state == s for t in trials) for s in optuna.trial.TrialState}
    print(f"\nstudy {study.study_name}: {len(trials)} trials: {states[optuna.trial.TrialState.COMPLETE]} complete, "
          f"{states[optuna.trial.TrialState.PRUNED]} pruned, {states[optuna.trial.TrialState.FAIL]} failed"
          + (f", {states[optuna.trial.TrialState.RUNNING]} running" if states[optuna.trial.TrialState.RUNNING] else ""))
    if not completed:
        running = states[optuna.trial.TrialState.RUNNING]
        print("no trial completed: no best flags yet" + (f" ({running} running in other processes)" if running else ""))
        return 1
    value = "mean normalised score" if len(args.env_ids) > 1 else "mean evaluation"
    print(f"\n| trial | {value} | evaluations | flags |\n|---|---|---|---|")
    for t in completed[:args.top]:
        evaluations = ", ".join(f"{v:.1f}" for v in t.user_attrs.get("evaluations", {}).values())
        print(f"| {t.number} | {t.value:.4g} | {evaluations} | {' '.join(t.user_attrs.get('flags', []))} |")
    best = completed[0]
    flags = " ".join([*best.user_attrs.get("flags", []), *flags_of(fixed), *extra])
    print(f"\nbest: trial {best.number}, {value} {best.value:.4g}. Its flags:\n\n"
          f"    python {args.script} --env-id {args.env_ids[0]} {flags}\n\n"
          f"on fresh seeds (not tuned on), every env:\n\n"
          f"    python benchmark.py --scripts {args.script} --env-ids {' '.join(args.env_ids)} --seeds "
          f"{' '.join(str(max(args.seeds) + i) for i in (1, 2, 3))} --tag tuned -- {flags}\n")
    figures(study, out)
    return 0


def figures(study, out: Path):
    import optuna

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from optuna.visualization import matplotlib as optuna_plots
    except ImportError:
        print("note: no figures without matplotlib (pip install -r requirements-dev.txt)")
        return
    out.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", UserWarning)  # few trials: importances equal, an empty legend
        for name, draw in (("optimization_history", optuna_plots.plot_optimization_history),
                           ("param_importances", optuna_plots.plot_param_importances)):
            try:
                axes = draw(study)
            except (ValueError, RuntimeError) as e:  # importances need two completed trials that differ
                print(f"note: no {name}.png: {e}")
                continue
            figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
            figure.set_size_inches(8, 5)
            figure.tight_layout()
            figure.savefig(out / f"{name}.png", dpi=110)
            plt.close(figure)
            print(f"wrote {out / f'{name}.png'}")


def main(argv: list[str]) -> int:
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    args = tyro.cli(Args, args=own, description=__doc__)
    runner = None
    try:
        if not script_path(args.script).is_file():
            raise UsageError(f"no script {args.script} in {benchmark.ROOT} or the current directory")
        for value, flag in ((args.trials, "--trials"), (args.workers, "--workers"), (args.top, "--top")):
            if value is not None and value <= 0:
                raise UsageError(f"{flag} must be positive, got {value}")
        if args.startup_trials < 0:
            raise UsageError(f"--startup-trials must be 0 or more, got {args.startup_trials}")
        episodes = flag_value(extra, "eval-episodes")  # every spelling: --eval_episodes=0 used to slip past
        if episodes is not None and episodes.strip().lstrip("+-").isdigit() and int(episodes) == 0:
            raise UsageError("--eval-episodes 0 leaves the trials nothing to be scored on")
        if len(set(args.env_ids)) < len(args.env_ids) or len(set(args.seeds)) < len(args.seeds):
            raise UsageError("an env or seed is given twice")
        benchmark.check_names(plan([Entry(args.script, env_id) for env_id in args.env_ids], args.seeds))
        space, fixed = shape_space(Path(args.script).name, args.fix, args.narrow, extra)
        ranges = dict(SCORE_RANGES)
        for item in args.score_range:
            env_id, _, bounds = item.partition("=")
            try:
                floor, target = map(float, bounds.split(":"))
            except ValueError:
                raise UsageError(f"--score-range {item}: give ENV=FLOOR:TARGET")
            if floor == target:
                raise UsageError(f"--score-range {item}: the floor and the target must differ")
            ranges[env_id] = (floor, target)
        if len(args.env_ids) > 1:
            unknown = [e for e in args.env_ids if e not in ranges]
            if unknown:
                raise UsageError(f"no score range for {', '.join(unknown)} to normalise over several envs: "
                                 f"give --score-range {unknown[0]}=FLOOR:TARGET")
        try:
            import optuna
        except ImportError:
            raise UsageError("tune.py needs Optuna: pip install -r requirements-cluster.txt")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # Heartbeats are "experimental" and "meant for Study.optimize": tune.py records them itself (ask and tell).
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        args.study_name = args.study_name or f"{Path(args.script).stem}-{'-'.join(args.env_ids)}"
        study = open_study(args, space, fixed, extra, ranges)
        runner = benchmark.make_runner(args.ray_address, args.cpus_per_run, args.gpus_per_run, args.max_retries)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        if runner:
            runner.close()
        return 2
    workers = args.workers or runner.slots or os.cpu_count() or 1
    out = args.out or Path("runs") / args.study_name
    print(f"study {args.study_name} in {args.storage}: {args.script} on {', '.join(args.env_ids)}, seeds "
          f"{' '.join(map(str, args.seeds))}, {workers} trial(s) at once; tuning {', '.join(space) or 'nothing'}"
          + (f"; fixed: {' '.join(flags_of(fixed) + extra)}" if fixed or extra else "")
          + f"; its runs: runs/<env>__{Path(args.script).stem}__<seed>__{run_tag(args.study_name, args.storage)}"
          "-t<trial>/", flush=True)
    tuner = Tuner(args, study, space, fixed, extra, ranges, runner, workers)
    try:
        tuner.tune()
    except KeyboardInterrupt as e:
        print(f"\ninterrupted{f' ({e})' if str(e) else ''}; the study is kept: the same command continues it",
              file=sys.stderr)
        return benchmark.interrupted(e)
    finally:
        runner.close()
    print(f"this process ran trial(s) {', '.join(map(str, sorted(tuner.ran))) or 'none'}")
    return report(args, study, fixed, extra, out)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, benchmark.stop_on_sigterm)  # the runs stopped, the trials failed, as on Ctrl-C
    sys.exit(main(sys.argv[1:]))
