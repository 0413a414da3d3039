"""Learning curves from the runs' metrics.csv files, as PNG files a README can embed.

    pip install -r requirements-dev.txt   # matplotlib: needed for plotting only, never for training
    python plot.py --preset full --out docs
    python plot.py --preset quick --runs-dir runs --out /tmp/plots
    python plot.py --scripts dqn.py ddqn.py --env-ids CartPole-v1 Acrobot-v1 --seeds 1 2 3 --out /tmp/plots

The runs are those benchmark.py would make for the same arguments (runs/<env>__<script>__<seed>[__<tag>]).
For each env, <out>/curves_<env-id>.png has two panels: the training episodic return against
environment steps, and against wall-clock seconds. Each algorithm (script) is one line, the mean
over seeds; the shaded band spans the lowest to the highest seed. <out>/curves_overview.png puts
every env's return-against-steps panel in one grid.

How a curve is made: a run's metrics.csv rows with an episodic_return (rows where no episode ended
leave it empty and are skipped) are smoothed by a rolling mean over --smooth rows, then
interpolated onto a grid of --points steps shared by the seeds, from the latest first logged step
to the earliest last one. On the wall-time panel a grid step sits at the mean over seeds of the
wall time at which the runs reached it (from the csv's time column). Runs without a metrics.csv
are skipped with a note.

With --aggregate (the MuJoCo suite: `python plot.py --preset mujoco --out docs/mujoco --aggregate`), each
run's score (--score: the final evaluation, or the mean of its last 100 training episodes) is normalised
by a random policy's and a reference's return for its env (REFERENCES), and rliable draws, per script
over its envs and seeds, the interquartile mean, median, mean and optimality gap with 95%
stratified-bootstrap intervals (aggregate_<score>.png) and a performance profile (profile_<score>.png),
as Agarwal et al. (2021, "Deep Reinforcement Learning at the Edge of the Statistical Precipice") advise
for few seeds.
"""

import csv
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import tyro

from benchmark import Entry, UsageError, last_episodes_mean, plan, read_summary, select

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    plt = None


@dataclass
class Args:
    preset: str | None = None
    """plot a preset's runs: full or quick (see benchmark.py)"""
    scripts: list[str] | None = None
    """scripts to plot (default ppo_continuous.py); with a preset, the entries to keep"""
    env_ids: list[str] | None = None
    """envs to plot (default Pendulum-v1); with a preset, the entries to keep"""
    seeds: list[int] | None = None
    """seeds (default 1 2 3, or the preset's)"""
    tag: str | None = None
    """the tag given to benchmark.py, if any"""
    runs_dir: Path = Path("runs")
    """where the run directories are"""
    out: Path = Path("plots")
    """folder for the PNG files (made if missing)"""
    smooth: int = 10
    """rolling mean over this many logged returns (1: none)"""
    points: int = 200
    """points on the shared step grid"""
    aggregate: bool = False
    """also draw aggregate_<score>.png and profile_<score>.png: each script's normalised scores over its envs
    (interquartile mean, median, mean, optimality gap with 95% stratified-bootstrap intervals; a performance
    profile), with rliable. Every env needs a reference score (REFERENCES)"""
    score: Literal["eval", "train"] = "eval"
    """--aggregate's score per run: eval, the final deterministic evaluation (summary.json), or train, the mean
    return of the last 100 training episodes (metrics.csv)"""
    reps: int = 20000
    """bootstrap resamples for --aggregate's intervals"""


# Normalised score = (score - random) / (reference - random). random: a uniform random policy's mean return over
# 100 episodes of the v5 env (measured here; docs/results_mujoco.md has the command). reference: OpenAI Baselines'
# PPO (ppo2) at 1M steps on the v2 env (benchmarks_mujoco1M.htm of openai/baselines, 6 seeds); Ant, which that page
# lacks, from the PPO column of the TD3 paper's Table 1 (Fujimoto et al. 2018: Baselines' PPO, v1, 10 seeds).
REFERENCES: dict[str, tuple[float, float]] = {
    "HalfCheetah-v5": (-282.5, 1668.58),
    "Hopper-v5": (16.7, 2316.16),
    "Walker2d-v5": (1.8, 3424.95),
    "Ant-v5": (-48.0, 1083.20),
    "Swimmer-v5": (0.8, 111.19),
    "InvertedDoublePendulum-v5": (49.1, 7102.91),
}


@dataclass
class Curve:
    label: str
    seeds: int
    steps: np.ndarray
    """the shared grid of environment steps"""
    seconds: np.ndarray
    """mean over seeds of the wall time at each grid step"""
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray


def read_run(path: Path, smooth: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """(steps, smoothed returns) of the rows with a return, and (steps, time) of all rows; None if no return."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    all_steps = np.array([float(r["global_step"]) for r in rows])
    times = np.array([float(r["time"]) for r in rows])
    logged = [r for r in rows if r.get("episodic_return") not in (None, "")]
    if not logged:
        return None
    steps = np.array([float(r["global_step"]) for r in logged])
    returns = np.array([float(r["episodic_return"]) for r in logged])
    window = max(1, min(smooth, len(returns)))
    # Rolling mean over the last `window` rows (fewer at the start).
    cumulative = np.cumsum(np.insert(returns, 0, 0.0))
    counts = np.minimum(np.arange(1, len(returns) + 1), window)
    smoothed = (cumulative[1:] - cumulative[np.arange(1, len(returns) + 1) - counts]) / counts
    return steps, smoothed, all_steps, times


def algorithm_label(entry: Entry) -> str:
    """One line (and color) per script, and per tag: a tagged entry runs the script with other flags."""
    return Path(entry.script).stem + (f" [{entry.tag}]" if entry.tag else "")


def curve(entry: Entry, seeds: list[int], runs_dir: Path, smooth: int, points: int) -> Curve | None:
    """The mean and min..max band over the seeds whose runs have logged returns."""
    runs, missing, unfinished = [], [], []
    for run in plan([entry], seeds, runs_dir):
        path = run.directory / "metrics.csv"
        data = read_run(path, smooth) if path.is_file() else None
        if data is None:
            missing.append(str(run.seed))
        elif run.summary_path.is_file():
            runs.append(data)
        else:
            unfinished.append((str(run.seed), data))
    name = f"{entry.script} {entry.env_id}" + (f" [{entry.tag}]" if entry.tag else "")
    if missing:
        print(f"note: {name}: no metrics.csv with returns under {runs_dir} for seed {', '.join(missing)}; skipped")
    if unfinished:
        # The mean runs over the steps all seeds share, so a run that stopped early would cut every
        # seed's curve short: unfinished runs are drawn only when no run has finished yet.
        seeds_unfinished = ", ".join(seed for seed, _ in unfinished)
        if runs:
            print(f"note: {name}: seed {seeds_unfinished} not finished (no summary.json); left out")
        else:
            print(f"note: {name}: seed {seeds_unfinished} not finished (no summary.json); plotted so far")
            runs = [data for _, data in unfinished]
    if not runs:
        return None
    first, last = max(r[0][0] for r in runs), min(r[0][-1] for r in runs)
    if first >= last:
        print(f"note: {name}: the seeds' logged steps do not overlap; skipped")
        return None
    grid = np.linspace(first, last, points)
    returns = np.array([np.interp(grid, steps, smoothed) for steps, smoothed, _, _ in runs])
    seconds = np.array([np.interp(grid, all_steps, times) for _, _, all_steps, times in runs]).mean(axis=0)
    return Curve(algorithm_label(entry), len(runs), grid, seconds, returns.mean(axis=0), returns.min(axis=0), returns.max(axis=0))


def steps_axis(ax):
    ax.set_xlabel("environment steps")
    ax.xaxis.set_major_formatter(lambda x, _: f"{x / 1e6:g}M" if x >= 1e6 else f"{x / 1e3:g}k" if x >= 1e3
                                 else f"{x:g}")


def draw(ax, curve: Curve, x: np.ndarray, color):
    ax.plot(x, curve.mean, color=color, label=f"{curve.label} ({curve.seeds} seed{'s' * (curve.seeds > 1)})")
    ax.fill_between(x, curve.low, curve.high, color=color, alpha=0.2, linewidth=0)


def normalised_scores(entries: list[Entry], seeds: list[int], runs_dir: Path, score: str) -> dict[str, np.ndarray]:
    """Per script label, an array (seeds, envs) of normalised scores over the entries' finished runs: the
    shape rliable takes. A script needs every seed finished on every one of its envs; else it is left out
    with a note."""
    by_label: dict[str, list[Entry]] = {}
    for entry in entries:
        by_label.setdefault(algorithm_label(entry), []).append(entry)
    scores = {}
    for label, label_entries in by_label.items():
        table, absent = [], []
        for entry in label_entries:
            random, reference = REFERENCES[entry.env_id]
            column = []
            for run in plan([entry], seeds, runs_dir):
                summary, _ = read_summary(run.summary_path)
                value = None if summary is None else (
                    summary.get("eval_mean") if score == "eval" else last_episodes_mean(run.directory / "metrics.csv"))
                if value is None:
                    absent.append(run.name)
                column.append(None if value is None else (value - random) / (reference - random))
            table.append(column)
        if absent:
            print(f"note: {label} left out of the aggregate: no {score} score for {', '.join(absent)}")
            continue
        scores[label] = np.array(table, dtype=float).T
    return scores


def draw_aggregate(scores: dict[str, np.ndarray], out: Path, score: str, reps: int, colors: dict) -> list[Path]:
    """aggregate_<score>.png (point estimates and 95% intervals of four aggregates) and profile_<score>.png
    (the fraction of runs above each normalised score), drawn with rliable."""
    import warnings

    from rliable import library as rly, metrics, plot_utils

    def aggregates(x):
        return np.array([metrics.aggregate_iqm(x), metrics.aggregate_median(x), metrics.aggregate_mean(x),
                         metrics.aggregate_optimality_gap(x)])

    with warnings.catch_warnings():  # arch's FutureWarning about the RandomState that rliable passes it
        warnings.filterwarnings("ignore", category=FutureWarning, module="arch")
        estimates, intervals = rly.get_interval_estimates(scores, aggregates, reps=reps, confidence_interval_size=0.95,
                                                          random_state=np.random.RandomState(0))
    labels = list(scores)
    what = "final deterministic evaluation" if score == "eval" else "mean of the last 100 training episodes"
    fig, axes = plot_utils.plot_interval_estimates(
        estimates, intervals, metric_names=["IQM", "Median", "Mean", "Optimality gap"], algorithms=labels,
        colors={label: colors[label] for label in labels}, xlabel="normalised score", xlabel_y_coordinate=-0.3,
        subfigure_width=3.2, row_height=0.6)
    fig.suptitle(f"Normalised {what} (0: random policy, 1: OpenAI Baselines' PPO at 1M); each script over its envs and "
                 f"seeds, 95% stratified-bootstrap intervals", fontsize="medium", y=1.3)
    paths = [out / f"aggregate_{score}.png"]
    fig.savefig(paths[0], dpi=100, bbox_inches="tight")
    plt.close(fig)
    taus = np.linspace(0.0, max(2.0, float(max(s.max() for s in scores.values()))), 101)
    profiles, profile_intervals = rly.create_performance_profile(scores, taus)
    fig, ax = plt.subplots(figsize=(6, 4))
    plot_utils.plot_performance_profiles(profiles, taus, performance_profile_cis=profile_intervals,
                                         colors={label: colors[label] for label in labels}, ax=ax,
                                         xlabel=r"normalised score $\tau$", ylabel=r"fraction of runs with score > $\tau$")
    ax.legend([plt.Line2D([], [], color=colors[label]) for label in labels], labels, loc="upper right")
    ax.set_title(f"Performance profile: {what}", fontsize="small")
    paths.append(out / f"profile_{score}.png")
    fig.savefig(paths[1], dpi=100, bbox_inches="tight")
    plt.close(fig)
    for label in labels:
        iqm, median, mean, gap = estimates[label]
        low, high = intervals[label][:, 0]
        print(f"{label}: IQM {iqm:.3f} [{low:.3f}, {high:.3f}], median {median:.3f}, mean {mean:.3f}, "
              f"optimality gap {gap:.3f} ({scores[label].size} runs)")
    return paths


def main(argv: list[str]) -> int:
    args = tyro.cli(Args, args=argv, description=__doc__)
    if plt is None:
        print("error: plot.py needs matplotlib: pip install -r requirements-dev.txt", file=sys.stderr)
        return 2
    try:
        if args.smooth < 1 or args.points < 2:
            raise UsageError("--smooth must be at least 1 and --points at least 2")
        if args.reps < 100:
            raise UsageError(f"--reps must be at least 100, got {args.reps}")
        entries, seeds = select(args.preset, args.scripts, args.env_ids, args.seeds, args.tag)
        if args.aggregate:
            unknown = sorted({e.env_id for e in entries} - set(REFERENCES))
            if unknown:
                raise UsageError(f"--aggregate needs a reference score for {', '.join(unknown)} (REFERENCES in plot.py "
                                 f"has {', '.join(REFERENCES) or 'none'})")
            try:
                import rliable  # noqa: F401
            except ImportError:
                raise UsageError("--aggregate needs rliable: pip install -r requirements-dev.txt") from None
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    labels = sorted({algorithm_label(e) for e in entries})
    colors = {label: plt.cm.tab10(i % 10) for i, label in enumerate(labels)}  # one color per algorithm everywhere
    curves: dict[str, list[Curve]] = {}
    for entry in entries:
        c = curve(entry, seeds, args.runs_dir, args.smooth, args.points)
        curves.setdefault(entry.env_id, [])
        if c is not None:
            curves[entry.env_id].append(c)
    for env_id in [e for e, cs in curves.items() if not cs]:
        print(f"note: no runs of {env_id} to plot")
        del curves[env_id]
    if not curves:
        print(f"error: no runs with metrics.csv found under {args.runs_dir}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    band = "line: mean over seeds, band: lowest to highest seed"
    for env_id, env_curves in curves.items():
        fig, (by_steps, by_time) = plt.subplots(1, 2, figsize=(12, 4.2))
        for c in env_curves:
            draw(by_steps, c, c.steps, colors[c.label])
            draw(by_time, c, c.seconds, colors[c.label])
        steps_axis(by_steps)
        by_time.set_xlabel("wall-clock seconds")
        for ax in (by_steps, by_time):
            ax.set_ylabel("episodic return (training)")
            ax.grid(alpha=0.3)
        by_steps.legend(loc="best", fontsize="small")
        fig.suptitle(f"{env_id} ({band})")
        fig.tight_layout()
        path = args.out / f"curves_{env_id}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        print(f"wrote {path}")
    columns = min(4, len(curves))
    rows = -(-len(curves) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False)
    for ax, (env_id, env_curves) in zip(axes.flat, curves.items()):
        for c in env_curves:
            draw(ax, c, c.steps, colors[c.label])
        ax.set_title(env_id)
        steps_axis(ax)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(curves):]:
        ax.set_visible(False)
    shown = [label for label in labels if any(c.label == label for cs in curves.values() for c in cs)]
    handles = [plt.Line2D([], [], color=colors[label]) for label in shown]
    fig.legend(handles, shown, loc="lower center", ncol=min(len(shown), 6), frameon=False)
    fig.suptitle(f"Episodic return (training) against environment steps; {band}")
    fig.tight_layout(rect=(0, 0.06 if rows > 1 else 0.1, 1, 1))
    path = args.out / "curves_overview.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")
    if args.aggregate:
        scores = normalised_scores(entries, seeds, args.runs_dir, args.score)
        if not scores:
            print("error: no script has a finished run on every env and seed to aggregate", file=sys.stderr)
            return 1
        for path in draw_aggregate(scores, args.out, args.score, args.reps, colors):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
