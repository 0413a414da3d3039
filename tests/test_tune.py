"""tune.py: the search spaces against the scripts' flags, --fix and --narrow, bad input, and real Optuna studies
on SQLite: a pruned trial recorded as pruned (stand-in script), an interrupted study of a2c.py continued."""

import dataclasses
import importlib
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import optuna
import pytest
from conftest import ROOT
from test_benchmark import alive, running

import tune
from tune import Choice, Float

TINY_A2C = ["--total-timesteps", "256", "--num-envs", "2", "--eval-episodes", "2", "--no-cuda"]


@pytest.mark.parametrize("script", sorted(tune.SPACES))
def test_every_parameter_is_a_flag_of_its_script_with_values_of_its_type(script):
    fields = {f.name.replace("_", "-"): f for f in dataclasses.fields(importlib.import_module(script[:-3]).Args)}
    for name, param in tune.SPACES[script].items():
        assert name in fields, f"{script} has no --{name}"
        default = fields[name].default
        values = param.choices if isinstance(param, Choice) else (param.low, param.high)
        if name == "hidden-sizes":  # a list flag: each choice is its sizes, space-separated
            assert all(all(v.isdigit() for v in value.split()) for value in values)
        elif isinstance(default, bool):
            assert set(values) == {False, True}
        else:
            assert all(type(v) is type(default) for v in values), (name, values, default)


def test_fix_narrow_and_the_flags_after_the_separator_shape_the_space():
    space, fixed = tune.shape_space("a2c.py", ["gamma=0.9", "norm_adv=true", "--optimizer=adam"],
                                    ["learning-rate=1e-4:1e-3", "num-steps=8,16"], ["--ent-coef", "0.01"])
    assert fixed == {"gamma": 0.9, "norm-adv": True, "optimizer": "adam"}
    assert not {"gamma", "norm-adv", "optimizer", "ent-coef"} & set(space)  # fixed, or set after --
    assert space["learning-rate"] == Float(1e-4, 1e-3, log=True) and space["num-steps"] == Choice((8, 16))
    assert tune.flags_of(fixed) == ["--gamma", "0.9", "--norm-adv", "--optimizer", "adam"]
    # Flags after `--` in the other spellings the scripts take leave the space too (they used to stay in it,
    # tuned for nothing: the flag after `--` comes last and wins).
    space, _ = tune.shape_space("a2c.py", [], [], ["--ent_coef=0.01", "--learning-rate=1e-3", "--no-norm_adv",
                                                   "--num_envs", "8"])
    assert not {"ent-coef", "learning-rate", "norm-adv", "num-envs"} & set(space) and "vf-coef" in space
    assert tune.flags_of({"norm-adv": False, "hidden-sizes": "64 64"}) == ["--no-norm-adv", "--hidden-sizes", "64",
                                                                        "64"]


STAND_IN = """
import argparse, json, pathlib
parser = argparse.ArgumentParser()
for flag in ("--env-id", "--seed", "--run-name", "--quality"):
    parser.add_argument(flag)
args = parser.parse_args()
print(f"step {{100:>9}}/100 |  1000 SPS | return 1.0", flush=True)
run = pathlib.Path("runs") / args.run_name
run.mkdir(parents=True, exist_ok=True)
(run / "summary.json").write_text(json.dumps({{"seed": int(args.seed), "global_step": 100, "wall_time": 0.1,
    "sps": 1000, "eval_mean": float(args.quality) {offset}}}))
"""


@pytest.fixture
def stand_in(in_tmp, monkeypatch):
    """stand_in.py in the test's directory, whose evaluation is its --quality flag (plus `offset`)."""
    monkeypatch.setitem(tune.SPACES, "stand_in.py", {"quality": Choice((1.0, -1.0, 0.5))})

    def write(offset: str = ""):
        (in_tmp / "stand_in.py").write_text(STAND_IN.format(offset=offset))
    write()
    return write


def test_a_trial_below_the_median_after_its_first_run_is_pruned(in_tmp, stand_in, capsys):
    storage = f"sqlite:///{in_tmp / 'study.db'}"
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    study.enqueue_trial({"quality": 1.0})
    study.enqueue_trial({"quality": -1.0})  # worse than trial 0 after the first seed: stopped there
    argv = ["--script", "stand_in.py", "--env-ids", "Env-v0", "--seeds", "1", "2", "--trials", "2", "--storage",
            storage, "--study-name", "s", "--startup-trials", "1", "--workers", "1", "--progress-interval", "0"]
    assert tune.main(argv) == 0
    out = capsys.readouterr().out
    trials = optuna.load_study(study_name="s", storage=storage).get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED]
    assert trials[0].value == 1.0 and trials[0].user_attrs["flags"] == ["--quality", "1.0"]
    assert "trial 1 pruned: -1 after 1 of 2 runs" in out
    tag = tune.run_tag("s", storage)
    assert (in_tmp / "runs" / f"Env-v0__stand_in__1__{tag}-t1" / "summary.json").is_file()
    assert not (in_tmp / "runs" / f"Env-v0__stand_in__2__{tag}-t1").exists()  # the second run never started
    assert "python stand_in.py --env-id Env-v0 --quality 1.0" in out  # the best flags as a command line
    assert "| 0 | 1 | 1.0, 1.0 | --quality 1.0 |" in out
    # The study is done: the same command runs nothing more.
    assert tune.main(argv) == 0
    assert "this process ran trial(s) none" in capsys.readouterr().out
    assert len(optuna.load_study(study_name="s", storage=storage).trials) == 2


def test_several_envs_are_normalised_between_floor_and_target(in_tmp, stand_in, capsys):
    storage = f"sqlite:///{in_tmp / 'study.db'}"
    argv = ["--script", "stand_in.py", "--env-ids", "A-v0", "B-v0", "--trials", "1", "--storage", storage,
            "--study-name", "n", "--fix", "quality=0.5", "--score-range", "A-v0=0:1", "B-v0=-1:3",
            "--progress-interval", "0"]
    assert tune.main(argv) == 0
    trial = optuna.load_study(study_name="n", storage=storage).trials[0]
    assert trial.value == pytest.approx(((0.5 - 0) / 1 + (0.5 + 1) / 4) / 2)  # 0.5 and 0.375
    tag = tune.run_tag("n", storage)
    assert sorted(trial.user_attrs["evaluations"]) == [f"A-v0__stand_in__1__{tag}-t0", f"B-v0__stand_in__1__{tag}-t0"]
    # Rerun with another setting: refused rather than mixing two objectives in one study.
    assert tune.main([*argv[:-2], "--seeds", "2"]) == 2
    assert "study n in" in capsys.readouterr().err


def test_a_failing_run_fails_its_trial_with_the_log(in_tmp, stand_in, capsys):
    stand_in(offset='+ 1 / 0')
    storage = f"sqlite:///{in_tmp / 'study.db'}"
    assert tune.main(["--script", "stand_in.py", "--env-ids", "Env-v0", "--trials", "1", "--storage", storage,
                      "--study-name", "f", "--workers", "1", "--progress-interval", "0"]) == 1
    out = capsys.readouterr().out
    assert f"trial 0 FAILED: Env-v0__stand_in__1__{tune.run_tag('f', storage)}-t0 ended with exit code 1" in out
    assert "ZeroDivisionError" in out
    assert "no trial completed" in out


def test_a2c_study_runs_is_interrupted_and_continues(in_tmp):
    """Real runs of a2c.py: Ctrl-C in the middle of trial 1 fails it and stops its run; the same command then
    runs trials 2 and 3 until 3 trials have finished, and reports them."""
    storage = f"sqlite:///{in_tmp / 'tune.db'}"
    command = [sys.executable, str(ROOT / "tune.py"), "--script", "a2c.py", "--env-ids", "CartPole-v1",
               "--trials", "3", "--storage", storage, "--study-name", "cp", "--workers", "1", "--startup-trials",
               "5", "--sampler-seed", "0", "--progress-interval", "1", "--", *TINY_A2C]
    tag = tune.run_tag("cp", storage)
    process = subprocess.Popen(command, cwd=in_tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 90
    while time.time() < deadline:
        time.sleep(0.5)
        if (in_tmp / "runs" / f"CartPole-v1__a2c__1__{tag}-t1" / "stdout.log").exists():
            break
    process.send_signal(signal.SIGINT)
    out, _ = process.communicate(timeout=30)
    assert process.returncode == 130, out
    assert "interrupted; the study is kept" in out and "Traceback" not in out
    states = [t.state for t in optuna.load_study(study_name="cp", storage=storage).trials]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL]
    assert not (in_tmp / "runs" / f"CartPole-v1__a2c__1__{tag}-t1" / "summary.json").exists()  # stopped, not finished
    leftover = subprocess.run(["pgrep", "-f", f"CartPole-v1__a2c__1__{tag}-t1"], capture_output=True, text=True)
    assert leftover.stdout == ""  # no run outlives tune.py

    result = subprocess.run(command, cwd=in_tmp, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    study = optuna.load_study(study_name="cp", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert "this process ran trial(s) 2, 3" in result.stdout
    assert "study cp: 4 trials: 3 complete, 0 pruned, 1 failed" in result.stdout
    for number in (0, 2, 3):
        summary = json.loads((in_tmp / "runs" / f"CartPole-v1__a2c__1__{tag}-t{number}" / "summary.json").read_text())
        assert study.trials[number].value == summary["eval_mean"]
    best = study.best_trial
    assert (f"python a2c.py --env-id CartPole-v1 {' '.join(best.user_attrs['flags'])} {' '.join(TINY_A2C)}"
            in result.stdout)
    for name in ("optimization_history", "param_importances"):
        assert (in_tmp / "runs" / "cp" / f"{name}.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("argv, message", [
    (["--script", "no_such.py", "--env-ids", "CartPole-v1"], "error: no script no_such.py"),
    (["--script", "benchmark.py", "--env-ids", "CartPole-v1"], "error: tune.py has no search space for benchmark.py"),
    (["--script", "a2c.py", "--env-ids", "CartPole-v1", "--fix", "clip-coef=0.2"],
     "error: --fix clip-coef=0.2: a2c.py's search space has no parameter 'clip-coef'; it has learning-rate"),
    (["--script", "a2c.py", "--env-ids", "CartPole-v1", "--narrow", "nope=1:2"],
     "error: --narrow nope=1:2: a2c.py's search space has no parameter 'nope'"),
    (["--script", "a2c.py", "--env-ids", "CartPole-v1", "--narrow", "learning-rate=1e-3"],
     "error: --narrow learning-rate=1e-3: learning-rate is a range: give LOW:HIGH"),
    (["--script", "a2c.py", "--env-ids", "CartPole-v1", "--narrow", "gamma=0.5"],
     "error: --narrow gamma=0.5: not among gamma's choices"),
    (["--script", "a2c.py", "--env-ids", "CartPole-v1", "--storage", "nosuchdb://x/y"],
     "error: cannot open storage nosuchdb://x/y"),
    (["--script", "a2c.py", "--env-ids", "CartPole-v1", "--storage", "sqlite:////no/such/folder/t.db"],
     "error: cannot open storage sqlite:////no/such/folder/t.db"),
    # A regular file where the storage's folder should be: used to be a traceback (NotADirectoryError).
    (["--script", "a2c.py", "--env-ids", "CartPole-v1", "--storage", "sqlite:///afile/sub/t.db"],
     "error: cannot open storage sqlite:///afile/sub/t.db: cannot make its folder afile/sub (Not a directory)"),
    # A run name out of runs/ (the runs are benchmark.py's: the same check).
    (["--script", "a2c.py", "--env-ids", "../CartPole-v1", "--trials", "1", "--", *TINY_A2C],
     "error: --env-ids ../CartPole-v1: the run name ../CartPole-v1__a2c__1 would not be one directory under runs/"),
    (["--script", "a2c.py", "--env-ids", "CartPole-v1", "Unknown-v0"],
     "error: no score range for Unknown-v0 to normalise over several envs"),
    (["--script", "a2c.py", "--env-ids", "CartPole-v1", "--cpus-per-run", "2"],
     "error: --cpus-per-run: for runs on a Ray cluster; give --ray-address too"),
    (["--script", "a2c.py", "--env-ids", "CartPole-v1", "--ray-address", "here"],
     "error: --ray-address here: give auto, local or host:port"),
    # Every spelling the scripts take: the guard used to see only the first.
    # (--trials 1 and a tiny budget: a guard that let one through would fail the test in seconds, not train on)
    *([["--script", "a2c.py", "--env-ids", "CartPole-v1", "--trials", "1", "--workers", "1", "--", *flags,
        "--total-timesteps", "256", "--num-envs", "2", "--no-cuda"],
       "error: --eval-episodes 0 leaves the trials nothing to be scored on"]
      for flags in (["--eval-episodes", "0"], ["--eval-episodes=0"], ["--eval_episodes", "0"], ["--eval_episodes=0"],
                    ["--eval-episodes", "5", "--no-cuda", "--eval-episodes=00"])),
])
def test_bad_input_is_one_error_line_and_exit_2(in_tmp, capsys, argv, message):
    (in_tmp / "afile").write_text("the user's\n")
    assert tune.main(argv) == 2
    assert (in_tmp / "afile").read_text() == "the user's\n"
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err


def test_an_unreachable_ray_address_is_said_within_seconds(in_tmp, capsys):
    start = time.time()
    assert tune.main(["--script", "a2c.py", "--env-ids", "CartPole-v1", "--storage", f"sqlite:///{in_tmp / 't.db'}",
                      "--ray-address", "127.0.0.1:9"]) == 2  # the discard port: nothing listens
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach a Ray cluster at 127.0.0.1:9") and err.count("\n") == 1
    assert time.time() - start < 10


def test_bad_input_from_the_command_line_has_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "tune.py"), "--script", "a2c.py", "--env-ids",
                             "CartPole-v1", "--fix", "nope=1"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.startswith("error: --fix nope=1") and "Traceback" not in result.stderr
    assert textwrap.dedent(result.stderr).count("\n") == 1


def test_sigterm_stops_the_runs_and_fails_the_trials_as_ctrl_c_does(in_tmp):
    """kill -TERM of tune.py used to kill it alone: its runs trained on as orphans and its trials stayed RUNNING in
    the study. Now, as on Ctrl-C, the runs are stopped, the trials cut off are failed, and it exits 143."""
    storage = f"sqlite:///{in_tmp / 'tune.db'}"
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "tune.py"), "--script", "a2c.py", "--env-ids", "CartPole-v1", "--trials", "4",
         "--storage", storage, "--study-name", "term", "--workers", "2", "--progress-interval", "100", "--",
         "--total-timesteps", "200000", "--num-envs", "2", "--eval-episodes", "2", "--no-cuda"],
        cwd=in_tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 90
    while len(started := sorted((in_tmp / "runs").glob("CartPole-v1__a2c__1__term*-t[01]/metrics.csv"))) < 2:
        assert time.time() < deadline and process.poll() is None, "the trials' runs did not start"
        time.sleep(0.2)
    pids = [pid for path in started for pid in running(path.parent.name)]
    try:
        assert len(pids) == 2
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
        assert process.returncode == 143, out + err
        assert err == "\ninterrupted (SIGTERM); the study is kept: the same command continues it\n"
        assert not [pid for pid in pids if alive(pid)]  # stopped with tune.py, not left training
        states = [t.state.name for t in optuna.load_study(study_name="term", storage=storage).trials]
        assert states == ["FAIL", "FAIL"]  # cut off, as by Ctrl-C: none left RUNNING
    finally:  # a failed test leaves no orphans behind either
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("narrow", ["learning-rate=1e-4:inf", "learning-rate=nan:1e-3", "learning-rate=1e-3:1e-4",
                                    "learning-rate=0:1e-3", "learning-rate=1e-4:1e-4", "vf-coef=0.5:2"])
def test_a_narrowed_range_outside_the_space_is_refused_before_the_study_is_touched(in_tmp, capsys, narrow):
    # 1e-4:inf used to pass, and the first trial raised inside Optuna's sampler: a traceback, and a trial left
    # RUNNING in the study.
    # (--trials 1 and a tiny budget: were the range let through, the test would fail in seconds, not train on)
    assert tune.main(["--script", "a2c.py", "--env-ids", "CartPole-v1", "--narrow", narrow, "--trials", "1",
                      "--workers", "1", "--", *TINY_A2C]) == 2
    name = narrow.partition("=")[0]
    space = tune.SPACES["a2c.py"][name]
    assert capsys.readouterr().err == (f"error: --narrow {narrow}: give LOW < HIGH within {name}'s range "
                                       f"{space.low:g}:{space.high:g}\n")
    assert not (in_tmp / "runs").exists()  # no storage made, no trial asked


def test_a_trial_that_cannot_be_drawn_is_failed_not_left_running(in_tmp, stand_in, monkeypatch):
    monkeypatch.setitem(tune.SPACES, "stand_in.py", {"quality": Float(1.0, math.inf)})  # past shape_space's check
    storage = f"sqlite:///{in_tmp / 'study.db'}"
    with pytest.raises(OverflowError):  # a bug in tune.py: said as one, but the study is left clean
        tune.main(["--script", "stand_in.py", "--env-ids", "Env-v0", "--trials", "1", "--storage", storage,
                   "--study-name", "d", "--workers", "1", "--progress-interval", "0"])
    assert [t.state.name for t in optuna.load_study(study_name="d", storage=storage).trials] == ["FAIL"]


def test_studies_of_one_name_in_two_storages_keep_their_runs_apart(in_tmp, stand_in):
    # Their runs used to share runs/<env>__<script>__<seed>__<study>-t<trial>/: the second study deleted the
    # first's trial directory, running or finished, and wrote its own there.
    first, second = f"sqlite:///{in_tmp / 'a.db'}", "sqlite:///b.db"
    for storage, quality in ((first, "1.0"), (second, "0.5")):
        assert tune.main(["--script", "stand_in.py", "--env-ids", "Env-v0", "--trials", "1", "--storage", storage,
                          "--study-name", "s", "--fix", f"quality={quality}", "--progress-interval", "0"]) == 0
    runs = sorted(p.name for p in (in_tmp / "runs").iterdir() if p.name.startswith("Env-v0"))
    assert len(runs) == 2, runs
    assert runs == sorted(f"Env-v0__stand_in__1__{tune.run_tag('s', storage)}-t0" for storage in (first, second))
    for name, quality in zip(runs, (1.0, 0.5) if tune.run_tag("s", first) in runs[0] else (0.5, 1.0)):
        assert json.loads((in_tmp / "runs" / name / "summary.json").read_text())["eval_mean"] == quality
    # One file by two paths is one storage: processes joining a study agree on its runs' names.
    assert tune.run_tag("s", "sqlite:///a.db") == tune.run_tag("s", first) != tune.run_tag("s", second)
