"""Run algorithm scripts on environments for several seeds, in parallel processes, and report.

Reproduce the results table (docs/results.md), or a small subset of it for a quick check on a laptop
(a few minutes on 2 cores):

    python benchmark.py --preset full
    python benchmark.py --preset mujoco    # the MuJoCo suite: 27 runs of 1M steps (docs/results_mujoco.md)
    python benchmark.py --preset quick

Check finished runs against the table's bars without launching anything (exit code 1 if a row
with a bar fell below it or lacks runs, or if a run failed; 0 otherwise; rows without a bar are
reported only):

    python benchmark.py --preset full --check
    python benchmark.py --preset full --check --scripts dqn.py ddqn.py

Ad-hoc runs (no preset, no bars unless --min-return / --min-mean-return gives one); flags after
`--` go to every run:

    python benchmark.py --scripts ppo_continuous.py --env-ids Pendulum-v1 --seeds 1 2 3
    python benchmark.py --scripts ppo_continuous.py --env-ids HalfCheetah-v5 -- --total-timesteps 500000
    python benchmark.py --scripts dqn.py --env-ids CartPole-v1 --seeds 1 2 3 --check --min-return 475

Each run is `python <script> --env-id <env> --seed <seed> --run-name <env>__<script>__<seed>[__<tag>]
<entry flags> <flags after -->` writing to runs/<run-name>/ under the current directory (its
console output in runs/<run-name>/stdout.log, whose first line is the command). A run whose
summary.json exists is finished and is not run again, so an interrupted benchmark resumes with the
runs it had not finished (each starts again from step 0), and running the same command again just
prints the report. With a preset, --scripts and --env-ids pick a subset of its entries and --seeds
replaces its seeds. A preset entry whose script is not in this checkout is skipped with a message
(its row then shows its runs as missing).

While runs go, a progress view shows each running run's step/total and steps per second (read
from the tail of its stdout.log) and the time left, estimated from each run's rate over its last
two minutes and from the durations of finished runs of the same entry; it redraws in place on a
terminal and prints a block every --progress-interval seconds otherwise. A failed run is reported
with its last error line and the tail of its log, and does not stop the others. A run fails when it
exits non-zero (3: training diverged; 2: bad input), or leaves a summary.json that cannot be read or
whose evaluation is not a finite number (the NaN of a diverged run made before the scripts stopped
such runs); --check reports such runs as failed too, naming the run and what went wrong in one line.
A failed run without a summary.json is run again by the next benchmark; one whose summary.json is
damaged or NaN, or that exited non-zero after writing it, is reported as failed but not run again, so
delete its directory to run it again. A run finished meanwhile by another process (its summary.json there
when its turn comes) is skipped too.

With --ray-address (auto, host:port or local) each run is a task on a Ray cluster instead, asking
--cpus-per-run CPUs and --gpus-per-run GPUs: the script's text travels with the task, the run goes in a
temporary folder of its node, its log comes back into runs/<run-name>/stdout.log as it grows and the whole
run directory when it ends, so the nodes need no shared filesystem; a run whose node is lost is started
again elsewhere (--max-retries). Without it Ray is not imported.

The report (Markdown) gives, per entry, the mean and std over seeds of the final deterministic
evaluation and each seed's, the same for the mean return of the last 100 training episodes (read
from metrics.csv: the protocol of CleanRL's tables, where the evaluation is that of
rl-baselines3-zoo's), the steps, the steps per second and the wall time, and, where the entry has a
bar, the bar and its verdict (on the evaluation). Exit code: 0; 1 if a run failed or a bar was missed; 2 for
bad input (one `error:` line); 130 when interrupted (Ctrl-C), 143 when stopped by SIGTERM, which
stops the runs as Ctrl-C does.
"""

import csv
import heapq
import io
import itertools
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import tyro

ROOT = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------------------------
# The presets: one Entry per (script, env) row of the results tables (docs/results.md, docs/results_mujoco.md).
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    script: str
    env_id: str
    flags: tuple[str, ...] = ()
    """passed to every run of the entry (before the flags given after `--`)"""
    tag: str | None = None
    """appended to the run names: <env>__<script stem>__<seed>__<tag>"""
    bar: tuple[float, str] | None = None
    """(threshold, "each"): every seed's eval_mean >= threshold; (threshold, "mean"): the mean over
    seeds >= threshold; None: reported only"""
    seeds: tuple[int, ...] | None = None
    """this entry's seeds instead of the preset's (flags tuned on seeds 1 and 2 are measured on others);
    --seeds replaces them too"""


@dataclass(frozen=True)
class Preset:
    entries: tuple[Entry, ...]
    seeds: tuple[int, ...]


LUNAR_DQN = ("--total-timesteps", "500000", "--learning-rate", "6.3e-4", "--batch-size", "128",
             "--buffer-size", "100000", "--learning-starts", "10000", "--train-frequency", "4",
             "--gradient-steps", "1", "--target-network-frequency", "1000", "--exploration-fraction", "0.1",
             "--end-e", "0.05", "--eval-frequency", "50000")

# Taxi-v4's 500 states arrive one-hot: a smaller network, longer exploration and more gradient steps.
TAXI_DQN = ("--total-timesteps", "150000", "--hidden-sizes", "64", "64", "--exploration-fraction", "0.3",
            "--gradient-steps", "64", "--eval-episodes", "100")

A2C_PENDULUM_TUNED = ("--learning-rate", "0.0027", "--optimizer", "rmsprop", "--gamma", "0.9", "--gae-lambda", "0.8",
                      "--ent-coef", "2.05e-05", "--vf-coef", "0.493", "--max-grad-norm", "0.3", "--num-envs", "16",
                      "--num-steps", "32", "--norm-adv")

# a2c.py on MuJoCo: observations and rewards normalised (RL Baselines3 Zoo's MuJoCo A2C), 16 envs and GAE lambda
# 0.95 (Tianshou's MuJoCo A2C); docs/results_mujoco.md has the runs behind the choice.
A2C_MUJOCO = ("--total-timesteps", "1000000", "--norm-obs", "--norm-reward", "--num-envs", "16", "--gae-lambda", "0.95")

# ddpg.py on MuJoCo: CleanRL's ddpg_continuous_action.py settings (also the TD3 paper repository's "OurDDPG"):
# Adam at 3e-4, gamma 0.99, 25,000 random steps; batch 256, tau 0.005 and noise 0.1 are the defaults already.
DDPG_MUJOCO = ("--total-timesteps", "300000", "--learning-rate", "3e-4", "--gamma", "0.99", "--learning-starts", "25000")
# ddpg.py on Box2D: RL Baselines3 Zoo's LunarLanderContinuous DDPG (gamma 0.98 and Adam at 1e-3 are the defaults),
# with this project's 256-256 networks and delayed actor instead of its 400-300 and actor step per critic step.
DDPG_BOX2D = ("--total-timesteps", "300000", "--learning-starts", "10000", "--buffer-size", "200000")
# RL Baselines3 Zoo's tuned MountainCar-v0 DQN, in this project's flags (the zoo trains on SB3's Huber loss at a
# constant learning rate).
MOUNTAINCAR_DQN = ("--total-timesteps", "120000", "--learning-rate", "4e-3", "--no-anneal-lr", "--batch-size", "128",
                   "--buffer-size", "10000", "--learning-starts", "1000", "--gamma", "0.98",
                   "--target-network-frequency", "600", "--train-frequency", "16", "--gradient-steps", "8",
                   "--exploration-fraction", "0.2", "--end-e", "0.07", "--loss", "huber")

PRESETS: dict[str, Preset] = {
    "full": Preset(seeds=(1, 2, 3), entries=(
        Entry("ppo_continuous.py", "Pendulum-v1", bar=(-250, "each")),
        Entry("ppo_continuous.py", "HalfCheetah-v5", bar=(1500, "mean")),
        Entry("ppo_discrete.py", "CartPole-v1", bar=(475, "each")),
        Entry("ppo_discrete.py", "Acrobot-v1", bar=(-100, "each")),
        Entry("ppo_discrete.py", "LunarLander-v3", ("--total-timesteps", "1000000"), bar=(200, "mean")),
        Entry("a2c.py", "CartPole-v1", bar=(475, "each")),
        Entry("a2c.py", "LunarLander-v3", ("--total-timesteps", "1000000", "--gamma", "0.995",
                                           "--learning-rate", "8.3e-4", "--ent-coef", "1e-5"), bar=(150, "mean")),
        Entry("a2c.py", "Pendulum-v1", ("--total-timesteps", "1000000", "--norm-obs", "--norm-reward")),
        # The flags of tune.py's study on seeds 1 and 2 (docs/tuning.md), measured on three other seeds.
        Entry("a2c.py", "Pendulum-v1", ("--total-timesteps", "1000000", "--norm-obs", "--norm-reward", *A2C_PENDULUM_TUNED),
              tag="tuned", bar=(-250, "mean"), seeds=(4, 5, 6)),
        Entry("dqn.py", "CartPole-v1", bar=(475, "each")),
        Entry("ddqn.py", "CartPole-v1", bar=(475, "each")),
        Entry("dqn.py", "Acrobot-v1", bar=(-100, "each")),
        Entry("ddqn.py", "Acrobot-v1", bar=(-100, "each")),
        # Overestimation made visible: target copies 3x as often as the default (eval_start_q
        # against eval_discounted_return in metrics.csv).
        Entry("dqn.py", "CartPole-v1", ("--target-network-frequency", "256"), tag="tnf256"),
        Entry("ddqn.py", "CartPole-v1", ("--target-network-frequency", "256"), tag="tnf256"),
        Entry("ddqn.py", "LunarLander-v3", LUNAR_DQN, bar=(200, "mean")),
        Entry("dqn.py", "LunarLander-v3", LUNAR_DQN),
        Entry("ddpg.py", "Pendulum-v1", bar=(-200, "each")),
        Entry("naf.py", "Pendulum-v1", bar=(-250, "each")),
        Entry("naf.py", "InvertedPendulum-v5"),
        Entry("naf.py", "HalfCheetah-v5", ("--total-timesteps", "300000", "--learning-starts", "10000")),
        # Discrete observations, flattened one-hot; a success rate needs many evaluation episodes.
        Entry("ppo_discrete.py", "FrozenLake-v1", ("--eval-episodes", "1000"), bar=(0.7, "mean")),
        Entry("dqn.py", "Taxi-v4", TAXI_DQN, bar=(7, "each")),
    )),
    # The MuJoCo suite at 1M steps (docs/results_mujoco.md): one flag set per script, a row's extra flags named.
    # PPO's bars: OpenAI Baselines' PPO at 1M (its Mujoco1M page; Ant: the TD3 paper's PPO), rounded down.
    "mujoco": Preset(seeds=(1, 2, 3), entries=(
        Entry("ppo_continuous.py", "HalfCheetah-v5", bar=(1600, "mean")),
        Entry("ppo_continuous.py", "Hopper-v5", bar=(2300, "mean")),
        Entry("ppo_continuous.py", "Walker2d-v5", bar=(3400, "mean")),
        # Ant-v5 observes 78 contact forces besides its 27 positions and velocities; without them (Ant-v4's default)
        # PPO learns to walk.
        Entry("ppo_continuous.py", "Ant-v5", ("--env-kwargs", "include_cfrc_ext_in_observation", "False"),
              bar=(1000, "mean")),
        # Swimmer's reward for moving forward comes slowly: a horizon of 100 steps (gamma 0.99) sees little of it.
        Entry("ppo_continuous.py", "Swimmer-v5", ("--gamma", "0.9999"), bar=(110, "mean")),
        Entry("ppo_continuous.py", "InvertedDoublePendulum-v5", bar=(7000, "mean")),
        Entry("a2c.py", "HalfCheetah-v5", A2C_MUJOCO),
        Entry("a2c.py", "Hopper-v5", A2C_MUJOCO),
        Entry("a2c.py", "Walker2d-v5", A2C_MUJOCO),
    )),
    # The off-policy suite (docs/results_offpolicy.md): DDPG beyond Pendulum at 300k steps, DQN where exploring is the
    # problem.
    "offpolicy": Preset(seeds=(1, 2, 3), entries=(
        Entry("dqn.py", "MountainCar-v0", MOUNTAINCAR_DQN),
        Entry("ddqn.py", "MountainCar-v0", MOUNTAINCAR_DQN),
        Entry("ddpg.py", "Hopper-v5", DDPG_MUJOCO),
        Entry("ddpg.py", "Walker2d-v5", DDPG_MUJOCO),
        Entry("ddpg.py", "LunarLanderContinuous-v3", DDPG_BOX2D),
        # Tagged: the full preset's runs of this pair, with other flags, have the untagged names.
        Entry("ddpg.py", "HalfCheetah-v5", DDPG_MUJOCO, tag="mujoco"),
    )),
    # Default flags, one seed: the same runs as the full preset's seed 1 (about 1 to 1.5 minutes
    # each on a busy 2-core machine), held to the same bars, which all three seeds pass.
    "quick": Preset(seeds=(1,), entries=(
        Entry("ppo_discrete.py", "CartPole-v1", bar=(475, "each")),
        Entry("a2c.py", "CartPole-v1", bar=(475, "each")),
        Entry("dqn.py", "CartPole-v1", bar=(475, "each")),
    )),
}


@dataclass
class Args:
    preset: str | None = None
    """run (or --check) a preset: full (docs/results.md), mujoco (the MuJoCo suite) or quick (a few
    minutes)"""
    scripts: list[str] | None = None
    """algorithm scripts to run (default ppo_continuous.py); with a preset, the entries to keep"""
    env_ids: list[str] | None = None
    """environments to run each script on (default Pendulum-v1); with a preset, the entries to keep"""
    seeds: list[int] | None = None
    """seeds to run each entry with (default 1 2 3, or the preset's)"""
    workers: int | None = None
    """runs at once (default: the number of cores; each run uses one torch thread; with --ray-address, the
    cluster's CPUs divided by --cpus-per-run)"""
    tag: str | None = None
    """appended to the run names, to keep runs with other flags apart (a plain name: no / and no ..)"""
    check: bool = False
    """launch nothing: compare the finished runs with the bars, exit 1 if a row with a bar misses it or
    lacks runs"""
    min_return: float | None = None
    """bar for every entry: each seed's final evaluation must reach this (overrides the preset's)"""
    min_mean_return: float | None = None
    """bar for every entry: the mean over seeds of the final evaluation must reach this"""
    progress_interval: float = 10.0
    """seconds between progress blocks when the output is not a terminal (a terminal redraws every second)"""
    ray_address: str | None = None
    """run on a Ray cluster: auto or host:port joins a running one (`ray start --head` on one machine, `ray start
    --address HOST:PORT` on the others), local starts one on this machine for the command's lifetime; the run
    directories come back into runs/ here. Without it, runs are processes on this machine"""
    cpus_per_run: float | None = None
    """CPUs each run asks of the Ray cluster (default 1)"""
    gpus_per_run: float | None = None
    """GPUs each run gets (default 0: a run sees none and trains on the CPU); a fraction shares one GPU between
    runs, a whole number above 1 gives each run that many. Local runs are spread over the visible GPUs; on a
    Ray cluster, Ray assigns them"""
    max_retries: int = 3
    """times Ray starts a run again from step 0 when the node (or worker) running it is lost"""


class UsageError(Exception):
    """Bad input: reported as one `error:` line, exit code 2."""


def script_path(script: str) -> Path:
    """A script of this project (ROOT/<script>), or else a path from the current directory."""
    return ROOT / script if (ROOT / script).is_file() else Path(script)


def select(preset: str | None, scripts: list[str] | None, env_ids: list[str] | None, seeds: list[int] | None,
           tag: str | None = None) -> tuple[list[Entry], list[int]]:
    """The entries and seeds the command line asks for."""
    if preset is None:
        # A script's runs are named by its stem, so one file given twice (dqn.py ./dqn.py) would run twice at once
        # in each run directory: it is run once. Two files of one stem are refused for the same reason.
        files: dict[str, tuple[str, Path]] = {}  # stem -> (the script as first given, its file)
        for script in scripts or ["ppo_continuous.py"]:
            if not script_path(script).is_file():
                raise UsageError(f"no script {script} in {ROOT} or the current directory")
            first, file = files.setdefault(Path(script).stem, (script, script_path(script).resolve()))
            if file != script_path(script).resolve():
                raise UsageError(f"--scripts {first} {script}: two files named {Path(script).stem} would share run "
                                 f"directories (runs/<env>__{Path(script).stem}__<seed>); rename one, or run them in "
                                 "two benchmarks with different --tag")
        pairs = itertools.product([first for first, _ in files.values()], env_ids or ["Pendulum-v1"])
        entries = list(dict.fromkeys(Entry(script, env_id) for script, env_id in pairs))  # a repeat would share a run directory
        seeds = seeds or [1, 2, 3]
    else:
        if preset not in PRESETS:
            raise UsageError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
        entries = list(PRESETS[preset].entries)
        for wanted, attribute, flag in ((scripts, "script", "--scripts"), (env_ids, "env_id", "--env-ids")):
            unknown = sorted(set(wanted or []) - {getattr(e, attribute) for e in PRESETS[preset].entries})
            if unknown:
                raise UsageError(f"{flag} {' '.join(unknown)}: not in preset {preset}")
            entries = [e for e in entries if not wanted or getattr(e, attribute) in wanted]
        if not entries:
            raise UsageError(f"no entry of preset {preset} has both the --scripts and the --env-ids given")
        if seeds:
            entries = [replace(e, seeds=None) for e in entries]
        seeds = seeds or list(PRESETS[preset].seeds)
    seeds = list(dict.fromkeys(seeds))  # --seeds 1 1 would run two processes in one directory
    if tag is not None and (tag in ("", ".") or ".." in tag or "/" in tag or os.sep in tag):
        raise UsageError(f"--tag {tag!r}: the tag ends each run's directory name under runs/, so it must be a plain "
                         "name: not empty, no / and no ..")
    if tag:
        entries = [replace(e, tag=f"{e.tag}__{tag}" if e.tag else tag) for e in entries]
    return entries, seeds


@dataclass
class Run:
    entry: Entry
    seed: int
    name: str
    directory: Path

    @property
    def summary_path(self) -> Path:
        return self.directory / "summary.json"

    @property
    def log_path(self) -> Path:
        return self.directory / "stdout.log"


def run_name(entry: Entry, seed: int) -> str:
    return f"{entry.env_id}__{Path(entry.script).stem}__{seed}" + (f"__{entry.tag}" if entry.tag else "")


def plan(entries: list[Entry], seeds: list[int], runs_dir: Path = Path("runs")) -> list[Run]:
    return [Run(e, s, run_name(e, s), runs_dir / run_name(e, s)) for e in entries for s in (e.seeds or seeds)]


def check_names(runs: list[Run]):
    """Each run's name must be one directory under runs/ (UsageError): an env id with a / would put it elsewhere
    (--tag is checked in select). The scripts refuse such a --run-name too."""
    for run in runs:
        if run.name in (".", "..") or Path(run.name).name != run.name or "/" in run.name:
            raise UsageError(f"--env-ids {run.entry.env_id}: the run name {run.name} would not be one directory "
                             "under runs/; benchmark.py and tune.py cannot run an env id with a /")


# ----------------------------------------------------------------------------------------------
# Running: processes, the progress view, the estimate of the time left.
# ----------------------------------------------------------------------------------------------
def command_of(run: Run, extra: list[str], script: str | None = None) -> list[str]:
    """The run's command line: python <script> --env-id --seed --run-name, the entry's flags, then `extra`."""
    return [sys.executable, script or str(script_path(run.entry.script)), "--env-id", run.entry.env_id,
            "--seed", str(run.seed), "--run-name", run.name, *run.entry.flags, *extra]


def launch(run: Run, extra: list[str], gpus: list[str]) -> subprocess.Popen:
    """The run as a process that sees the GPUs `gpus` (CUDA_VISIBLE_DEVICES), and none if it is empty."""
    run.directory.mkdir(parents=True, exist_ok=True)
    command = command_of(run, extra)
    env = dict(os.environ, PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES=",".join(gpus))
    with open(run.log_path, "w") as log:  # the child keeps its own handle on the file
        log.write(" ".join(command) + "\n")
        log.flush()
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)


def visible_gpus() -> list[str]:
    """The GPUs this process may give out: CUDA_VISIBLE_DEVICES's list where it is set, else nvidia-smi's."""
    if (visible := os.environ.get("CUDA_VISIBLE_DEVICES")) is not None:
        return [gpu.strip() for gpu in visible.split(",") if gpu.strip() and not gpu.strip().startswith("-")]
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):  # no driver, no GPU
        return []
    return [str(i) for i, line in enumerate(line for line in listed.splitlines() if line.startswith("GPU "))]


STOP_GRACE = 10.0
"""Seconds the runs being stopped get to end on their own before they are killed."""


def stop_on_sigterm(signum, frame):
    """SIGTERM (kill, a scheduler ending the job) stops benchmark.py and tune.py as Ctrl-C does: without it they
    would die at once and leave their runs training as orphans (and tune.py's trials RUNNING in the study)."""
    # A repeat is dropped, so that it cannot cut the stopping short: by a handler, not SIG_IGN, which a run started
    # meanwhile would inherit.
    signal.signal(signal.SIGTERM, lambda *_: None)
    raise KeyboardInterrupt("SIGTERM")


def interrupted(e: KeyboardInterrupt) -> int:
    """The exit code of an interruption: 143 for SIGTERM, 130 for Ctrl-C, the codes a shell gives (and the
    scripts' own)."""
    return 143 if str(e) == "SIGTERM" else 130


class LocalRunner:
    """Each run a process on this machine. benchmark.py and tune.py start, poll and stop runs through a runner:
    this one, or RayRunner (below) for a Ray cluster. Without --gpus-per-run a run sees no GPU; with it, each
    run gets its share of the visible GPUs: the least busy one for a fraction, whole free ones otherwise."""

    def __init__(self, gpus_per_run: float = 0.0, gpus: list[str] | None = None):
        self.gpus_per_run = gpus_per_run
        gpus = (visible_gpus() if gpus is None else gpus) if gpus_per_run else []
        if gpus_per_run and len(gpus) < gpus_per_run:
            raise UsageError(f"--gpus-per-run {gpus_per_run:g}, but {len(gpus)} GPU(s) are visible here "
                             "(CUDA_VISIBLE_DEVICES, nvidia-smi); drop the flag to run on the CPU")
        per_gpu = int(1 // gpus_per_run) if 0 < gpus_per_run < 1 else 1  # runs that share one GPU
        self.room = dict.fromkeys(gpus, per_gpu)  # runs each GPU can still take
        self.slots: int | None = None  # runs the runner can hold at once (None: as many as --workers)
        if gpus_per_run:
            self.slots = len(gpus) * per_gpu if gpus_per_run < 1 else len(gpus) // int(gpus_per_run)
        self.held: dict[subprocess.Popen, list[str]] = {}

    def start(self, run: Run, extra: list[str]) -> subprocess.Popen:
        # The GPUs with the most room (the first of equals): within self.slots runs at once, room for this one.
        gpus = sorted(self.room, key=lambda gpu: -self.room[gpu])[: math.ceil(self.gpus_per_run)]
        for gpu in gpus:
            self.room[gpu] -= 1
        process = launch(run, extra, gpus)
        self.held[process] = gpus
        return process

    def poll(self, handle: subprocess.Popen) -> int | None:
        """The run's exit code once it has ended (its directory complete under runs/), else None."""
        returncode = handle.poll()
        if returncode is not None:
            for gpu in self.held.pop(handle, []):
                self.room[gpu] += 1
        return returncode

    def stop(self, handles: list[subprocess.Popen]):
        for process in handles:
            process.terminate()  # SIGTERM, which the scripts take as Ctrl-C
        deadline = time.time() + STOP_GRACE
        for process in handles:
            try:
                process.wait(timeout=max(deadline - time.time(), 0.0))
            except subprocess.TimeoutExpired:  # a run that ignores SIGTERM must not outlive us either
                process.kill()
                process.wait()

    def events(self) -> list[str]:
        """What happened to the runs since the last call that the progress view should print."""
        return []

    def close(self):
        pass


ENDED = "benchmark.py: the run ended with exit code "
"""The line benchmark.py appends to a failed run's stdout.log, so that --check can tell it from a run not
started or still going."""


def last_error(log: Path) -> str:
    """The last error line of a run's output: the scripts' `error: ...`, else its last line (a traceback's)."""
    lines = [line.strip() for line in tail(log, 40).splitlines()[1:] if line.strip()]  # [0]: the command
    lines = [line for line in lines if not line.startswith(ENDED)]
    return next((line for line in reversed(lines) if line.startswith("error:")), lines[-1] if lines else "")


def failure(log: Path) -> str | None:
    """Why the run of this log failed, in one line (its exit code and last error line), if benchmark.py saw it
    fail; else None."""
    lines = [line.strip() for line in tail(log, 1).splitlines()]
    if not lines or not lines[-1].startswith(ENDED):
        return None
    code, last = lines[-1][len(ENDED):], last_error(log)
    if code == "0":
        return "exit code 0 but no usable summary.json" + (f"; last line: {last}" if last else "")
    return f"exit code {code}" + (f": {last}" if last else " and no output")


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# The scripts' progress lines: `step    41740/100000 |  8347 SPS | return ...`
PROGRESS_LINE = re.compile(r"step\s+(\d+)/(\d+)\s*\|\s*(\d+)\s*SPS")


def read_progress(log: Path) -> tuple[int, int, int] | None:
    """(step, total steps, SPS) from the last progress line in the last 4 KB of a run's log."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            matches = PROGRESS_LINE.findall(f.read().decode(errors="replace"))
    except OSError:
        return None
    return tuple(map(int, matches[-1])) if matches else None


RATE_WINDOW = 120.0  # seconds of a run's latest progress that its time left is extrapolated from


def observe(samples: dict[str, list[tuple[float, int]]], running: list[tuple[Run, float]], now: float):
    """Appends (time first seen, step) to each running run's samples whenever its log shows a new step."""
    for run, started in running:
        history = samples.setdefault(run.name, [(started, 0)])
        progress = read_progress(run.log_path)
        if progress and progress[0] != history[-1][1]:
            history.append((now, progress[0]))


def seconds_left(history: list[tuple[float, int]], steps: int, now: float) -> float | None:
    """Seconds a run still needs at its rate over its last RATE_WINDOW seconds of progress.

    Not the average rate since the start: the off-policy scripts take their first --learning-starts steps at
    random, without gradient steps, many times faster than the rest, and the average would promise the rest at
    that pace. `history` is (time first seen, step) oldest first, from (start time, 0); None before any step.
    """
    (t1, s1), earlier = history[-1], history[:-1]
    if not earlier:
        return None
    t0, s0 = next(((t, s) for t, s in earlier if t >= t1 - RATE_WINDOW), earlier[-1])
    if s1 <= s0 or t1 <= t0:
        return None
    return max((steps - s1) * (t1 - t0) / (s1 - s0) - (now - t1), 0.0)


def time_left(running_left: list[float], waiting: list[float], workers: int) -> float:
    """Seconds until all runs end: each waiting run starts on whichever worker frees up first."""
    free = [*running_left, *[0.0] * (workers - len(running_left))]  # when each worker frees up
    heapq.heapify(free)
    for seconds in waiting:
        heapq.heappush(free, heapq.heappop(free) + seconds)
    return max(free, default=0.0)


def duration(seconds: float) -> str:
    seconds = round(seconds)  # before splitting, so 359.7 s reads 6m00s, not 5m60s
    return f"{seconds}s" if seconds < 120 else f"{seconds // 60}m{seconds % 60:02d}s"


class View:
    """Prints events, and a progress block that a terminal redraws in place."""

    def __init__(self):
        self.live = sys.stdout.isatty()
        self.drawn = 0

    def _erase(self):
        if self.live and self.drawn:
            sys.stdout.write(f"\x1b[{self.drawn}F\x1b[J")
        self.drawn = 0

    def event(self, text: str):
        self._erase()
        print(text, flush=True)

    def block(self, lines: list[str]):
        self._erase()
        if self.live:  # a wrapped line would spoil the redraw
            lines = [line[:shutil.get_terminal_size().columns - 1] for line in lines]
        print("\n".join(lines), flush=True)
        self.drawn = len(lines) if self.live else 0


def execute(runs: list[Run], extra: list[str], workers: int, progress_interval: float,
            runner: LocalRunner | None = None) -> list[Run]:
    """Runs what is not finished yet, `workers` at a time; returns the runs that failed."""
    runner = runner or LocalRunner()
    todo = [r for r in runs if not r.summary_path.exists()]
    # Known durations per entry, for the estimate of the time left: finished runs' wall times.
    durations: dict[Entry, list[float]] = {}
    unusable = 0
    for run in runs:
        if run.summary_path.exists():
            summary, _ = run_summary(run)
            unusable += summary is None
            if summary is not None:
                durations.setdefault(run.entry, []).append(summary["wall_time"])
    if len(todo) < len(runs):
        print(f"{len(runs) - len(todo)} of {len(runs)} runs already finished; skipping them"
              + (f" ({unusable} with a damaged or NaN summary.json, or that exited with an error after writing it, "
                 "reported as failed: delete a run's directory to run it again)" if unusable else ""))
    running: dict[object, tuple[Run, float]] = {}  # runner's handle -> (run, start time)
    samples: dict[str, list[tuple[float, int]]] = {}  # each run's progress over time, for its rate
    failed, done, total = [], 0, len(todo)
    view = View()
    start, last_report = time.time(), 0.0
    try:
        while todo or running:
            for handle in list(running):
                returncode = runner.poll(handle)
                if returncode is None:
                    continue
                run, started = running.pop(handle)
                summary, problem = read_summary(run.summary_path)
                if returncode != 0 or summary is None:
                    failed.append(run)
                    why = problem if returncode == 0 and problem else last_error(run.log_path) or "no output"
                    view.event(f"FAILED {run.name} (exit code {returncode}): {why}; last lines of {run.log_path}:\n"
                               f"{tail(run.log_path)}")
                    try:
                        with open(run.log_path, "a") as log:
                            log.write(f"\n{ENDED}{returncode}\n")
                    except OSError:  # its directory removed meanwhile: nothing to mark
                        pass
                else:
                    done += 1
                    durations.setdefault(run.entry, []).append(time.time() - started)
                    evaluation = summary.get("eval_mean")
                    view.event(f"done   {run.name} in {duration(time.time() - started)}"
                               + (f", eval {number(evaluation)}" if evaluation is not None else ""))
            for text in runner.events():
                view.event(text)
            while todo and len(running) < min(workers, runner.slots or workers):
                run = todo.pop(0)
                if run.summary_path.exists():  # finished since this benchmark began, by another process: kept
                    total -= 1
                    view.event(f"skip   {run.name}: finished meanwhile by another process (its summary.json)")
                    continue
                running[runner.start(run, extra)] = (run, time.time())
            observe(samples, list(running.values()), time.time())
            if running and time.time() - last_report >= (1.0 if view.live else progress_interval):
                last_report = time.time()
                view.block(progress_block(list(running.values()), todo, durations, samples,
                                          min(workers, runner.slots or workers), time.time() - start,
                                          f"{done}/{total} done, {len(running)} running, "
                                          f"{len(todo)} waiting, {len(failed)} failed"))
            time.sleep(0.5)
    except KeyboardInterrupt:
        runner.stop(list(running))
        raise
    return [run for run in runs if run in failed]  # in the plan's order, not the order they ended in


def progress_block(running: list[tuple[Run, float]], todo: list[Run], durations: dict[Entry, list[float]],
                   samples: dict[str, list[tuple[float, int]]], workers: int, elapsed: float, counts: str) -> list[str]:
    """One line of counts and time left, then one line per running run."""
    now, lines, running_left = time.time(), [], []
    width = max(len(run.name) for run, _ in running)
    projected: dict[Entry, list[float]] = {}  # total durations projected from the running runs' recent rates
    for run, started in running:
        progress = read_progress(run.log_path)
        left = seconds_left(samples.get(run.name, [(started, 0)]), progress[1], now) if progress else None
        running_left.append(left)
        if left is not None:
            projected.setdefault(run.entry, []).append(now - started + left)
        if progress and progress[0] > 0:
            step, steps, sps = progress
            state = f"{f'{step:,}/{steps:,}':>19} {min(step / steps, 1.0):4.0%} {sps:>6,} SPS"
        else:
            state = f"{'starting':<35}"
        lines.append(f"    {run.name:<{width}}  {state} {duration(now - started):>7}")

    def expected(entry: Entry) -> float | None:
        known = durations.get(entry) or projected.get(entry)
        if known:
            return sum(known) / len(known)
        everything = [d for ds in (*durations.values(), *projected.values()) for d in ds]
        return sum(everything) / len(everything) if everything else None

    # A run still starting is expected to take as long as the others of its entry.
    for i, (run, started) in enumerate(running):
        if running_left[i] is None and expected(run.entry) is not None:
            running_left[i] = max(expected(run.entry) - (now - started), 0.0)
    waiting = [expected(run.entry) for run in todo]
    if None in running_left or None in waiting:
        left = "time left: ?"
    else:
        left = f"~{duration(time_left(running_left, waiting, workers))} left"
    return [f"[{duration(elapsed):>7}] {counts}; {left}", *lines]


# ----------------------------------------------------------------------------------------------
# Running on a Ray cluster (--ray-address): each run one Ray task. Ray is imported here only.
# ----------------------------------------------------------------------------------------------
def run_on_node(script_name: str, script_text: str, arguments: list[str], run_name: str, board,
                hide_gpus: bool = True) -> tuple:
    """A Ray task: one run in a temporary directory of whichever node Ray placed it on.

    The script travels as text (each script is one self-contained file), so the nodes need the Python packages
    of requirements.txt but not this checkout, and no filesystem is shared. The log is sent to `board` as it
    grows, for the progress view; the run directory comes back as a .tar.gz, and the temporary directory goes.
    Imports are inside, so Ray ships this function by value to nodes without benchmark.py.
    """
    import codecs
    import ctypes
    import io
    import os
    import shutil
    import subprocess
    import sys
    import tarfile
    import tempfile
    import time

    import ray

    node = ray.get_runtime_context().get_node_id()
    attempt = ray.get(board.begin.remote(run_name, node))
    work = tempfile.mkdtemp(prefix="glassbox-run-")
    try:
        script = os.path.join(work, script_name)
        with open(script, "w") as f:
            f.write(script_text)
        directory = os.path.join(work, "runs", run_name)
        os.makedirs(directory)
        log_path, command = os.path.join(directory, "stdout.log"), [sys.executable, script, *arguments]

        def as_a_run():
            ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL: no orphan runs when a worker or node is lost
            try:  # Ray starts its workers at niceness 15, which would starve the run on a busy machine
                os.setpriority(os.PRIO_PROCESS, 0, 0)
            except OSError:  # lowering the niceness needs root (or CAP_SYS_NICE)
                pass

        # A task that asked for no GPU sees none (Ray no longer hides them from it); one that asked has those Ray set.
        environment = dict(os.environ, PYTHONUNBUFFERED="1", **({"CUDA_VISIBLE_DEVICES": ""} if hide_gpus else {}))
        with open(log_path, "w") as log:
            log.write(" ".join(command) + "\n")
            log.flush()
            process = subprocess.Popen(command, cwd=work, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, env=environment,
                                       preexec_fn=as_a_run if sys.platform == "linux" else None)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        with open(log_path, "rb") as reader:
            while True:
                returncode = process.poll()
                text = decoder.decode(reader.read())
                if text:
                    board.write.remote(run_name, attempt, text)
                if returncode is not None:
                    break
                time.sleep(1.0)
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w:gz") as tar:
            tar.add(directory, arcname=run_name)
        return returncode, node, archive.getvalue()
    finally:
        shutil.rmtree(work, ignore_errors=True)


class Board:
    """A Ray actor on the submitting machine's node: each run's attempt, node, and log text not yet taken."""

    def __init__(self):
        self.runs: dict[str, tuple[int, str, list[str]]] = {}

    def begin(self, name: str, node: str) -> int:
        attempt = self.runs.get(name, (0,))[0] + 1
        self.runs[name] = (attempt, node, [])
        return attempt

    def write(self, name: str, attempt: int, text: str):
        if name in self.runs and self.runs[name][0] == attempt:  # late text of a lost attempt is dropped
            self.runs[name][2].append(text)

    def take(self, names: list[str]) -> dict[str, tuple[int, str, str]]:
        taken = {}
        for name in names:
            if name in self.runs:
                attempt, node, texts = self.runs[name]
                taken[name] = (attempt, node, "".join(texts))
                texts.clear()
        return taken


@dataclass(eq=False)
class RayHandle:
    run: Run
    ref: object
    attempt: int = 0


class RayRunner(LocalRunner):
    """Runs as Ray tasks, each asking `cpus` CPUs and `gpus` GPUs, started again up to `max_retries` times when
    the node (or worker) running one is lost. Each run's log is copied into runs/<run-name>/stdout.log here as
    it grows, and the whole run directory replaces it when the run ends."""

    def __init__(self, address: str, cpus: float = 1.0, gpus: float = 0.0, max_retries: int = 3):
        self.ray = ray = connect(address)
        self.gpus = gpus
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        nodes = [n for n in ray.nodes() if n["Alive"]]
        if not any(n["Resources"].get("CPU", 0) >= cpus and n["Resources"].get("GPU", 0) >= gpus for n in nodes):
            ray.shutdown()
            raise UsageError(f"no node of the Ray cluster at {address} has {cpus:g} CPUs"
                             + (f" and {gpus:g} GPUs" if gpus else "") + " for a run")
        total = ray.cluster_resources()
        self.slots = max(1, int(min(total.get("CPU", 0) // cpus, total.get("GPU", 0) // gpus if gpus else 1e9)))
        if __name__ != "__main__":  # imported (by tune.py): ship run_on_node and Board by value all the same
            ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
        here = ray.get_runtime_context().get_node_id()
        print(f"Ray cluster at {address}: {len(nodes)} node(s), {total.get('CPU', 0):g} CPUs"
              + (f", {total.get('GPU', 0):g} GPUs" if total.get("GPU") else "") + "; "
              + ", ".join(f"node {n['NodeID'][:8]} ({n['NodeManagerAddress']}, {n['Resources'].get('CPU', 0):g} CPUs"
                          + (", this process" if n["NodeID"] == here else "") + ")" for n in nodes), flush=True)
        self.board = ray.remote(Board).options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
            here, soft=False)).remote()
        self.task = ray.remote(run_on_node).options(num_cpus=cpus, num_gpus=gpus, max_retries=max_retries)
        self.active: dict[str, RayHandle] = {}
        self.pending_events: list[str] = []
        self.last_pump = 0.0
        self.lock = threading.RLock()  # tune.py's trials poll from several threads

    def start(self, run: Run, extra: list[str]) -> RayHandle:
        with self.lock:
            return self._start(run, extra)

    def _start(self, run: Run, extra: list[str]) -> RayHandle:
        run.directory.mkdir(parents=True, exist_ok=True)
        run.log_path.write_text("(waiting for a node of the Ray cluster)\n")
        script = script_path(run.entry.script)
        ref = self.task.remote(script.name, script.read_text(), command_of(run, extra)[2:], run.name, self.board,
                               self.gpus == 0)
        self.active[run.name] = handle = RayHandle(run, ref)
        return handle

    def pump(self, force: bool = False):
        """Copies the runs' new log text here; notes each run's start, and its start again after a loss."""
        if not self.active or (not force and time.time() - self.last_pump < 0.5):
            return
        self.last_pump = time.time()
        for name, (attempt, node, text) in self.ray.get(self.board.take.remote(list(self.active))).items():
            handle = self.active[name]
            if attempt != handle.attempt:
                if handle.attempt:
                    self.pending_events.append(f"retry  {name} on node {node[:8]} (attempt {attempt}): the node or "
                                               "worker running it was lost; it starts again from step 0")
                else:
                    self.pending_events.append(f"start  {name} on node {node[:8]}")
                handle.attempt = attempt
                handle.run.log_path.write_text("")
            if text:
                with open(handle.run.log_path, "a") as log:
                    log.write(text)

    def poll(self, handle: RayHandle) -> int | None:
        with self.lock:
            return self._poll(handle)

    def _poll(self, handle: RayHandle) -> int | None:
        self.pump()
        if not self.ray.wait([handle.ref], timeout=0)[0]:
            return None
        self.pump(force=True)
        del self.active[handle.run.name]
        try:
            returncode, node, archive = self.ray.get(handle.ref)
        except self.ray.exceptions.RayError as e:  # lost more often than --max-retries allows, or cancelled
            with open(handle.run.log_path, "a") as log:
                log.write(f"\nlost on the Ray cluster: {str(e).strip().splitlines()[0]}\n")
            return -1
        shutil.rmtree(handle.run.directory, ignore_errors=True)
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            tar.extractall(handle.run.directory.parent, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        return returncode

    def stop(self, handles: list[RayHandle]):
        for handle in handles:
            self.ray.cancel(handle.ref, force=True)

    def events(self) -> list[str]:
        with self.lock:
            events, self.pending_events = self.pending_events, []
        return events

    def close(self):
        self.ray.shutdown()


def connect(address: str):
    """Joins the Ray cluster at `address` (auto, host:port) or starts one here (local); returns the ray module.

    A host:port that does not answer is said within seconds: ray.init would keep retrying for minutes.
    """
    try:
        import ray
    except ImportError:
        raise UsageError("--ray-address needs Ray: pip install -r requirements-cluster.txt")
    options = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    if address == "local":
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(num_cpus=os.cpu_count(), **options)
        return ray
    if address != "auto":
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise UsageError(f"--ray-address {address}: give auto, local or host:port")
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
        except OSError as e:
            raise UsageError(f"cannot reach a Ray cluster at {address} ({e.strerror or e}); start one there with "
                             f"`ray start --head --port {port}`")
    try:
        ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise UsageError(f"cannot join a Ray cluster at {address}: {str(e).strip().splitlines()[0]}")
    return ray


def make_runner(ray_address: str | None, cpus_per_run: float | None, gpus_per_run: float | None,
                max_retries: int) -> LocalRunner:
    """The runner the command line asks for; checks the Ray flags (UsageError)."""
    if gpus_per_run is not None and (gpus_per_run < 0 or gpus_per_run > 1 and gpus_per_run != int(gpus_per_run)):
        raise UsageError(f"--gpus-per-run must be 0, a fraction below 1 or a whole number, got {gpus_per_run:g}")
    if ray_address is None:
        if cpus_per_run is not None:
            raise UsageError("--cpus-per-run: for runs on a Ray cluster; give --ray-address too")
        return LocalRunner(gpus_per_run or 0.0)
    if cpus_per_run is not None and cpus_per_run <= 0:
        raise UsageError(f"--cpus-per-run must be positive, got {cpus_per_run:g}")
    if max_retries < 0:
        raise UsageError(f"--max-retries must be 0 or more, got {max_retries}")
    return RayRunner(ray_address, cpus_per_run or 1.0, gpus_per_run or 0.0, max_retries)


# ----------------------------------------------------------------------------------------------
# The report and the bars.
# ----------------------------------------------------------------------------------------------
@dataclass
class Row:
    entry: Entry
    summaries: list[dict] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    """seeds without a finished run"""
    failed: list[tuple[int, str]] = field(default_factory=list)
    """(seed, why in one line) of the runs that failed: see read_summary and failure"""


def read_summary(path: Path) -> tuple[dict | None, str | None]:
    """A run's summary.json and None, or None and what makes it unusable (None, None if there is none).

    Unusable: not readable JSON (e.g. truncated), or without the numbers the report needs, or with an
    evaluation that is not finite (a diverged run's NaN, which compares False with every bar, so that
    `min` over the seeds could skip it and pass the row)."""
    if not path.exists():
        return None, None
    try:
        summary = json.loads(path.read_text())
    except OSError as e:
        return None, f"{path}: cannot be read ({e.strerror or e})"
    except ValueError as e:  # json.JSONDecodeError, UnicodeDecodeError
        return None, f"{path}: not valid JSON ({e})"
    if not isinstance(summary, dict):
        return None, f"{path}: holds a JSON {type(summary).__name__}, not an object"
    for key, kind in (("seed", int), ("global_step", int), ("wall_time", float), ("sps", float),
                      ("eval_mean", float)):
        value = summary.get(key)
        if key == "eval_mean" and value is None:  # not evaluated (--eval-episodes 0)
            continue
        if key not in summary:
            return None, f"{path}: no {key}"
        if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
            return None, f"{path}: {key} is {json.dumps(value)}, not {'an integer' if kind is int else 'a number'}"
        if not math.isfinite(value):
            return None, f"{path}: {key} is {value}" + (": the run diverged" if key == "eval_mean" else "")
    return summary, None


def run_summary(run: Run) -> tuple[dict | None, str | None]:
    """read_summary of the run, unless benchmark.py saw the run exit with a code other than 0 after its summary.json
    was written (its log's ENDED line is the later): then None and why. Such a summary.json used to count as a
    finished run, in the report of the very benchmark that had said the run failed and in every later one. One
    written after that line (the run resumed to its end by hand) counts."""
    summary, problem = read_summary(run.summary_path)
    why = failure(run.log_path) if summary is not None else None
    if why is None or why.startswith("exit code 0"):
        return summary, problem
    try:
        if run.summary_path.stat().st_mtime_ns > run.log_path.stat().st_mtime_ns:
            return summary, problem
    except OSError:
        return summary, problem
    return None, f"{why} (after writing its summary.json)"


LAST_EPISODES = 100


def last_episodes_mean(metrics: Path, n: int = LAST_EPISODES) -> float | None:
    """The mean return of a run's last n training episodes (CleanRL's Open RL Benchmark reports this), from
    its metrics.csv: each row holds the mean return (episodic_return) and the number (episodes) of the
    episodes that ended since the row before, so the last rows that together hold n episodes give the mean,
    the oldest of them weighted by the episodes it still contributes (its own mean standing for them, the
    one approximation: exact when that row contributes all its episodes). None without a readable file,
    an episodes column (metrics.csv of scripts older than the column) or n episodes."""
    try:
        with open(metrics, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r.get("episodes") not in (None, "", "0")]
        pairs = [(float(r["episodic_return"]), int(r["episodes"])) for r in rows]
    except (OSError, ValueError, KeyError, TypeError, csv.Error):
        return None
    total, weight = 0.0, 0
    for mean, count in reversed(pairs):
        take = min(count, n - weight)
        total, weight = total + mean * take, weight + take
        if weight == n:
            return total / n
    return None


def collect(runs: list[Run]) -> list[Row]:
    """Each entry's finished summaries (with `train_last` added: the mean of the last LAST_EPISODES training
    episodes), its failed runs and its missing seeds."""
    rows: dict[Entry, Row] = {}
    for run in runs:
        row = rows.setdefault(run.entry, Row(run.entry))
        summary, problem = run_summary(run)
        why = problem or (failure(run.log_path) if summary is None else None)
        if summary is not None:
            summary["train_last"] = last_episodes_mean(run.directory / "metrics.csv")
            row.summaries.append(summary)
        elif why:
            row.failed.append((run.seed, why))
        else:
            row.missing.append(run.seed)
    return list(rows.values())


def verdict(row: Row) -> bool | None:
    """True if the row reaches its bar, False if not (or if runs are missing or failed), None if it has no bar
    and no failed run."""
    if row.failed:
        return False
    if row.entry.bar is None:
        return None
    threshold, rule = row.entry.bar
    evals = [s.get("eval_mean") for s in row.summaries]
    if row.missing or not evals or None in evals:
        return False
    return min(evals) >= threshold if rule == "each" else sum(evals) / len(evals) >= threshold


def number(x: float, digits: int = 1) -> str:
    """A return as the report prints it: `digits` decimals, or three significant figures for a fraction
    below 10 in size (FrozenLake's success rate of 0.729 would otherwise read 0.7)."""
    return f"{x:.3g}" if abs(x) < 10 and x != round(x) else f"{x:.{digits}f}"


def explain(row: Row) -> str:
    """The numbers behind a row's verdict, in words."""
    evals = [s["eval_mean"] for s in row.summaries if s.get("eval_mean") is not None]
    failures = [f"seed {seed} failed: {why}" for seed, why in row.failed]
    if row.missing and (failures or row.entry.bar is not None):
        failures.append("no finished run for seed " + ", ".join(map(str, row.missing)))
    if row.failed or (row.missing and row.entry.bar is not None):
        return "; ".join(failures)
    if row.entry.bar is None:
        return f"no bar (mean {number(sum(evals) / len(evals))})" if evals else "no bar"
    threshold, rule = row.entry.bar
    unevaluated = [s["seed"] for s in row.summaries if s.get("eval_mean") is None]
    if unevaluated:
        return "not evaluated: seed " + ", ".join(map(str, unevaluated))
    if rule == "each":
        below = [f"{s['seed']} ({number(s['eval_mean'])})" for s in row.summaries if s["eval_mean"] < threshold]
        if below:
            return f"below {threshold:g}: seed " + ", ".join(below)
        return f"every seed >= {threshold:g} (" + ", ".join(number(e) for e in evals) + ")"
    mean = sum(evals) / len(evals)
    return f"mean {number(mean)} {'>=' if mean >= threshold else '<'} {threshold:g}"


def label(row: Row) -> str:
    return {True: "pass", False: "FAIL", None: "report only"}[verdict(row)]


def spread(summaries: list[dict], key: str, absent: str) -> tuple[str, str]:
    """"mean ± std" over the seeds of a summary value, and "seed: value" for each seed that has it."""
    values = [(s["seed"], s[key]) for s in summaries if s.get(key) is not None]
    if not values:
        return (absent if summaries else "—"), ""
    mean = sum(v for _, v in values) / len(values)
    std = (sum((v - mean) ** 2 for _, v in values) / len(values)) ** 0.5
    return f"{number(mean)} ± {number(std)}", ", ".join(f"{seed}: {number(v, 0)}" for seed, v in values)


def report(runs: list[Run]) -> str:
    """A Markdown table: one row per entry over the seeds that finished, with bar and verdict if any."""
    rows = collect(runs)
    with_flags = any(r.entry.flags or r.entry.tag for r in rows)
    with_bars = any(verdict(r) is not None for r in rows)
    header = ["script", "env", *(["flags"] if with_flags else []), "seeds", "steps",
              "eval return (mean ± std over seeds)", "per seed",
              f"last {LAST_EPISODES} training episodes (mean ± std)", "per seed", "SPS", "wall time",
              *(["bar", "verdict"] if with_bars else [])]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        summaries, entry = row.summaries, row.entry
        evaluation, per_seed = spread(summaries, "eval_mean", "not evaluated")
        training, per_seed_training = spread(summaries, "train_last", "—")
        cells = [entry.script, entry.env_id]
        if with_flags:
            cells.append(" ".join(entry.flags) + (f" (tag {entry.tag})" if entry.tag else ""))
        cells.append(f"{len(summaries)}" + (f" (missing {', '.join(map(str, row.missing))})" if row.missing else "")
                     + (f" (failed {', '.join(str(seed) for seed, _ in row.failed)})" if row.failed else ""))
        if summaries:
            cells += [f"{max(s['global_step'] for s in summaries):,}", evaluation, per_seed, training, per_seed_training,
                      f"{sum(s['sps'] for s in summaries) / len(summaries):,.0f}",
                      f"{sum(s['wall_time'] for s in summaries) / len(summaries):.0f}s"]
        else:
            cells += ["—", evaluation, "", training, "", "—", "—"]
        if with_bars:
            bar = f"≥ {entry.bar[0]:g} {entry.bar[1]}" if entry.bar else ""
            cells += [bar, label(row) if verdict(row) is not False else f"FAIL: {explain(row)}".replace("|", "\\|")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def check(runs: list[Run]) -> int:
    """Prints each row's verdict; 1 if a row with a bar missed it or misses runs, or a run failed, else 0."""
    rows = collect(runs)
    for row in rows:
        print(f"{label(row):<11} {row.entry.script} {row.entry.env_id}"
              + (f" [{row.entry.tag}]" if row.entry.tag else "") + f": {explain(row)}")
    failed = [r for r in rows if verdict(r) is False]
    barred = [r for r in rows if r.entry.bar is not None]
    print(f"check: {sum(verdict(r) is True for r in rows)} of {len(barred)} rows with a bar pass"
          + (f"; failing: {', '.join(f'{r.entry.script} {r.entry.env_id}' for r in failed)}" if failed else ""))
    return 1 if failed else 0


def main(argv: list[str]) -> int:
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    args = tyro.cli(Args, args=own, description=__doc__)
    try:
        for flag in ("scripts", "env_ids", "seeds"):  # tyro reads a list flag given no value as an empty list
            if getattr(args, flag) == []:
                raise UsageError(f"--{flag.replace('_', '-')} needs at least one value (leave the flag out for the "
                                 "default)")
        for f in fields(Args):
            value = getattr(args, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise UsageError(f"--{f.name.replace('_', '-')} must be a finite number, got {value}")
        if args.progress_interval < 0:
            raise UsageError(f"--progress-interval must be 0 or more, got {args.progress_interval:g}")
        if args.workers is not None and args.workers <= 0:
            raise UsageError(f"--workers must be positive, got {args.workers}")
        if args.min_return is not None and args.min_mean_return is not None:
            raise UsageError("give --min-return or --min-mean-return, not both")
        entries, seeds = select(args.preset, args.scripts, args.env_ids, args.seeds, args.tag)
        check_names(plan(entries, seeds))
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.min_return is not None:
        entries = [replace(e, bar=(args.min_return, "each")) for e in entries]
    if args.min_mean_return is not None:
        entries = [replace(e, bar=(args.min_mean_return, "mean")) for e in entries]
    runs = plan(entries, seeds)
    if args.check:
        print(report(runs) + "\n")
        return check(runs)
    absent = sorted({r.entry.script for r in runs if not script_path(r.entry.script).is_file()})
    if absent:
        print(f"skipping the entries of {', '.join(absent)}: not in this checkout (reported as missing)")
    try:
        runner = make_runner(args.ray_address, args.cpus_per_run, args.gpus_per_run, args.max_retries)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        failed = execute([r for r in runs if r.entry.script not in absent], extra,
                         args.workers or runner.slots or os.cpu_count() or 1, args.progress_interval, runner)
    except KeyboardInterrupt as e:
        print(f"\ninterrupted{f' ({e})' if str(e) else ''}; finished runs are kept and skipped next time",
              file=sys.stderr)
        return interrupted(e)
    finally:
        runner.close()
    print(report(runs))
    if failed:
        print(f"{len(failed)} run(s) failed: " + ", ".join(
            f"{r.name} ({read_summary(r.summary_path)[1] or failure(r.log_path) or last_error(r.log_path)}; "
            f"log: {r.log_path})" for r in failed))
    missed = [r for r in collect(runs) if verdict(r) is False]
    if missed:
        print("failed, below the bar or missing runs: "
              + ", ".join(f"{r.entry.script} {r.entry.env_id}" for r in missed))
    return 1 if failed or missed else 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    sys.exit(main(sys.argv[1:]))
