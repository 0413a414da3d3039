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
"""

import csv
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro

from benchmark import Entry, UsageError, plan, select

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


def main(argv: list[str]) -> int:
    args = tyro.cli(Args, args=argv, description=__doc__)
    if plt is None:
        print("error: plot.py needs matplotlib: pip install -r requirements-dev.txt", file=sys.stderr)
        return 2
    try:
        if args.smooth < 1 or args.points < 2:
            raise UsageError("--smooth must be at least 1 and --points at least 2")
        entries, seeds = select(args.preset, args.scripts, args.env_ids, args.seeds, args.tag)
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
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
