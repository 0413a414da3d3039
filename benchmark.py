"""Run algorithm scripts on environments for several seeds, in parallel processes, and report.

    python benchmark.py --scripts ppo_continuous.py --env-ids Pendulum-v1 --seeds 1 2 3
    python benchmark.py --scripts ppo_continuous.py --env-ids HalfCheetah-v5 -- --total-timesteps 500000

Each run is `python <script> --env-id <env> --seed <seed> --run-name <env>__<script>__<seed>[__<tag>]
<flags after -->` writing to runs/<run-name>/ (its console output in runs/<run-name>/stdout.log).
A run whose summary.json exists is finished and is not run again, so an interrupted benchmark
picks up where it stopped (runs/ is under the current directory), and running the same command again just prints the report. The report
gives, per script and env, the mean and std over seeds of the final deterministic evaluation, the
steps, the steps per second and the wall time of each run.
"""

import itertools
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import tyro

ROOT = Path(__file__).resolve().parent


@dataclass
class Args:
    scripts: list[str] = field(default_factory=lambda: ["ppo_continuous.py"])
    """algorithm scripts to run"""
    env_ids: list[str] = field(default_factory=lambda: ["Pendulum-v1"])
    """environments to run each script on"""
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    """seeds to run each (script, env) with"""
    workers: int = os.cpu_count() or 1
    """runs at once (default: the number of cores; each run uses one torch thread)"""
    tag: str | None = None
    """appended to the run names, to keep runs with other flags apart"""
    progress_interval: float = 10.0
    """seconds between progress lines"""


@dataclass
class Run:
    script: str
    env_id: str
    seed: int
    name: str
    directory: Path

    @property
    def summary_path(self) -> Path:
        return self.directory / "summary.json"


def plan(args: Args) -> list[Run]:
    runs = []
    for script, env_id, seed in itertools.product(args.scripts, args.env_ids, args.seeds):
        name = f"{env_id}__{Path(script).stem}__{seed}" + (f"__{args.tag}" if args.tag else "")
        runs.append(Run(script, env_id, seed, name, Path("runs") / name))
    return runs


def launch(run: Run, extra: list[str]) -> subprocess.Popen:
    run.directory.mkdir(parents=True, exist_ok=True)
    log = open(run.directory / "stdout.log", "w")
    command = [sys.executable, str(ROOT / run.script), "--env-id", run.env_id, "--seed", str(run.seed),
               "--run-name", run.name, *extra]
    log.write(" ".join(command) + "\n")
    log.flush()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def execute(runs: list[Run], extra: list[str], workers: int, progress_interval: float) -> list[Run]:
    """Runs what is not finished yet, `workers` at a time; returns the runs that failed."""
    todo = [r for r in runs if not r.summary_path.exists()]
    skipped = len(runs) - len(todo)
    if skipped:
        print(f"{skipped} of {len(runs)} runs already finished; skipping them")
    running: dict[subprocess.Popen, tuple[Run, float]] = {}
    failed, durations = [], []
    start = last_report = time.time()
    while todo or running:
        while todo and len(running) < workers:
            run = todo.pop(0)
            running[launch(run, extra)] = (run, time.time())
        time.sleep(0.5)
        for process in [p for p in running if p.poll() is not None]:
            run, started = running.pop(process)
            durations.append(time.time() - started)
            if process.returncode != 0 or not run.summary_path.exists():
                failed.append(run)
                print(f"FAILED {run.name} (exit code {process.returncode}); last lines of its log:\n"
                      f"{tail(run.directory / 'stdout.log')}", flush=True)
            else:
                print(f"done   {run.name} in {durations[-1]:.0f}s", flush=True)
        if time.time() - last_report >= progress_interval and (todo or running):
            last_report = time.time()
            done = len(durations) - len(failed)
            mean_duration = sum(durations) / len(durations) if durations else None
            left = "?" if mean_duration is None else f"~{mean_duration * (len(todo) + len(running)) / workers:.0f}s"
            print(f"[{time.time() - start:5.0f}s] {done} done, {len(running)} running, {len(todo)} waiting, "
                  f"{len(failed)} failed; {left} left", flush=True)
    return failed


def report(runs: list[Run]) -> str:
    """A Markdown table: one row per (script, env) over the seeds that finished."""
    lines = ["| script | env | seeds | steps | eval return (mean ± std over seeds) | per seed | SPS | wall time |",
             "|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple[str, str], list[dict]] = {}
    for run in runs:
        if run.summary_path.exists():
            groups.setdefault((run.script, run.env_id), []).append(json.loads(run.summary_path.read_text()))
    for (script, env_id), summaries in groups.items():
        evals = [s["eval_mean"] for s in summaries if s.get("eval_mean") is not None]
        if evals:
            mean = sum(evals) / len(evals)
            std = (sum((e - mean) ** 2 for e in evals) / len(evals)) ** 0.5
            evaluation = f"{mean:.1f} ± {std:.1f}"
        else:
            evaluation = "not evaluated"
        per_seed = ", ".join(f"{s['seed']}: {s['eval_mean']:.0f}" for s in summaries if s.get("eval_mean") is not None)
        sps = sum(s["sps"] for s in summaries) / len(summaries)
        wall = sum(s["wall_time"] for s in summaries) / len(summaries)
        steps = max(s["global_step"] for s in summaries)
        lines.append(f"| {script} | {env_id} | {len(summaries)} | {steps:,} | {evaluation} | {per_seed} "
                     f"| {sps:,.0f} | {wall:.0f}s |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    args = tyro.cli(Args, args=own, description=__doc__)
    if args.workers <= 0:
        print(f"error: --workers must be positive, got {args.workers}", file=sys.stderr)
        return 2
    for script in args.scripts:
        if not (ROOT / script).is_file():
            print(f"error: no script {script} in {ROOT}", file=sys.stderr)
            return 2
    runs = plan(args)
    try:
        failed = execute(runs, extra, args.workers, args.progress_interval)
    except KeyboardInterrupt:
        print("\ninterrupted; finished runs are kept and skipped next time", file=sys.stderr)
        return 130
    print(report(runs))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
