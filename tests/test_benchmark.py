"""benchmark.py and plot.py: run naming, presets, --check against the bars, failing runs, the
estimate of the time left, and the plots, on synthetic run directories and tiny stand-in scripts."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from conftest import ROOT

import benchmark
import plot
from benchmark import Entry, Preset


def write_run(runs_dir, name, seed, eval_mean, returns=None, wall_time=10.0):
    """A finished run: summary.json, and metrics.csv with one row per 100 steps if returns are given."""
    directory = runs_dir / name
    directory.mkdir(parents=True)
    steps = 100 * len(returns) if returns else 1000
    (directory / "summary.json").write_text(json.dumps(
        {"algorithm": name.split("__")[1], "env_id": name.split("__")[0], "seed": seed, "global_step": steps,
         "wall_time": wall_time, "sps": 100, "eval_mean": eval_mean, "eval_std": 0.0}))
    if returns:
        lines = ["global_step,time,episodic_return"]
        lines += [f"{100 * (i + 1)},{i + 1.0},{'' if r is None else r}" for i, r in enumerate(returns)]
        (directory / "metrics.csv").write_text("\n".join(lines) + "\n")


TEST_PRESET = Preset(seeds=(1, 2, 3), entries=(
    Entry("algo_a.py", "Env-v0", bar=(100, "each")),
    Entry("algo_b.py", "Env-v0", ("--total-timesteps", "5"), bar=(50, "mean")),
    Entry("algo_b.py", "Other-v0"),  # report only
))


@pytest.fixture
def test_preset(monkeypatch, in_tmp):
    """The preset "test" (TEST_PRESET) with its runs finished, each at or above its bar."""
    monkeypatch.setitem(benchmark.PRESETS, "test", TEST_PRESET)
    runs = in_tmp / "runs"
    for seed, (a, b) in zip((1, 2, 3), ((100.0, 20.0), (120.0, 60.0), (100.0, 70.0))):  # b: mean 50
        write_run(runs, f"Env-v0__algo_a__{seed}", seed, a)
        write_run(runs, f"Env-v0__algo_b__{seed}", seed, b)
        write_run(runs, f"Other-v0__algo_b__{seed}", seed, -1e6)
    return in_tmp


def with_bar(monkeypatch, index, bar):
    entries = list(TEST_PRESET.entries)
    entries[index] = Entry(entries[index].script, entries[index].env_id, entries[index].flags, bar=bar)
    monkeypatch.setitem(benchmark.PRESETS, "test", Preset(tuple(entries), TEST_PRESET.seeds))


def test_full_preset_run_names_and_flags():
    entries, seeds = benchmark.select("full", None, None, None)
    names = [r.name for r in benchmark.plan(entries, seeds)]
    assert seeds == [1, 2, 3] and len(names) == 3 * len(benchmark.PRESETS["full"].entries) == 69
    assert "LunarLander-v3__a2c__2" in names and "Pendulum-v1__ppo_continuous__1" in names
    assert "FrozenLake-v1__ppo_discrete__3" in names and "Taxi-v4__dqn__1" in names
    # No tags but on the two CartPole-v1 overestimation rows and the tuned a2c.py Pendulum-v1 row, which must not
    # share the default runs' names; the tuned row runs on its own seeds, 4 5 6, not those it was tuned on.
    tagged = sorted(name for name in names if name.count("__") != 2)
    assert tagged == sorted([*(f"CartPole-v1__{s}__{i}__tnf256" for s in ("dqn", "ddqn") for i in (1, 2, 3)),
                             *(f"Pendulum-v1__a2c__{i}__tuned" for i in (4, 5, 6))])
    tuned = next(e for e in entries if e.tag == "tuned")
    assert tuned.flags == ("--total-timesteps", "1000000", "--norm-obs", "--norm-reward", "--learning-rate", "0.0027",
                           "--optimizer", "rmsprop", "--gamma", "0.9", "--gae-lambda", "0.8", "--ent-coef", "2.05e-05",
                           "--vf-coef", "0.493", "--max-grad-norm", "0.3", "--num-envs", "16", "--num-steps", "32",
                           "--norm-adv") and tuned.bar == (-250, "mean")
    assert not any("__ddpg__" in name and "HalfCheetah" in name for name in names)  # the offpolicy preset's row
    # --seeds replaces an entry's own seeds too.
    entries_7, _ = benchmark.select("full", ["a2c.py"], ["Pendulum-v1"], [7])
    assert [r.name for r in benchmark.plan(entries_7, [7])] == ["Pendulum-v1__a2c__7", "Pendulum-v1__a2c__7__tuned"]
    taxi = next(e for e in entries if e.env_id == "Taxi-v4")
    assert taxi.script == "dqn.py" and taxi.flags == (
        "--total-timesteps", "150000", "--hidden-sizes", "64", "64", "--exploration-fraction", "0.3",
        "--gradient-steps", "64", "--eval-episodes", "100") and taxi.bar == (7, "each")
    assert benchmark.number(0.7286) == "0.729" and benchmark.number(-135.71) == "-135.7"
    assert benchmark.number(8.03, 0) == "8.03" and benchmark.number(500.0, 0) == "500"
    a2c_lunar = next(e for e in entries if e.script == "a2c.py" and e.env_id == "LunarLander-v3")
    assert a2c_lunar.flags == ("--total-timesteps", "1000000", "--gamma", "0.995", "--learning-rate", "8.3e-4",
                               "--ent-coef", "1e-5") and a2c_lunar.bar == (150, "mean")
    # --scripts / --env-ids keep a subset, --seeds replaces the seeds, --tag is appended.
    entries, seeds = benchmark.select("full", ["dqn.py", "ddqn.py"], ["CartPole-v1"], [7], tag="t")
    assert [r.name for r in benchmark.plan(entries, seeds)] == [
        "CartPole-v1__dqn__7__t", "CartPole-v1__ddqn__7__t", "CartPole-v1__dqn__7__tnf256__t",
        "CartPole-v1__ddqn__7__tnf256__t"]
    quick, quick_seeds = benchmark.select("quick", None, None, None)
    assert quick_seeds == [1] and {("ppo_discrete.py", "CartPole-v1"), ("dqn.py", "CartPole-v1")} <= {
        (e.script, e.env_id) for e in quick}
    assert all(e.bar is not None for e in quick)


def test_offpolicy_preset_runs_each_suite_row_with_its_named_flag_set():
    entries, seeds = benchmark.select("offpolicy", None, None, None)
    names = [r.name for r in benchmark.plan(entries, seeds)]
    assert seeds == [1, 2, 3] and len(names) == 18
    # Untagged but for HalfCheetah, whose untagged names are the full preset's earlier runs with other flags.
    assert sorted(name for name in names if name.count("__") != 2) == [
        f"HalfCheetah-v5__ddpg__{seed}__mujoco" for seed in (1, 2, 3)]
    flags = {(e.script, e.env_id): e.flags for e in entries}
    for env_id in ("HalfCheetah-v5", "Hopper-v5", "Walker2d-v5"):  # one MuJoCo set, unchanged on every row
        assert flags["ddpg.py", env_id] == benchmark.DDPG_MUJOCO
    assert flags["ddpg.py", "LunarLanderContinuous-v3"] == benchmark.DDPG_BOX2D
    assert flags["dqn.py", "MountainCar-v0"] == flags["ddqn.py", "MountainCar-v0"] == benchmark.MOUNTAINCAR_DQN
    assert "--gamma" in benchmark.DDPG_MUJOCO and "--learning-rate" in benchmark.DDPG_MUJOCO



def test_ad_hoc_plan_without_preset():
    entries, seeds = benchmark.select(None, ["ppo_discrete.py", "a2c.py"], ["CartPole-v1", "Acrobot-v1"], [4, 5],
                                      tag="quick")
    names = [r.name for r in benchmark.plan(entries, seeds)]
    assert len(names) == 8 and names[0] == "CartPole-v1__ppo_discrete__4__quick"
    assert all(e.bar is None and e.flags == () for e in entries)


def test_check_passes_at_and_above_the_bars(test_preset, capsys):
    assert benchmark.main(["--preset", "test", "--check"]) == 0
    out = capsys.readouterr().out
    assert "check: 2 of 2 rows with a bar pass" in out and "FAIL" not in out
    assert "| ≥ 100 each | pass |" in out and "| ≥ 50 mean | pass |" in out


@pytest.mark.parametrize("index, bar, reason, summary", [
    (0, (100.5, "each"), "below 100.5: seed 1 (100.0), 3 (100.0)", "1 of 2"),  # two seeds sit exactly at 100
    (1, (50.5, "mean"), "mean 50.0 < 50.5", "1 of 2"),
    # A report-only row given a bar: now three rows have one, two pass.
    (2, (0, "each"), "below 0: seed 1 (-1000000.0), 2 (-1000000.0), 3 (-1000000.0)", "2 of 3"),
])
def test_check_fails_when_a_bar_is_raised_above_the_runs(test_preset, monkeypatch, capsys, index, bar, reason,
                                                         summary):
    with_bar(monkeypatch, index, bar)
    assert benchmark.main(["--preset", "test", "--check"]) == 1
    out = capsys.readouterr().out
    assert f"FAIL        {TEST_PRESET.entries[index].script} {TEST_PRESET.entries[index].env_id}: {reason}" in out
    assert f"check: {summary} rows with a bar pass" in out


def test_check_fails_on_missing_runs(test_preset, capsys):
    (test_preset / "runs" / "Env-v0__algo_a__3" / "summary.json").unlink()  # an unfinished run
    assert benchmark.main(["--preset", "test", "--check"]) == 1
    assert "FAIL        algo_a.py Env-v0: no finished run for seed 3" in capsys.readouterr().out
    # Seeds that were never run count as missing too; a subset of the entries can still pass.
    assert benchmark.main(["--preset", "test", "--check", "--seeds", "1", "2", "4"]) == 1
    assert "no finished run for seed 4" in capsys.readouterr().out
    assert benchmark.main(["--preset", "test", "--check", "--scripts", "algo_b.py"]) == 0


def test_check_ad_hoc_with_min_return(in_tmp, capsys):
    for seed, value in ((1, 500.0), (2, 480.0)):
        write_run(in_tmp / "runs", f"CartPole-v1__ppo_discrete__{seed}", seed, value)
    base = ["--scripts", "ppo_discrete.py", "--env-ids", "CartPole-v1", "--seeds", "1", "2", "--check"]
    assert benchmark.main([*base, "--min-return", "480"]) == 0
    assert benchmark.main([*base, "--min-return", "481"]) == 1
    assert benchmark.main([*base, "--min-mean-return", "490"]) == 0
    assert benchmark.main([*base, "--min-mean-return", "490.5"]) == 1
    assert benchmark.main(base) == 0  # no bar: report only
    assert "FAIL        ppo_discrete.py CartPole-v1: mean 490.0 < 490.5" in capsys.readouterr().out


STAND_IN = """
import argparse, json, pathlib, sys, time
parser = argparse.ArgumentParser()
for flag in ("--env-id", "--seed", "--run-name", "--total-timesteps"):
    parser.add_argument(flag)
args = parser.parse_args()
print(f"step {{500:>9}}/{{args.total_timesteps}} |  1234 SPS | return 1.0", flush=True)
{body}
"""


def test_a_failing_run_is_reported_with_its_log_and_others_finish(in_tmp, capsys):
    (in_tmp / "good.py").write_text(STAND_IN.format(body=textwrap.dedent("""
        time.sleep(0.5)
        run = pathlib.Path("runs") / args.run_name
        run.mkdir(parents=True, exist_ok=True)
        (run / "summary.json").write_text(json.dumps({"seed": int(args.seed), "global_step": 1000,
            "wall_time": 0.5, "sps": 2000, "eval_mean": 7.0}))""")))
    # Seed 1 fails last; the summary still lists the failures in the plan's order.
    (in_tmp / "bad.py").write_text(STAND_IN.format(
        body='time.sleep(1.0 if args.seed == "1" else 0); print("something broke in", args.env_id); sys.exit(1)'))
    argv = ["--scripts", "bad.py", "good.py", "--env-ids", "Env-v0", "--seeds", "1", "2", "--workers", "2",
            "--progress-interval", "0", "--", "--total-timesteps", "1000"]
    assert benchmark.main(argv) == 1
    out = capsys.readouterr().out
    for seed in (1, 2):
        assert f"FAILED Env-v0__bad__{seed} (exit code 1)" in out
        assert f"done   Env-v0__good__{seed}" in out
        assert (in_tmp / "runs" / f"Env-v0__good__{seed}" / "summary.json").is_file()
        log = (in_tmp / "runs" / f"Env-v0__bad__{seed}" / "stdout.log").read_text().splitlines()
        assert log[0].endswith(f"bad.py --env-id Env-v0 --seed {seed} --run-name Env-v0__bad__{seed} "
                               "--total-timesteps 1000")  # the command, with the flags after --
    assert "something broke in Env-v0" in out  # the log's tail
    assert "| good.py | Env-v0 | 2 | 1,000 | 7.0 ± 0.0 |" in out
    assert out.index("FAILED Env-v0__bad__2") < out.index("FAILED Env-v0__bad__1")  # ended in that order
    assert "2 run(s) failed: Env-v0__bad__1" in out
    # A rerun skips the finished runs and tries the failed ones again.
    assert benchmark.main(argv) == 1
    out = capsys.readouterr().out
    assert "2 of 4 runs already finished; skipping them" in out and "done   Env-v0__good" not in out
    assert out.count("FAILED Env-v0__bad__") == 2


def test_a_diverged_run_and_a_nan_evaluation_fail_with_their_error_line(in_tmp, capsys):
    # A run that stops with exit code 3 (diverged: no summary.json), and a run of a script that did not notice its
    # divergence and wrote NaN as its evaluation: both fail, with bar or without, then and in --check.
    (in_tmp / "diverges.py").write_text(STAND_IN.format(body=textwrap.dedent("""
        print("error: training diverged at step 500: q_loss is nan; try a lower --learning-rate", file=sys.stderr)
        sys.exit(3)""")))
    (in_tmp / "nan.py").write_text(STAND_IN.format(body=textwrap.dedent("""
        run = pathlib.Path("runs") / args.run_name
        run.mkdir(parents=True, exist_ok=True)
        (run / "summary.json").write_text(json.dumps({"seed": int(args.seed), "global_step": 1000,
            "wall_time": 0.5, "sps": 2000, "eval_mean": float("nan")}))""")))
    # Seed 2 of nan.py finished before, its summary.json cut short: skipped, not read into a traceback.
    (in_tmp / "runs" / "Env-v0__nan__2").mkdir(parents=True)
    (in_tmp / "runs" / "Env-v0__nan__2" / "summary.json").write_text('{"seed": 2, "global_step": 1000, "wall_t')
    argv = ["--scripts", "diverges.py", "nan.py", "--env-ids", "Env-v0", "--seeds", "1", "2", "--workers", "3",
            "--progress-interval", "0"]
    assert benchmark.main(argv) == 1
    out = capsys.readouterr().out
    error = "error: training diverged at step 500: q_loss is nan; try a lower --learning-rate"
    for seed in (1, 2):
        assert f"FAILED Env-v0__diverges__{seed} (exit code 3): {error}; last lines of" in out
    assert "FAILED Env-v0__nan__1 (exit code 0): runs/Env-v0__nan__1/summary.json: eval_mean is nan: the run diverged" in out
    assert "1 of 4 runs already finished; skipping them (1 with a damaged or NaN summary.json" in out
    assert (f"3 run(s) failed: Env-v0__diverges__1 (exit code 3: {error}; log: runs/Env-v0__diverges__1/stdout.log)"
            in out)
    assert "done   " not in out and "| diverges.py | Env-v0 | 0 (failed 1, 2) |" in out
    assert benchmark.main([*argv, "--check"]) == 1
    out = capsys.readouterr().out
    assert (f"FAIL        diverges.py Env-v0: seed 1 failed: exit code 3: {error}; seed 2 failed: exit code 3: {error}\n"
            in out)
    assert ("FAIL        nan.py Env-v0: seed 1 failed: runs/Env-v0__nan__1/summary.json: eval_mean is nan: the run "
            "diverged; seed 2 failed: runs/Env-v0__nan__2/summary.json: not valid JSON (Unterminated string") in out
    assert "check: 0 of 0 rows with a bar pass; failing: diverges.py Env-v0, nan.py Env-v0" in out


@pytest.mark.parametrize("summary, problem", [
    ('{"seed": 2, "global_step": 1000, "wall_ti', 'not valid JSON (Unterminated string starting at: line 1 column 34'),
    ('{"seed": 2, "global_step": 1000, "wall_time": 10.0, "eval_mean": 100.0}', "no sps"),
    ('{"seed": 2, "global_step": 1000, "wall_time": 10.0, "sps": 100, "eval_mean": "100"}',
     'eval_mean is "100", not a number'),
    ('{"seed": 2, "global_step": 1e3, "wall_time": 10.0, "sps": 100, "eval_mean": 100.0}',
     "global_step is 1000.0, not an integer"),
    ('[100.0]', "holds a JSON list, not an object"),
    # NaN compares False with the bar, and min() over seeds 1 to 3 would skip it: the row used to pass.
    ('{"seed": 2, "global_step": 1000, "wall_time": 10.0, "sps": 100, "eval_mean": NaN}',
     "eval_mean is nan: the run diverged"),
    ('{"seed": 2, "global_step": 1000, "wall_time": 10.0, "sps": 100, "eval_mean": -Infinity}',
     "eval_mean is -inf: the run diverged"),
])
def test_check_reports_a_damaged_or_nan_summary_as_a_failed_run(test_preset, capsys, summary, problem):
    path = test_preset / "runs" / "Env-v0__algo_a__2" / "summary.json"
    path.write_text(summary)
    assert benchmark.main(["--preset", "test", "--check"]) == 1
    out, err = capsys.readouterr()
    assert err == "" and "Traceback" not in out
    assert (f"FAIL        algo_a.py Env-v0: seed 2 failed: runs/Env-v0__algo_a__2/summary.json: {problem}" in out)
    assert "| algo_a.py | Env-v0 |  | 2 (failed 2) | 1,000 | 100.0 ± 0.0 | 1: 100, 3: 100 |" in out
    assert "check: 1 of 2 rows with a bar pass; failing: algo_a.py Env-v0" in out
    # A report-only row with a failed run fails too.
    path.write_text('{"seed": 2, "global_step": 1000, "wall_time": 10.0, "sps": 100, "eval_mean": 100.0}')
    (test_preset / "runs" / "Other-v0__algo_b__3" / "summary.json").write_text(summary)
    assert benchmark.main(["--preset", "test", "--check"]) == 1
    assert "FAIL        algo_b.py Other-v0: seed 3 failed: runs/Other-v0__algo_b__3/summary.json: " in (
        capsys.readouterr().out)


def test_a_preset_entry_without_its_script_is_skipped_and_reported_missing(in_tmp, monkeypatch, capsys):
    (in_tmp / "good.py").write_text(STAND_IN.format(body=textwrap.dedent("""
        run = pathlib.Path("runs") / args.run_name
        run.mkdir(parents=True, exist_ok=True)
        (run / "summary.json").write_text(json.dumps({"seed": int(args.seed), "global_step": 1000,
            "wall_time": 0.5, "sps": 2000, "eval_mean": 7.0}))""")))
    monkeypatch.setitem(benchmark.PRESETS, "test", Preset(seeds=(1,), entries=(
        Entry("good.py", "Env-v0", ("--total-timesteps", "1000"), bar=(7, "each")),
        Entry("absent.py", "Env-v0", bar=(0, "mean")))))
    assert benchmark.main(["--preset", "test"]) == 1
    out = capsys.readouterr().out
    assert "skipping the entries of absent.py: not in this checkout" in out
    assert ("| good.py | Env-v0 | --total-timesteps 1000 | 1 | 1,000 | 7.0 ± 0.0 | 1: 7 | — |  | 2,000 | 0s "
            "| ≥ 7 each | pass |") in out
    assert "FAIL: no finished run for seed 1" in out and not (in_tmp / "runs" / "Env-v0__absent__1").exists()
    assert benchmark.main(["--preset", "test", "--scripts", "good.py"]) == 0  # finished: skipped, passes
    assert "1 of 1 runs already finished" in capsys.readouterr().out


def test_progress_and_time_left(tmp_path):
    log = tmp_path / "stdout.log"
    log.write_text("python x.py\n" + "noise\n" * 2000 + "step      6144/100000 |  1182 SPS | return -500.0\n"
                   "step     41740/100000 |  8347 SPS | return 3\n")
    assert benchmark.read_progress(log) == (41740, 100000, 8347)
    assert benchmark.read_progress(tmp_path / "none.log") is None
    # Two workers busy for 10 and 20 more seconds, then two 30-second runs: the first starts at 10,
    # the second at 20, so all end at 50.
    assert benchmark.time_left([10.0, 20.0], [30.0, 30.0], 2) == 50.0
    assert benchmark.time_left([10.0], [30.0], 2) == 30.0  # the idle worker takes it
    assert benchmark.time_left([10.0], [30.0, 30.0, 30.0], 3) == 40.0  # the third waits for the busy one
    assert benchmark.time_left([], [], 2) == 0.0


def test_time_left_of_a_run_follows_its_recent_rate():
    # 10,000 random steps in the first 10 s, then 20 steps a second: 286,000 steps left take 14,300 s,
    # not the ~4,100 s that the average since the start (70 steps a second) would promise.
    history = [(0.0, 0), (10.0, 10_000), (100.0, 12_000), (200.0, 14_000)]
    assert benchmark.seconds_left(history, 300_000, now=200.0) == pytest.approx(14_300.0)
    assert benchmark.seconds_left(history, 300_000, now=230.0) == pytest.approx(14_270.0)  # 30 s since seen
    # Early on the window reaches back to the start, so the rate is the average.
    assert benchmark.seconds_left([(0.0, 0), (10.0, 1_000)], 3_000, now=10.0) == pytest.approx(20.0)
    # No new step for longer than the window: the rate since the step before.
    assert benchmark.seconds_left([(0.0, 0), (10.0, 100), (500.0, 200)], 300, now=500.0) == pytest.approx(490.0)
    assert benchmark.seconds_left([(0.0, 0)], 300, now=5.0) is None


def test_observe_records_each_new_step_once(tmp_path):
    run = benchmark.Run(Entry("a.py", "Env-v0"), 1, "r", tmp_path)
    samples = {}
    benchmark.observe(samples, [(run, 5.0)], now=6.0)  # no log yet
    assert samples == {"r": [(5.0, 0)]}
    run.log_path.write_text("python a.py\nstep       100/1000 |   50 SPS | return -1\n")
    benchmark.observe(samples, [(run, 5.0)], now=7.0)
    benchmark.observe(samples, [(run, 5.0)], now=8.0)  # the same step: not a new sample
    assert samples == {"r": [(5.0, 0), (7.0, 100)]}


@pytest.mark.parametrize("argv, message", [
    (["--preset", "nope"], "error: unknown preset 'nope'"),
    (["--workers", "0"], "error: --workers must be positive"),
    (["--scripts", "no_such_script.py"], "error: no script no_such_script.py"),
    (["--preset", "full", "--scripts", "no_such_script.py"], "error: --scripts no_such_script.py: not in preset full"),
    (["--min-return", "1", "--min-mean-return", "1", "--check"], "error: give --min-return or --min-mean-return"),
    # A list flag given no value used to mean its default (here: --check of the default runs, exit 0).
    *([[flag, "--check"], f"error: {flag} needs at least one value"] for flag in ("--scripts", "--env-ids", "--seeds")),
    (["--check", "--seeds"], "error: --seeds needs at least one value"),
    (["--min-return", "nan", "--check"], "error: --min-return must be a finite number, got nan"),
    (["--progress-interval", "inf", "--check"], "error: --progress-interval must be a finite number, got inf"),
])
def test_bad_input_is_one_error_line_and_exit_2(in_tmp, capsys, argv, message):
    assert benchmark.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
    assert not (in_tmp / "runs").exists()


def test_bad_input_from_the_command_line_has_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmark.py"), "--preset", "nope"], cwd=tmp_path,
                            check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.startswith("error:") and "Traceback" not in result.stderr


def test_plot_curves_and_pngs(test_preset, monkeypatch, capsys):
    runs = test_preset / "runs"
    for seed, offset in ((1, 0.0), (2, 2.0)):
        write_run(runs, f"Plot-v0__algo_a__{seed}", seed, 0.0, returns=[offset + i for i in range(20)])
        write_run(runs, f"Plot-v0__algo_b__{seed}", seed, 0.0, returns=[None, 5.0, None] * 10)  # empty cells
    # Seed 3 has no run: noted and left out.
    curve = plot.curve(Entry("algo_a.py", "Plot-v0"), [1, 2, 3], runs, smooth=1, points=20)
    assert curve.seeds == 2 and "no metrics.csv with returns under" in capsys.readouterr().out
    np.testing.assert_allclose(curve.steps, np.linspace(100, 2000, 20))
    np.testing.assert_allclose(curve.mean, np.arange(20) + 1.0)  # seeds at i and i + 2
    np.testing.assert_allclose(curve.high - curve.low, 2.0)
    np.testing.assert_allclose(curve.seconds, np.arange(1, 21.0))
    smoothed = plot.curve(Entry("algo_a.py", "Plot-v0"), [1], runs, smooth=3, points=20)
    np.testing.assert_allclose(smoothed.mean[:4], [0.0, 0.5, 1.0, 2.0])  # rolling mean over up to 3 rows
    flat = plot.curve(Entry("algo_b.py", "Plot-v0"), [1, 2], runs, smooth=1, points=5)
    np.testing.assert_allclose(flat.mean, 5.0)

    entries = (Entry("algo_a.py", "Plot-v0"), Entry("algo_b.py", "Plot-v0"), Entry("algo_a.py", "Env-v0"))
    monkeypatch.setitem(benchmark.PRESETS, "test", Preset(entries, (1, 2, 3)))
    assert plot.main(["--preset", "test", "--runs-dir", str(runs), "--out", str(test_preset / "png")]) == 0
    out = capsys.readouterr().out
    assert "note: no runs of Env-v0 to plot" in out  # summaries only, no metrics.csv
    pngs = sorted(p.name for p in (test_preset / "png").iterdir())
    assert pngs == ["curves_Plot-v0.png", "curves_overview.png"]
    for name in pngs:
        data = (test_preset / "png" / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000


def test_plot_without_matplotlib_or_runs(in_tmp, monkeypatch, capsys):
    assert plot.main(["--scripts", "ppo_discrete.py", "--env-ids", "CartPole-v1", "--out", str(in_tmp / "png")]) == 1
    assert "no runs with metrics.csv" in capsys.readouterr().err
    monkeypatch.setattr(plot, "plt", None)
    assert plot.main(["--preset", "full"]) == 2
    assert capsys.readouterr().err == "error: plot.py needs matplotlib: pip install -r requirements-dev.txt\n"
    assert not (in_tmp / "png").exists()


def test_duration_rounds_before_splitting_minutes_and_seconds():
    assert [benchmark.duration(s) for s in (42.4, 119.6, 359.7, 3725)] == ["42s", "2m00s", "6m00s", "62m05s"]


def test_repeated_seeds_and_scripts_plan_each_run_once():
    entries, seeds = benchmark.select(None, ["dqn.py", "dqn.py"], ["CartPole-v1"], [1, 1, 2])
    assert [r.name for r in benchmark.plan(entries, seeds)] == ["CartPole-v1__dqn__1", "CartPole-v1__dqn__2"]


def test_preset_filters_check_each_flag_against_the_whole_preset():
    # HalfCheetah-v5 is in the preset (for other scripts): the error says the pair has no entry.
    with pytest.raises(benchmark.UsageError, match="no entry of preset full has both"):
        benchmark.select("full", ["dqn.py"], ["HalfCheetah-v5"], None)


def test_plot_leaves_out_unfinished_runs_once_one_has_finished(in_tmp, capsys):
    runs = in_tmp / "runs"
    write_run(runs, "Plot-v0__algo_a__1", 1, 0.0, returns=[float(i) for i in range(20)])  # 100..2000
    write_run(runs, "Plot-v0__algo_a__2", 2, 0.0, returns=[50.0] * 3)  # stopped at step 300
    (runs / "Plot-v0__algo_a__2" / "summary.json").unlink()
    curve = plot.curve(Entry("algo_a.py", "Plot-v0"), [1, 2], runs, smooth=1, points=20)
    assert curve.seeds == 1 and "seed 2 not finished (no summary.json); left out" in capsys.readouterr().out
    np.testing.assert_allclose(curve.steps, np.linspace(100, 2000, 20))  # not cut short at 300
    # With no finished run yet, the unfinished one is drawn as far as it got.
    alone = plot.curve(Entry("algo_a.py", "Plot-v0"), [2], runs, smooth=1, points=3)
    assert alone.seeds == 1 and "plotted so far" in capsys.readouterr().out
    np.testing.assert_allclose(alone.steps, [100, 200, 300])


def test_plot_skips_seeds_whose_steps_do_not_overlap(in_tmp, capsys):
    runs = in_tmp / "runs"
    write_run(runs, "Plot-v0__algo_a__1", 1, 0.0, returns=[1.0, 2.0])  # steps 100, 200
    write_run(runs, "Plot-v0__algo_a__2", 2, 0.0, returns=[None, None, 3.0, 4.0])  # returns at 300, 400
    assert plot.curve(Entry("algo_a.py", "Plot-v0"), [1, 2], runs, smooth=1, points=5) is None
    assert "do not overlap" in capsys.readouterr().out


def test_last_episodes_mean_against_the_episodes_themselves(tmp_path):
    rng = np.random.default_rng(0)
    episodes = rng.normal(100.0, 30.0, size=260)
    sizes = [0, 3, 1, 0, 7, 2, 5, 0, 1] * 40  # episodes ending between rows; 0: a row where none ended
    rows, used, start = [], [], 0
    for i, size in enumerate(sizes):
        size = min(size, len(episodes) - start)
        chunk = episodes[start:start + size]
        start += size
        rows.append(f"{1000 * (i + 1)},{chunk.mean() if size else ''},{size}")
        used.append(size)
        if start == len(episodes):
            break
    metrics = tmp_path / "metrics.csv"
    metrics.write_text("global_step,episodic_return,episodes\n" + "\n".join(rows) + "\n")
    # Rows hold 3, 1, 7, 2, 5, 1 episodes: the last 100 start inside a row unless aligned.
    counts = np.cumsum([s for s in used if s][::-1])  # episodes from the end, row by row
    aligned = int(counts[np.searchsorted(counts, 90)])  # a row boundary at or after 90 episodes
    assert benchmark.last_episodes_mean(metrics, n=aligned) == pytest.approx(episodes[-aligned:].mean())
    # Inside a row: the rows after it exactly, that row's mean for the episodes it still contributes.
    n, tail_rows = 100, [(float(r.split(",")[1]), int(r.split(",")[2])) for r in rows if not r.endswith(",0")]
    whole, taken = 0.0, 0
    for mean, count in reversed(tail_rows):
        if taken + count > n:
            whole += mean * (n - taken)
            taken = n
            break
        whole, taken = whole + mean * count, taken + count
    assert taken == n and benchmark.last_episodes_mean(metrics, n=n) == pytest.approx(whole / n)
    assert benchmark.last_episodes_mean(metrics, n=len(episodes) + 1) is None  # fewer episodes than asked
    old = tmp_path / "old.csv"
    old.write_text("global_step,episodic_return\n1000,5.0\n")  # no episodes column: no figure
    assert benchmark.last_episodes_mean(old, n=1) is None
    assert benchmark.last_episodes_mean(tmp_path / "missing.csv") is None


def test_report_gives_the_last_training_episodes_beside_the_evaluation(test_preset):
    runs = test_preset / "runs"
    for seed, value in ((1, 10.0), (2, 20.0), (3, 30.0)):
        (runs / f"Env-v0__algo_a__{seed}" / "metrics.csv").write_text(
            f"global_step,episodic_return,episodes\n100,{value - 5},50\n200,{value},100\n")
    entries, seeds = benchmark.select("test", ["algo_a.py"], None, None)
    table = benchmark.report(benchmark.plan(entries, seeds))
    assert "last 100 training episodes (mean ± std)" in table.splitlines()[0]
    assert "| 20.0 ± 8.16 | 1: 10, 2: 20, 3: 30 |" in table


def test_plot_aggregate_normalises_against_the_references(in_tmp, monkeypatch, capsys):
    pytest.importorskip("rliable")
    runs = in_tmp / "runs"
    evals = {("A-v0", 1): 10.0, ("A-v0", 2): 30.0, ("A-v0", 3): 110.0,
             ("B-v0", 1): -50.0, ("B-v0", 2): 0.0, ("B-v0", 3): 100.0}
    for (env_id, seed), value in evals.items():
        write_run(runs, f"{env_id}__algo_a__{seed}", seed, value, returns=[value] * 5)
    monkeypatch.setattr(plot, "REFERENCES", {"A-v0": (10.0, 110.0), "B-v0": (-100.0, 100.0)})
    monkeypatch.setitem(benchmark.PRESETS, "test", Preset((Entry("algo_a.py", "A-v0"), Entry("algo_a.py", "B-v0")),
                                                          (1, 2, 3)))
    scores = plot.normalised_scores(list(benchmark.PRESETS["test"].entries), [1, 2, 3], runs, "eval")
    np.testing.assert_allclose(scores["algo_a"], [[0.0, 0.25], [0.2, 0.5], [1.0, 1.0]])  # (seeds, envs)
    assert plot.main(["--preset", "test", "--runs-dir", str(runs), "--out", str(in_tmp / "png"), "--aggregate",
                      "--reps", "200"]) == 0
    out = capsys.readouterr().out
    middle = np.sort(scores["algo_a"].ravel())[1:5]  # 6 scores: the interquartile mean drops one at each end
    assert f"algo_a: IQM {middle.mean():.3f}" in out and f"mean {scores['algo_a'].mean():.3f}" in out
    for name in ("aggregate_eval.png", "profile_eval.png"):
        assert (in_tmp / "png" / name).read_bytes().startswith(b"\x89PNG")
    # The train score needs metrics.csv's episodes column, which these runs lack: left out, then exit 1.
    assert plot.main(["--preset", "test", "--runs-dir", str(runs), "--out", str(in_tmp / "png"), "--aggregate",
                      "--score", "train"]) == 1
    assert "algo_a left out of the aggregate: no train score" in capsys.readouterr().out
    monkeypatch.setattr(plot, "REFERENCES", {"A-v0": (10.0, 110.0)})
    assert plot.main(["--preset", "test", "--runs-dir", str(runs), "--aggregate"]) == 2
    assert "error: --aggregate needs a reference score for B-v0" in capsys.readouterr().err


def test_runs_see_no_gpu_unless_given_one_and_share_the_visible_ones(tmp_path, monkeypatch):
    launched = []  # each run's CUDA_VISIBLE_DEVICES, as launched

    class Process:
        def __init__(self, command, env, **kwargs):
            launched.append(env["CUDA_VISIBLE_DEVICES"])
            self.returncode = None

        def poll(self):
            return self.returncode

    monkeypatch.setattr(benchmark.subprocess, "Popen", Process)
    runs = [benchmark.Run(Entry("a.py", "Env-v0"), seed, f"r{seed}", tmp_path / f"r{seed}") for seed in range(6)]
    on_cpu = benchmark.LocalRunner()  # no --gpus-per-run: a run sees no GPU, however many this machine has
    on_cpu.start(runs[0], [])
    assert launched == [""] and on_cpu.slots is None
    launched.clear()
    halves = benchmark.LocalRunner(0.5, gpus=["0", "1"])  # two runs per GPU, spread over both
    processes = [halves.start(run, []) for run in runs[:4]]
    assert halves.slots == 4 and launched == ["0", "1", "0", "1"]
    processes[1].returncode = 0
    assert halves.poll(processes[1]) == 0  # its share of GPU 1 is free again
    halves.start(runs[4], [])
    assert launched[-1] == "1"
    launched.clear()
    pairs = benchmark.LocalRunner(2, gpus=["0", "1", "2", "3"])  # two whole GPUs each
    first = pairs.start(runs[0], [])
    pairs.start(runs[1], [])
    assert pairs.slots == 2 and launched == ["0,1", "2,3"]
    first.returncode = 1
    pairs.poll(first)
    pairs.start(runs[2], [])
    assert launched[-1] == "0,1"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert benchmark.visible_gpus() == ["3", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert benchmark.visible_gpus() == []
    with pytest.raises(benchmark.UsageError, match=r"^--gpus-per-run 1, but 0 GPU\(s\) are visible here"):
        benchmark.make_runner(None, None, 1.0, 3)
    with pytest.raises(benchmark.UsageError, match="^--gpus-per-run must be 0, a fraction below 1 or a whole"):
        benchmark.make_runner(None, None, 1.5, 3)



def alive(pid: int) -> bool:
    """Whether process `pid` still exists (a zombie, dead but not yet reaped, does not count)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def running(name: str) -> list[int]:
    """The processes whose command line holds `name` (a run name), this one aside."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if entry.isdigit() and int(entry) != os.getpid() and name.encode() in f.read() and alive(int(entry)):
                    pids.append(int(entry))
        except OSError:  # ended meanwhile, or not a process
            continue
    return pids


def wait_for(paths, seconds: float = 60.0):
    """Waits until every path exists (a run started); fails the test after `seconds`."""
    deadline = time.time() + seconds
    while not all(path.exists() for path in paths):
        assert time.time() < deadline, f"not there after {seconds:g}s: {[str(p) for p in paths if not p.exists()]}"
        time.sleep(0.2)


SLOW = STAND_IN.format(body=textwrap.dedent("""
    run = pathlib.Path("runs") / args.run_name
    (run / "pid").write_text(str(os.getpid()))
    (run / "metrics.csv").write_text("global_step,episodic_return\\n")
    time.sleep(120)""")).replace("import argparse", "import os, argparse")


def test_sigterm_stops_the_runs_as_ctrl_c_does(in_tmp):
    """kill -TERM of benchmark.py (a scheduler ending the job, say) used to kill it alone, its runs training on as
    orphans; now it stops them as Ctrl-C does and exits 143."""
    (in_tmp / "slow.py").write_text(SLOW)
    process = subprocess.Popen([sys.executable, str(ROOT / "benchmark.py"), "--scripts", "slow.py", "--env-ids",
                                "Env-v0", "--seeds", "1", "2", "3", "--workers", "2", "--progress-interval", "100"],
                               cwd=in_tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid_files = [in_tmp / "runs" / f"Env-v0__slow__{seed}" / "pid" for seed in (1, 2)]
    wait_for([path.with_name("metrics.csv") for path in pid_files])
    pids = [int(path.read_text()) for path in pid_files]
    try:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
        assert process.returncode == 143, out + err
        assert err == "\ninterrupted (SIGTERM); finished runs are kept and skipped next time\n"
        assert not [pid for pid in pids if alive(pid)]  # stopped with benchmark.py, not left training
        assert not (in_tmp / "runs" / "Env-v0__slow__3").exists()  # the waiting run is not started
    finally:  # a failed test leaves no orphans behind either
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_run_that_ignores_sigterm_is_killed_after_the_grace(monkeypatch):
    monkeypatch.setattr(benchmark, "STOP_GRACE", 1.0, raising=False)
    ignores = ("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\n"
               "time.sleep(120)")
    stubborn = subprocess.Popen([sys.executable, "-c", ignores], stdout=subprocess.PIPE, text=True)
    try:
        assert stubborn.stdout.readline() == "ready\n"
        stopping = threading.Thread(target=benchmark.LocalRunner().stop, args=([stubborn],), daemon=True)
        stopping.start()
        stopping.join(timeout=15)
        assert not stopping.is_alive() and stubborn.returncode == -signal.SIGKILL
    finally:
        stubborn.kill()
        stubborn.wait()


QUICK = STAND_IN.format(body=textwrap.dedent("""
    run = pathlib.Path("runs") / args.run_name
    run.mkdir(parents=True, exist_ok=True)
    (run / "summary.json").write_text(json.dumps({"seed": int(args.seed), "global_step": 1000,
        "wall_time": 0.5, "sps": 2000, "eval_mean": 7.0}))"""))


@pytest.mark.parametrize("flags, message", [
    # The run names used to take the tag as it came: runs/Env-v0__quick__1__../../x went up out of runs/.
    *([["--tag", tag], (f"error: --tag {tag!r}: the tag ends each run's directory name under runs/, so it must be "
                        "a plain name: not empty, no / and no ..")]
      for tag in ("../../x", "a/b", "..", "x..y", ".", "")),
    (["--env-ids", "../Env-v0"], ("error: --env-ids ../Env-v0: the run name ../Env-v0__quick__1 would not be one "
                                  "directory under runs/")),
])
def test_a_run_name_that_would_leave_runs_is_refused(in_tmp, capsys, flags, message):
    (in_tmp / "work").mkdir()
    (in_tmp / "work" / "quick.py").write_text(QUICK)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(in_tmp / "work")
        argv = ["--scripts", "quick.py", "--env-ids", "Env-v0", "--seeds", "1", "--progress-interval", "0"]
        assert benchmark.main([*argv, *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err
    assert sorted(p.name for p in in_tmp.rglob("*")) == ["quick.py", "work"]  # nothing made, in runs/ or out of it


def test_one_script_given_by_two_paths_runs_once_and_two_files_of_one_name_are_refused(in_tmp, capsys):
    # dqn.py ./dqn.py used to launch two processes at once into each run directory, and report both done.
    (in_tmp / "quick.py").write_text(QUICK)
    argv = ["--env-ids", "Env-v0", "--seeds", "1", "--progress-interval", "0"]
    assert benchmark.main(["--scripts", "quick.py", "./quick.py", str(in_tmp / "quick.py"), *argv]) == 0
    out = capsys.readouterr().out
    assert out.count("done   Env-v0__quick__1 ") == 1 and out.count("| quick.py | Env-v0 |") == 1, out
    entries, _ = benchmark.select(None, ["dqn.py", "./dqn.py", str(ROOT / "dqn.py")], ["CartPole-v1"], [1])
    assert entries == [Entry("dqn.py", "CartPole-v1")]
    (in_tmp / "other").mkdir()
    (in_tmp / "other" / "quick.py").write_text(QUICK)
    assert benchmark.main(["--scripts", "quick.py", "other/quick.py", "--tag", "new", *argv]) == 2
    assert capsys.readouterr().err == (
        "error: --scripts quick.py other/quick.py: two files named quick would share run directories "
        "(runs/<env>__quick__<seed>); rename one, or run them in two benchmarks with different --tag\n")
    assert not list((in_tmp / "runs").glob("*__new"))


def test_a_run_that_exits_with_an_error_after_its_summary_is_failed_then_and_later(in_tmp, capsys):
    # Its summary.json used to count: the table said pass under the run's FAILED line, and the next benchmark and
    # --check passed the row, exit code 0.
    (in_tmp / "late.py").write_text(QUICK + '\nprint("error: broke after the summary", file=sys.stderr)\nsys.exit(1)\n')
    argv = ["--scripts", "late.py", "--env-ids", "Env-v0", "--seeds", "1", "--progress-interval", "0",
            "--min-return", "5"]
    assert benchmark.main(argv) == 1
    out = capsys.readouterr().out
    assert "FAILED Env-v0__late__1 (exit code 1): error: broke after the summary" in out
    assert "| late.py | Env-v0 | 0 (failed 1) |" in out
    log = in_tmp / "runs" / "Env-v0__late__1" / "stdout.log"
    logged = log.read_text()
    assert benchmark.main(argv) == 1  # not run again, and failed still
    assert "1 of 1 runs already finished; skipping them (1 with a damaged or NaN summary.json, or that exited with " \
           "an error after writing it" in capsys.readouterr().out and log.read_text() == logged
    assert benchmark.main([*argv, "--check"]) == 1
    assert ("FAIL        late.py Env-v0: seed 1 failed: exit code 1: error: broke after the summary (after writing "
            "its summary.json)\n") in capsys.readouterr().out
    # A summary.json written after benchmark.py's line (the run resumed to its end by hand) counts.
    summary = in_tmp / "runs" / "Env-v0__late__1" / "summary.json"
    os.utime(summary, ns=(log.stat().st_mtime_ns + 10**9,) * 2)
    assert benchmark.main([*argv, "--check"]) == 0


def test_a_run_finished_meanwhile_by_another_process_is_not_run_again(in_tmp):
    # Which runs to make was decided once, at the start: one that another process (another benchmark over the same
    # runs/) finished meanwhile was started again when its turn came, over the finished run's files.
    (in_tmp / "wait.py").write_text(STAND_IN.format(body=textwrap.dedent("""
        run = pathlib.Path("runs") / args.run_name
        while not pathlib.Path("go").exists():
            time.sleep(0.1)
        (run / "summary.json").write_text(json.dumps({"seed": int(args.seed), "global_step": 1000,
            "wall_time": 0.5, "sps": 2000, "eval_mean": 7.0}))""")))
    process = subprocess.Popen([sys.executable, str(ROOT / "benchmark.py"), "--scripts", "wait.py", "--env-ids",
                                "Env-v0", "--seeds", "1", "2", "--workers", "1", "--progress-interval", "100"],
                               cwd=in_tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for([in_tmp / "runs" / "Env-v0__wait__1" / "stdout.log"])
        elsewhere = in_tmp / "runs" / "Env-v0__wait__2"
        elsewhere.mkdir()
        (elsewhere / "summary.json").write_text(json.dumps({"seed": 2, "global_step": 1000, "wall_time": 0.5,
                                                            "sps": 2000, "eval_mean": 9.0}))
        (in_tmp / "go").touch()
        out, _ = process.communicate(timeout=60)
    finally:
        process.kill()
    assert json.loads((elsewhere / "summary.json").read_text())["eval_mean"] == 9.0
    assert sorted(p.name for p in elsewhere.iterdir()) == ["summary.json"]  # its files untouched, no log of ours
    assert process.returncode == 0 and "skip   Env-v0__wait__2: finished meanwhile by another process" in out, out
