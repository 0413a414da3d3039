"""The on-policy scripts end to end: train() on a tiny budget, and each script as a user runs it."""

import csv
import importlib
import json

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
    returns = algo.evaluate(agent, obs_rms, SCRIPTS[algo.__name__][0], 2, algo.eval_seed(1), torch.device("cpu"))
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


def test_a_new_run_under_a_used_name_starts_its_metrics_afresh(algo, in_tmp):
    for _ in range(2):  # e.g. benchmark.py restarting an interrupted run
        algo.train(tiny_args(algo, "--run-name", "again", "--eval-episodes", "0"))
    assert [int(r["global_step"]) for r in read_metrics(in_tmp / "runs/again")] == [128, 256]


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
    run = algo.Run(args, CPU, 4, 128, shapes={"obs_dim": 2}, model=model, training=training, counters=counters)
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
    resumed = algo.Run(algo.parse_args(["--resume", str(path)]), CPU, 4, 128, shapes={"obs_dim": 2},
                       model=model2, training=training2, counters=counters)
    resumed.metrics.close()
    assert resumed.counters == {"global_step": 256, "iteration": 2, "beta": 0.25}
    assert resumed.dir == in_tmp / "runs/names"
    for before, after in [(model["agent"], model2["agent"]), (training["optimizer"], training2["optimizer"])]:
        np.testing.assert_array_equal(after.mean, before.mean)
        np.testing.assert_array_equal(after.var, before.var)
        assert after.count == before.count
    assert torch.equal(torch.rand(3), after_save)


def test_checkpoint_cadence(algo, in_tmp):
    """A checkpoint is due when a multiple of --checkpoint-every lies in (previous step, step]."""
    def run(every: int):
        r = algo.Run(tiny_args(algo, "--checkpoint-every", str(every), "--run-name", f"c{every}"), CPU, 4, 128,
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
    (["--env-id", "Pendulm-v1"], "unknown env id 'Pendulm-v1'; did you mean Pendulum-v1"),
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

