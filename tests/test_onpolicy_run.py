"""The on-policy scripts end to end: train() on a tiny budget, and each script as a user runs it."""

import copy
import csv
import dataclasses
import errno
import fractions
import importlib
import inspect
import json
import math
import os
import re
import socket
import sys
import types

import gymnasium as gym
import numpy as np
import pytest
import torch
import tyro

import toy_envs  # noqa: F401  (registers the test environments)
from conftest import run_script, tiny

# script -> (its default env, an env of the wrong action kind, what the error must point to)
SCRIPTS = {
    "ppo_continuous": ("Pendulum-v1", "CartPole-v1", "use ppo_discrete.py"),
    "ppo_discrete": ("CartPole-v1", "Pendulum-v1", "use ppo_continuous.py"),
    "a2c": ("CartPole-v1", None, None),  # takes every action kind
}
PPO = ["ppo_continuous", "ppo_discrete"]
CPU = torch.device("cpu")


@pytest.fixture(params=list(SCRIPTS))
def algo(request):
    return importlib.import_module(request.param)


@pytest.fixture(params=PPO)
def ppo(request):
    return importlib.import_module(request.param)


def tiny_args(algo, *extra: str):
    return tyro.cli(algo.Args, args=[*tiny(algo.__name__), *extra])


def read_metrics(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_train_smoke_writes_metrics_model_and_summary(algo, in_tmp):
    summary = algo.train(tiny_args(algo, "--run-name", "smoke"))
    run_dir = in_tmp / "runs" / "smoke"
    rows = read_metrics(run_dir)
    assert [int(r["global_step"]) for r in rows] == [128, 256]
    for key in ("policy_loss", "value_loss", "entropy", "explained_variance", "sps", "learning_rate"):
        assert all(np.isfinite(float(r[key])) for r in rows), key
    if algo.__name__.startswith("ppo"):
        assert all(np.isfinite(float(r["approx_kl"])) and 0 <= float(r["clip_frac"]) <= 1 for r in rows)
    assert summary["global_step"] == 256 and len(summary["eval_returns"]) == 2
    assert json.loads((run_dir / "summary.json").read_text())["eval_mean"] == summary["eval_mean"]
    assert (run_dir / "model.pt").is_file()


def test_same_seed_gives_the_same_numbers_on_cpu(algo, in_tmp):
    a = algo.train(tiny_args(algo, "--run-name", "a", "--seed", "7"))
    b = algo.train(tiny_args(algo, "--run-name", "b", "--seed", "7"))
    c = algo.train(tiny_args(algo, "--run-name", "c", "--seed", "8"))
    drop_timing = lambda rows: [{k: v for k, v in r.items() if k not in ("time", "sps")} for r in rows]  # noqa: E731
    assert drop_timing(read_metrics(in_tmp / "runs/a")) == drop_timing(read_metrics(in_tmp / "runs/b"))
    assert a["eval_returns"] == b["eval_returns"]
    wa = torch.load(in_tmp / "runs/a/model.pt", weights_only=True)["agent"]
    wb = torch.load(in_tmp / "runs/b/model.pt", weights_only=True)["agent"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert c["eval_returns"] != a["eval_returns"]


def test_normalisation_statistics_are_saved_and_used_by_evaluation(algo, in_tmp, monkeypatch):
    summary = algo.train(tiny_args(algo, "--run-name", "norm", "--norm-obs"))
    agent, obs_rms, state = algo.load_model(str(in_tmp / "runs/norm/model.pt"), torch.device("cpu"))
    # The statistics saved are the ones training gathered (2 rollouts of 128 observations).
    assert obs_rms.count == pytest.approx(256, abs=1e-3)
    assert not np.allclose(obs_rms.mean, 0.0)
    # Every observation of the evaluation goes through exactly these statistics...
    used = []
    normalize = algo.normalize_obs
    monkeypatch.setattr(algo, "normalize_obs", lambda obs, rms: used.append(rms) or normalize(obs, rms))
    returns = algo.evaluate(agent, obs_rms, SCRIPTS[algo.__name__][0], {}, 2, algo.eval_seed(1), torch.device("cpu"))
    assert len(used) >= 2 and all(rms is obs_rms for rms in used)
    # ...and so evaluating the saved model reproduces the evaluation at the end of training.
    assert returns == summary["eval_returns"]


def test_checkpoint_then_resume_continues_the_run(algo, in_tmp):
    algo.train(tiny_args(algo, "--run-name", "ck", "--checkpoint-every", "256", "--total-timesteps", "512"))
    ckpt = torch.load(in_tmp / "runs/ck/checkpoint.pt", weights_only=True)
    assert ckpt["global_step"] == 512 and ckpt["iteration"] == 4
    assert not (in_tmp / "runs/ck/checkpoint.pt.tmp").exists()
    # At its end already: refused, so the finished run's summary is not overwritten.
    with pytest.raises(algo.UsageError, match="ends at step 512, already the end of --total-timesteps 512"):
        algo.train(algo.parse_args(["--resume", str(in_tmp / "runs/ck/checkpoint.pt")]))

    args = algo.parse_args(["--resume", str(in_tmp / "runs/ck/checkpoint.pt"), "--total-timesteps", "768"])
    assert args.num_steps == 64 and args.num_envs == 2  # settings come from the checkpoint
    summary = algo.train(args)
    assert summary["global_step"] == 768
    rows = read_metrics(in_tmp / "runs/ck")
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [int(r["global_step"]) for r in rows][-2:] == [640, 768]
    # The learning-rate schedule continues where it was, over the new total.
    assert float(rows[4]["learning_rate"]) == pytest.approx(algo.Args().learning_rate * (1 - 4 / 6))


def test_resume_drops_metrics_logged_after_the_checkpoint(algo, in_tmp):
    # Checkpoint at step 256 of 512: rows for 384 and 512 exist but are redone on resume.
    algo.train(tiny_args(algo, "--run-name", "crash", "--checkpoint-every", "256", "--total-timesteps", "512",
                        "--eval-episodes", "0"))
    ckpt = torch.load(in_tmp / "runs/crash/checkpoint.pt", weights_only=True)
    ckpt["global_step"], ckpt["iteration"] = 256, 2  # as if the run had died right after step 256...
    torch.save(ckpt, in_tmp / "runs/crash/checkpoint.pt")
    (in_tmp / "runs/crash/summary.json").unlink()  # ...before finishing
    algo.train(algo.parse_args(["--resume", str(in_tmp / "runs/crash/checkpoint.pt")]))
    assert [int(r["global_step"]) for r in read_metrics(in_tmp / "runs/crash")] == [128, 256, 384, 512]


def test_resume_with_a_normaliser_the_checkpoint_lacks_is_refused(algo, in_tmp):
    algo.train(tiny_args(algo, "--run-name", "plain", "--checkpoint-every", "128", "--eval-episodes", "0",
                         "--no-norm-obs", "--no-norm-reward"))
    for flag, key in (("--norm-obs", "obs_rms"), ("--norm-reward", "reward_rms")):
        args = algo.parse_args(["--resume", str(in_tmp / "runs/plain/checkpoint.pt"), "--total-timesteps", "512", flag])
        with pytest.raises(algo.UsageError, match=f"holds no {key}: its run trained without it"):
            algo.train(args)


def test_an_unfinished_run_name_starts_afresh_and_a_finished_one_is_refused_untouched(algo, in_tmp):
    algo.train(tiny_args(algo, "--run-name", "again", "--eval-episodes", "0"))
    (in_tmp / "runs/again/summary.json").unlink()  # as if interrupted: benchmark.py starts it again
    algo.train(tiny_args(algo, "--run-name", "again", "--eval-episodes", "0"))
    assert [int(r["global_step"]) for r in read_metrics(in_tmp / "runs/again")] == [128, 256]
    before = {p.name: p.read_bytes() for p in (in_tmp / "runs/again").iterdir()}
    with pytest.raises(algo.UsageError, match=r"^runs/again holds a finished run \(summary.json\), which this run "):
        algo.train(tiny_args(algo, "--run-name", "again", "--eval-episodes", "0", "--learning-rate", "1e30"))
    assert {p.name: p.read_bytes() for p in (in_tmp / "runs/again").iterdir()} == before


def test_resume_restores_networks_optimizer_and_statistics(algo, in_tmp):
    algo.train(tiny_args(algo, "--run-name", "r", "--checkpoint-every", "128", "--eval-episodes", "0",
                          "--norm-obs", "--norm-reward"))
    ckpt = torch.load(in_tmp / "runs/r/checkpoint.pt", weights_only=True)
    model = torch.load(in_tmp / "runs/r/model.pt", weights_only=True)
    assert all(torch.equal(ckpt["agent"][k], model["agent"][k]) for k in model["agent"])
    assert torch.equal(ckpt["obs_rms"]["mean"], model["obs_rms"]["mean"])
    assert ckpt["optimizer"]["state"] and ckpt["reward_rms"]["count"] > 1


def test_a_checkpoint_holds_what_run_names_and_resume_restores_it_by_the_same_names(algo, in_tmp):
    """Run saves and restores by the one list train() gives it: objects with a state_dict, and counters."""
    def objects(filled: bool):
        agent, stats = algo.RunningMeanStd((2,)), algo.RunningMeanStd()  # any object with a state_dict
        if filled:
            agent.update(np.arange(6.0).reshape(3, 2))
            stats.update(np.array([5.0, 7.0, 11.0]))
        return {"agent": agent, "obs_rms": None}, {"optimizer": stats}

    model, training = objects(True)
    args = tiny_args(algo, "--run-name", "names", "--eval-episodes", "0")
    counters = {"global_step": 0, "iteration": 0, "beta": 1.0}
    run = algo.Run(args, CPU, 128, shapes={"obs_dim": 2}, model=model, training=training, counters=counters)
    with pytest.raises(KeyError):  # a counter left out of the save is an error, not a silent gap
        run.save_checkpoint(global_step=256, iteration=2)
    run.save_checkpoint(global_step=256, iteration=2, beta=0.25)
    run.metrics.close()
    after_save = torch.rand(3)  # drawn from the RNG state the checkpoint holds
    path = in_tmp / "runs/names/checkpoint.pt"
    assert set(torch.load(path, weights_only=True)) == {"algorithm", "args", "obs_dim", "agent", "obs_rms", "optimizer",
                                                        "global_step", "iteration", "beta", "torch_rng",
                                                        "cuda_rng", "elapsed"}

    model2, training2 = objects(False)
    torch.manual_seed(123)
    resumed = algo.Run(algo.parse_args(["--resume", str(path)]), CPU, 128, shapes={"obs_dim": 2},
                       model=model2, training=training2, counters=counters)
    resumed.metrics.close()
    assert resumed.start == {"global_step": 256, "iteration": 2, "beta": 0.25}
    assert resumed.dir == in_tmp / "runs/names"
    for before, after in [(model["agent"], model2["agent"]), (training["optimizer"], training2["optimizer"])]:
        np.testing.assert_array_equal(after.mean, before.mean)
        np.testing.assert_array_equal(after.var, before.var)
        assert after.count == before.count
    assert torch.equal(torch.rand(3), after_save)


def test_checkpoint_cadence(algo, in_tmp):
    """A checkpoint is due when a multiple of --checkpoint-every lies in (previous step, step]."""
    def run(every: int):
        r = algo.Run(tiny_args(algo, "--checkpoint-every", str(every), "--run-name", f"c{every}"), CPU, 128,
                     shapes={}, model={}, training={}, counters={"global_step": 0, "iteration": 0})
        r.metrics.close()
        return r

    r = run(256)
    due = [r.checkpoint_due(step, step - 128) for step in (128, 256, 384, 512, 640)]
    assert due == [False, True, False, True, False]
    assert r.checkpoint_due(300, 200) and not r.checkpoint_due(511, 300) and r.checkpoint_due(600, 100)
    assert not any(run(0).checkpoint_due(step, step - 128) for step in (128, 256, 512))


def test_ppo_penalty_variant_trains_and_adapts_beta(ppo, in_tmp):
    ppo.train(tiny_args(ppo, "--run-name", "pen", "--ppo-penalty", "--eval-episodes", "0"))
    betas = [float(r["kl_beta"]) for r in read_metrics(in_tmp / "runs/pen")]
    assert betas[0] in (0.5, 1.0, 2.0)
    assert all(np.isfinite(betas))


# --- The script as a subprocess ---


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_lists_the_flags(tmp_path, script):
    result = run_script(f"{script}.py", "--help", cwd=tmp_path)
    assert result.returncode == 0
    for flag in ("--env-id", "--total-timesteps", "--num-envs", "--num-steps", "--gae-lambda", "--ent-coef",
                 "--vf-coef", "--max-grad-norm", "--checkpoint-every", "--resume", "--evaluate"):
        assert flag in result.stdout, flag
    if script in PPO:
        for flag in ("--num-minibatches", "--update-epochs", "--clip-coef", "--target-kl", "--ppo-penalty"):
            assert flag in result.stdout, flag


BAD_INPUT = [
    (["--env-id", "Pendulm-v1"], "cannot make Pendulm-v1: Environment `Pendulm` doesn't exist. Did you mean: `Pendulum`?"),
    (["--num-envs", "0"], "--num-envs must be positive"),
    (["--total-timesteps", "-5"], "--total-timesteps must be positive"),
    (["--num-steps", "0"], "--num-steps must be positive"),
    (["--resume", "no/such/checkpoint.pt"], "no file at no/such/checkpoint.pt"),
]
PPO_BAD_INPUT = [
    (["--num-envs", "3", "--num-steps", "5", "--num-minibatches", "4"], "does not divide"),
    (["--update-epochs", "0"], "--update-epochs must be positive"),
]


def bad_input_cases():
    for script, (_, wrong_env, pointer) in SCRIPTS.items():
        cases = BAD_INPUT + (PPO_BAD_INPUT if script in PPO else [])
        if wrong_env:
            cases = cases + [(["--env-id", wrong_env], pointer)]
        for flags, message in cases:
            yield pytest.param(script, flags, message, id=f"{script}-{' '.join(flags)}")


@pytest.mark.parametrize("script, flags, message", list(bad_input_cases()))
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, script, flags, message):
    result = run_script(f"{script}.py", *flags, cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_save_then_evaluate_later_with_video(tmp_path, script):
    train = run_script(f"{script}.py", *tiny(script), "--run-name", "cli", cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    assert "step" in train.stdout and "SPS" in train.stdout  # the progress line
    summary = json.loads((tmp_path / "runs/cli/summary.json").read_text())

    later = run_script(f"{script}.py", "--evaluate", "runs/cli/model.pt", "--eval-episodes", "2",
                       "--capture-video", cwd=tmp_path)
    assert later.returncode == 0, later.stderr
    # Same episodes, same statistics: the same result as at the end of training.
    assert f"eval: {summary['eval_mean']:.1f} ± {summary['eval_std']:.1f} over 2 episodes" in later.stdout
    assert len(list((tmp_path / "runs/cli/videos").glob("*.mp4"))) == 2


@pytest.mark.parametrize("script", SCRIPTS)
def test_resume_from_the_command_line(tmp_path, script):
    first = run_script(f"{script}.py", *tiny(script), "--run-name", "cr", "--checkpoint-every", "128",
                       "--eval-episodes", "0", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    resumed = run_script(f"{script}.py", "--resume", "runs/cr/checkpoint.pt", "--total-timesteps", "512",
                         cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from runs/cr/checkpoint.pt at step 256" in resumed.stdout
    assert json.loads((tmp_path / "runs/cr/summary.json").read_text())["global_step"] == 512


def test_track_without_network_falls_back_to_offline(tmp_path):
    result = run_script("ppo_discrete.py", *tiny("ppo_discrete"), "--run-name", "tr", "--track", "--eval-episodes", "0",
                        cwd=tmp_path, timeout=180)
    assert result.returncode == 0, result.stderr
    assert "wandb: no network, logging offline" in result.stdout
    assert list((tmp_path / "runs/tr/wandb").glob("offline-run-*"))


def test_multidiscrete_env_trains(in_tmp):
    import ppo_discrete

    summary = ppo_discrete.train(tiny_args(ppo_discrete, "--env-id", "ToyMultiDiscrete-v0", "--run-name", "md"))
    assert summary["global_step"] == 256 and len(summary["eval_returns"]) == 2
    actions = ppo_discrete.load_model(str(in_tmp / "runs/md/model.pt"), torch.device("cpu"))[2]["dims"]
    assert actions == [3, 4]


def test_multidiscrete_env_from_the_command_line(tmp_path):
    result = run_script("ppo_discrete.py", *tiny("ppo_discrete"), "--env-id", "toy_envs:ToyMultiDiscrete-v0", "--run-name", "mdc",
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "eval:" in result.stdout


def test_async_envs_give_the_same_run_as_sync(algo, in_tmp):
    sync = algo.train(tiny_args(algo, "--run-name", "sync", "--eval-episodes", "1"))
    subprocesses = algo.train(tiny_args(algo, "--run-name", "async", "--eval-episodes", "1", "--async-envs"))
    drop_timing = lambda rows: [{k: v for k, v in r.items() if k not in ("time", "sps")} for r in rows]  # noqa: E731
    assert drop_timing(read_metrics(in_tmp / "runs/sync")) == drop_timing(read_metrics(in_tmp / "runs/async"))
    assert sync["eval_returns"] == subprocesses["eval_returns"]


# --- Nothing lost, nothing silent ---


class DictObservations(gym.Env):
    """Dict observations, a Discrete(3) "cell" and a 2-D Box "position" (sorted by key when flattened),
    with the given action space; one step per episode."""

    def __init__(self, action_space: gym.Space):
        self.observation_space = gym.spaces.Dict(cell=gym.spaces.Discrete(3),
                                                  position=gym.spaces.Box(-1.0, 1.0, (2,), np.float32))
        self.action_space = action_space

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return {"cell": 2, "position": np.array([0.5, -0.5], np.float32)}, {}

    def step(self, action):
        return self.reset()[0], 0.0, True, False, {}


gym.register("OnPolicyDictBox-v0", entry_point=lambda **kw: DictObservations(gym.spaces.Box(-1.0, 1.0, (1,), np.float32)))
gym.register("OnPolicyDictDiscrete-v0", entry_point=lambda **kw: DictObservations(gym.spaces.Discrete(2)))
TOY = {"ppo_continuous": "Box", "ppo_discrete": "Discrete", "a2c": "Box"}  # an action space each script takes


def test_make_env_flattens_observations_of_every_kind(algo):
    env = algo.make_env(f"OnPolicyDict{TOY[algo.__name__]}-v0")
    assert env.observation_space.shape == (5,)
    np.testing.assert_array_equal(env.reset(seed=0)[0], [0, 0, 1, 0.5, -0.5])  # the cell one-hot, then the position
    if algo.__name__ != "ppo_continuous":  # Tuple(Discrete(32), Discrete(11), Discrete(2)), Discrete actions
        assert algo.make_env("Blackjack-v1").observation_space.shape == (45,)


def test_frozenlake_trains_on_one_hot_observations_and_its_model_evaluates(in_tmp):
    import ppo_discrete

    summary = ppo_discrete.train(tiny_args(ppo_discrete, "--env-id", "FrozenLake-v1", "--run-name", "fl"))
    agent, obs_rms, state = ppo_discrete.load_model(str(in_tmp / "runs/fl/model.pt"), CPU)
    assert state["obs_dim"] == 16  # Discrete(16) positions, one-hot
    later = ppo_discrete.evaluate(agent, obs_rms, "FrozenLake-v1", {}, 2, ppo_discrete.eval_seed(1), CPU)
    assert later == summary["eval_returns"]


def test_non_finite_float_flags_are_refused(algo):
    names = [f.name for f in dataclasses.fields(algo.Args) if f.type in (float, float | None)]
    assert {"learning_rate", "gamma", "log_interval"} <= set(names)
    for name in names:
        for value in (math.nan, math.inf, -math.inf):
            with pytest.raises(algo.UsageError, match=f"^--{name.replace('_', '-')} must be a finite number, got {value}$"):
                algo.check_args(dataclasses.replace(algo.Args(), **{name: value}))


def test_a_diverging_run_stops_with_exit_code_3_and_leaves_no_result(algo, in_tmp, capsys):
    with pytest.raises(SystemExit) as stop:
        algo.main([*tiny(algo.__name__), "--run-name", "div", "--learning-rate", "1e30", "--checkpoint-every", "128"])
    assert stop.value.code == 3
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and re.fullmatch(
        r"error: training diverged at step (\d+): (\w+_loss|entropy) is (nan|inf|-inf); (.*); try a lower --learning-rate",
        lines[0]), lines
    step, kept = int(re.search(r"step (\d+)", lines[0])[1]), lines[0].split("; ")[1]
    rows = read_metrics(in_tmp / "runs/div")
    assert int(rows[-1]["global_step"]) == step  # the row that diverged is written: it is the diagnosis
    if step > 128:
        assert kept == f"runs/div/checkpoint.pt (step {step - 128}) holds the last finite weights"
        assert torch.load(in_tmp / "runs/div/checkpoint.pt", weights_only=True)["global_step"] == step - 128
    else:
        assert kept == "no checkpoint was written"
    assert not (in_tmp / "runs/div/model.pt").exists() and not (in_tmp / "runs/div/summary.json").exists()


def test_weights_that_are_not_finite_are_never_saved(algo, in_tmp):
    agent = torch.nn.Linear(2, 1)
    run = algo.Run(tiny_args(algo, "--run-name", "nan"), CPU, 128, shapes={}, model={"agent": agent},
                   training={}, counters={"global_step": 0, "iteration": 0})
    run.save_checkpoint(global_step=128, iteration=1)
    before = (in_tmp / "runs/nan/checkpoint.pt").read_bytes()
    with torch.no_grad():
        agent.weight[0, 1] = float("inf")
    message = r"^training diverged at step 256: agent.weight is not finite; runs/nan/checkpoint.pt \(step 128\) holds"
    with pytest.raises(algo.Diverged, match=message):
        run.save_checkpoint(global_step=256, iteration=2)
    with pytest.raises(algo.Diverged, match=message):
        run.finish(256)
    run.metrics.close()
    assert (in_tmp / "runs/nan/checkpoint.pt").read_bytes() == before
    assert sorted(p.name for p in (in_tmp / "runs/nan").iterdir()) == ["args.json", "checkpoint.pt", "metrics.csv"]


def test_video_that_cannot_be_rendered_is_skipped_and_the_run_finishes(algo, in_tmp, capsys):
    env_id = f"ToyCounter{TOY[algo.__name__]}-v0"  # no rgb_array rendering
    summary = algo.train(tiny_args(algo, "--env-id", env_id, "--run-name", "video", "--capture-video"))
    assert (f"video skipped: {env_id} cannot render frames here (it has no rgb_array render mode); "
            "evaluating without video") in capsys.readouterr().out
    assert len(summary["eval_returns"]) == 2
    assert (in_tmp / "runs/video/model.pt").is_file() and (in_tmp / "runs/video/summary.json").is_file()


def test_the_model_is_saved_before_the_final_evaluation(in_tmp, monkeypatch):
    import a2c

    def evaluation_fails(*args, **kwargs):
        raise RuntimeError("cannot render")

    monkeypatch.setattr(a2c, "evaluate", evaluation_fails)
    with pytest.raises(RuntimeError):
        a2c.train(tiny_args(a2c, "--run-name", "first"))
    assert (in_tmp / "runs/first/model.pt").is_file() and not (in_tmp / "runs/first/summary.json").exists()


def test_a_finished_run_ends_with_a_checkpoint_refuses_a_resume_from_before_and_extends_as_one_run(algo, in_tmp):
    algo.train(tiny_args(algo, "--run-name", "fin", "--checkpoint-every", "256", "--total-timesteps", "384",
                         "--eval-episodes", "0"))
    run_dir, path = in_tmp / "runs/fin", in_tmp / "runs/fin/checkpoint.pt"
    final = torch.load(path, weights_only=True)
    assert final["global_step"] == 384  # the end of training, not only the multiples of 256
    assert 0 < final["elapsed"] < 100
    assert all(t.device.type == "cpu" for t in final["agent"].values())

    # A checkpoint from before the end (as one written by the code before this one): refused, files untouched.
    torch.save(final | {"global_step": 256, "iteration": 2}, path)
    files = {name: (run_dir / name).read_bytes() for name in ("model.pt", "summary.json", "metrics.csv", "args.json")}
    with pytest.raises(algo.UsageError, match=r"^runs/fin finished at step 384 \(summary.json\); its checkpoint.pt is "
                                              r"from step 256, so resuming would redo steps past it .*resume into a new run with "
                                              r"--run-name NAME instead$"):
        algo.train(algo.parse_args(["--resume", "runs/fin/checkpoint.pt", "--total-timesteps", "512"]))
    assert {name: (run_dir / name).read_bytes() for name in files} == files

    (run_dir / "summary.json").write_text("{")
    with pytest.raises(algo.UsageError, match=r"^runs/fin/summary.json is damaged; start a new run"):
        algo.train(algo.parse_args(["--resume", "runs/fin/checkpoint.pt", "--total-timesteps", "512"]))

    # The final checkpoint extends the run, whose clock goes on from the checkpoint's; so does one past the
    # summary's step (an extension that was interrupted).
    (run_dir / "summary.json").write_text(json.dumps({"global_step": 256}))
    torch.save(final | {"elapsed": 1000.0}, path)
    summary = algo.train(algo.parse_args(["--resume", "runs/fin/checkpoint.pt", "--total-timesteps", "512"]))
    rows = read_metrics(run_dir)
    assert [int(r["global_step"]) for r in rows] == [128, 256, 384, 512]
    assert float(rows[2]["time"]) < 100 and float(rows[3]["time"]) >= 1000
    assert int(rows[3]["sps"]) == round(512 / float(rows[3]["time"]))
    assert summary["wall_time"] >= 1000 and abs(summary["sps"] - 512 / summary["wall_time"]) <= 1


def test_resume_with_another_env_or_weights_that_do_not_fit_is_one_error(algo, in_tmp):
    algo.train(tiny_args(algo, "--run-name", "env", "--checkpoint-every", "128", "--total-timesteps", "128",
                         "--eval-episodes", "0"))
    env, other = {"ppo_continuous": ("Pendulum-v1", "MountainCarContinuous-v0")}.get(
        algo.__name__, ("CartPole-v1", "Acrobot-v1"))
    dims = {"Pendulum-v1": 3, "MountainCarContinuous-v0": 2, "CartPole-v1": 4, "Acrobot-v1": 6}
    with pytest.raises(algo.UsageError, match=rf"^runs/env/checkpoint.pt was trained on {env} \(obs_dim {dims[env]}\), "
                                              rf"these flags give {other} \(obs_dim {dims[other]}\); resume with the "
                                              r"flags it was trained with \(drop --env-id\)$"):
        algo.train(algo.parse_args(["--resume", "runs/env/checkpoint.pt", "--total-timesteps", "512", "--env-id", other]))
    ckpt = torch.load("runs/env/checkpoint.pt", weights_only=True)
    ckpt["agent"]["critic.0.weight"] = torch.zeros(3, 3)
    torch.save(ckpt, "runs/env/checkpoint.pt")
    with pytest.raises(algo.UsageError, match=r"^runs/env/checkpoint.pt does not fit these networks: .*Agent.*; "
                                              r"resume with the flags it was trained with"):
        algo.train(algo.parse_args(["--resume", "runs/env/checkpoint.pt", "--total-timesteps", "512"]))


def test_resume_or_evaluate_of_a_file_of_another_kind_is_one_error(algo, in_tmp):
    torch.save({"algorithm": "dqn", "args": {"env_id": "CartPole-v1"}}, "dqn.pt")
    for flag in ("--resume", "--evaluate"):
        with pytest.raises(algo.UsageError, match=f"^dqn.pt was saved by dqn.py, not {algo.__name__}.py; "
                                                  f"use python dqn.py {flag} dqn.pt$"):
            algo.parse_args([flag, "dqn.pt"])
    (in_tmp / "junk.pt").write_bytes(b"not a torch file")
    torch.save({"args": fractions.Fraction(1, 2)}, "pickled.pt")  # an object weights_only refuses to load
    for name in ("junk.pt", "pickled.pt"):
        with pytest.raises(algo.UsageError, match=f"^cannot read {name}: not a model.pt or checkpoint.pt saved by "
                                                  "these scripts$"):
            algo.parse_args(["--evaluate", name])


def test_cuda_random_state_is_saved_and_restored_and_old_checkpoints_still_resume(algo, in_tmp, monkeypatch):
    states, restored = [torch.tensor([1, 2, 3], dtype=torch.uint8), torch.tensor([4, 5], dtype=torch.uint8)], []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in states])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda new: restored.append([s.tolist() for s in new]))
    counters = {"global_step": 0, "iteration": 0}

    def run(*argv, device=torch.device("cuda")):  # a run on that device; its (empty) objects stay on the CPU
        r = algo.Run(tiny_args(algo, *argv) if argv[0] != "--resume" else algo.parse_args(list(argv)), device,
                     128, shapes={}, model={}, training={}, counters=counters)
        r.metrics.close()
        return r

    run("--run-name", "cu").save_checkpoint(global_step=128, iteration=1)
    path = str(in_tmp / "runs/cu/checkpoint.pt")
    run("--resume", path)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # a machine with fewer GPUs: the first ones
    run("--resume", path)
    assert restored == [[[1, 2, 3], [4, 5]], [[1, 2, 3]]]
    # A CPU run on this machine neither restores it nor saves one.
    on_cpu = run("--resume", path, device=CPU)
    on_cpu.save_checkpoint(global_step=256, iteration=2)
    assert len(restored) == 2 and torch.load(path, weights_only=True)["cuda_rng"] is None
    run("--run-name", "cu2").save_checkpoint(global_step=128, iteration=1)
    path = str(in_tmp / "runs/cu2/checkpoint.pt")
    ckpt = torch.load(path, weights_only=True)
    del ckpt["cuda_rng"], ckpt["elapsed"]  # as the code before wrote them
    torch.save(ckpt, path)
    assert run("--resume", path).elapsed_before == 0 and len(restored) == 2


def test_a_cpu_run_on_a_cuda_machine_never_touches_cuda(algo, in_tmp, monkeypatch):
    def touched(*args, **kwargs):
        raise AssertionError("a --no-cuda run touched CUDA")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for name in ("get_rng_state_all", "set_rng_state_all", "device_count", "_lazy_init"):
        monkeypatch.setattr(torch.cuda, name, touched)
    algo.train(tiny_args(algo, "--run-name", "cpu", "--checkpoint-every", "128"))  # tiny: --no-cuda
    path = in_tmp / "runs/cpu/checkpoint.pt"
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["cuda_rng"] is None
    (in_tmp / "runs/cpu/summary.json").unlink()  # a run to go on with, from a GPU run's checkpoint
    torch.save(ckpt | {"cuda_rng": [torch.tensor([1, 2], dtype=torch.uint8)], "global_step": 128, "iteration": 0},
               path)
    algo.train(algo.parse_args(["--resume", str(path)]))
    algo.main(["--evaluate", str(in_tmp / "runs/cpu/model.pt"), "--no-cuda", "--eval-episodes", "1"])


def test_load_model_keeps_the_statistics_on_the_host_wherever_the_agent_goes(algo, in_tmp):
    algo.train(tiny_args(algo, "--run-name", "meta", "--norm-obs", "--eval-episodes", "0"))
    # meta: a device whose tensors cannot become numpy, as CUDA's cannot.
    agent, obs_rms, _ = algo.load_model("runs/meta/model.pt", torch.device("meta"))
    assert isinstance(obs_rms.mean, np.ndarray) and isinstance(obs_rms.var, np.ndarray) and obs_rms.count > 1
    assert {p.device.type for p in agent.parameters()} == {"meta"}
    loads = re.findall(r"torch\.load\([^\n]*", inspect.getsource(algo))
    assert len(loads) == 3 and all('map_location="cpu"' in line for line in loads)  # every load, onto the host


def test_host_copy_acts_like_the_trained_agent_once_refreshed(algo):
    torch.manual_seed(0)
    agent = torch.nn.Linear(3, 2)
    assert algo.host_copy(agent, CPU) is agent  # on the CPU: no copy
    host = algo.host_copy(agent, torch.device("cuda"))  # what a GPU run gets (copied from this CPU module)
    assert host is not agent and {p.device.type for p in host.parameters()} == {"cpu"}
    obs = torch.randn(4, 3)
    before = agent(obs).detach()
    agent(obs).pow(2).sum().backward()
    torch.optim.SGD(agent.parameters(), lr=0.1).step()
    torch.testing.assert_close(host(obs), before)  # not refreshed yet: the policy before the update
    algo.refresh_host_copy(host, agent)
    torch.testing.assert_close(host(obs), agent(obs))


def test_acting_on_a_separate_host_copy_gives_the_same_run(algo, in_tmp, monkeypatch):
    """On a GPU the rollouts act through a CPU copy; a copy refreshed after each update gives the same numbers."""
    algo.train(tiny_args(algo, "--run-name", "same", "--eval-episodes", "0"))
    monkeypatch.setattr(algo, "host_copy", lambda module, device: copy.deepcopy(module))
    algo.train(tiny_args(algo, "--run-name", "copy", "--eval-episodes", "0"))
    drop_timing = lambda rows: [{k: v for k, v in r.items() if k not in ("time", "sps")} for r in rows]  # noqa: E731
    assert drop_timing(read_metrics(in_tmp / "runs/same")) == drop_timing(read_metrics(in_tmp / "runs/copy"))


def test_one_line_errors_for_a_missing_module_an_unwritable_run_directory_and_a_full_disk(algo, in_tmp, monkeypatch):
    with pytest.raises(algo.UsageError, match="^cannot make nosuchmod:Foo-v0: No module named 'nosuchmod'"):
        algo.check_env("nosuchmod:Foo-v0", {})
    (in_tmp / "runs").mkdir()
    (in_tmp / "runs/file").write_text("")
    with pytest.raises(algo.UsageError, match="^cannot write the run directory runs/file/sub: Not a directory; "
                                              "choose another --run-name or a writable working directory$"):
        algo.Run(tiny_args(algo, "--run-name", "file/sub"), CPU, 128, shapes={}, model={}, training={},
                 counters={"global_step": 0, "iteration": 0})

    path = in_tmp / "checkpoint.pt"
    algo.atomic_save({"step": 1}, path)
    before = path.read_bytes()

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(algo.UsageError, match=f"^cannot write {path}: No space left on device; the previous "
                                              "checkpoint.pt is kept; free space and --resume from it$"):
        algo.atomic_save({"step": 2}, path)
    assert path.read_bytes() == before and not (in_tmp / "checkpoint.pt.tmp").exists()
    with pytest.raises(algo.UsageError, match="model.pt is kept; free space and run again$"):
        algo.atomic_save({"step": 2}, in_tmp / "model.pt")
    assert list(in_tmp.glob("*.tmp")) == []


def test_main_reports_other_file_system_errors_in_one_line(algo, monkeypatch, capsys):
    def train(args):
        raise PermissionError(errno.EACCES, "Permission denied", "runs/x/metrics.csv")

    monkeypatch.setattr(algo, "train", train)
    with pytest.raises(SystemExit) as stop:
        algo.main(["--no-cuda"])
    assert stop.value.code == 2 and capsys.readouterr().err == "error: runs/x/metrics.csv: Permission denied\n"


def test_wandb_probe_uses_the_host_and_port_that_wandb_base_url_names(algo, monkeypatch):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
        assert algo.wandb_server() == ("127.0.0.1", port)
        assert algo.wandb_reachable(timeout=2)
    assert not algo.wandb_reachable(timeout=2)  # the same port, closed
    monkeypatch.setenv("WANDB_BASE_URL", "http://wandb.example.org")
    assert algo.wandb_server() == ("wandb.example.org", 80)
    monkeypatch.delenv("WANDB_BASE_URL")
    assert algo.wandb_server() == ("api.wandb.ai", 443)


def test_track_without_an_api_key_logs_offline(algo, in_tmp, monkeypatch, capsys):
    modes = []  # a stand-in for wandb: only the mode init_wandb picks matters here
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=lambda **kwargs: modes.append(kwargs["mode"])))
    monkeypatch.setattr(algo, "wandb_reachable", lambda timeout=3.0: True)
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(in_tmp / "missing"))
    algo.init_wandb(algo.Args(), "r", in_tmp)
    assert "wandb: no API key (run `wandb login` or set WANDB_API_KEY), logging offline to" in capsys.readouterr().out
    (in_tmp / "netrc").write_text("machine api.wandb.ai\n  login user\n  password 0123456789\n")
    (in_tmp / "netrc").chmod(0o600)
    monkeypatch.setenv("NETRC", str(in_tmp / "netrc"))
    algo.init_wandb(algo.Args(), "r", in_tmp)
    monkeypatch.setenv("NETRC", str(in_tmp / "missing"))
    monkeypatch.setenv("WANDB_API_KEY", "0123456789")
    algo.init_wandb(algo.Args(), "r", in_tmp)
    assert modes == ["offline", "online", "online"]
