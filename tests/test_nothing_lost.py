"""Resume, run directories, signals and misbehaving envs: the promises of the README's "Nothing is lost".

The run-directory and command-line code is one shared text in every script (tools/sync.py checks it), so most
cases run on one on-policy and one off-policy script; what each script's own Part 1 or checks do runs on each."""

import csv
import gc
import importlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import tyro

import toy_envs  # noqa: F401  (registers the test environments)
from conftest import ROOT, tiny

ONPOLICY = ["ppo_continuous", "ppo_discrete", "a2c"]
OFFPOLICY = ["dqn", "ddqn", "ddpg", "naf"]
TINY_OFF = ["--total-timesteps", "400", "--learning-starts", "100", "--buffer-size", "1000", "--batch-size", "16",
            "--hidden-sizes", "16", "16", "--metrics-every", "100", "--eval-frequency", "200", "--eval-episodes", "2",
            "--no-cuda"]
DEFAULT_ENV = {"ppo_continuous": "Pendulum-v1", "ppo_discrete": "CartPole-v1", "a2c": "CartPole-v1",
               "dqn": "CartPole-v1", "ddqn": "CartPole-v1", "ddpg": "Pendulum-v1", "naf": "Pendulum-v1"}
BOX = {"ppo_continuous", "ddpg", "naf"}  # the scripts that need Box actions


def flags(name: str) -> list[str]:
    return tiny(name) if name in ONPOLICY else TINY_OFF


def toy(name: str, kind: str) -> str:  # a toy env of the script's action kind
    return f"toy_envs:Toy{kind}{'Box' if name in BOX else 'Discrete'}-v0"


def cli(algo, *argv: str) -> int:
    """main() in this process; its exit code."""
    try:
        algo.main(list(argv))
        code = 0
    except SystemExit as e:
        code = e.code
    return code


def error_of(algo, capsys, *argv: str) -> str:
    """The one error line of a refused command line (exit code 2), nothing before it on stderr."""
    assert cli(algo, *argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err.strip()


def steps(run_dir) -> list[int]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [int(row["global_step"]) for row in csv.DictReader(f)]


def files(run_dir) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}


@pytest.fixture(params=ONPOLICY)
def onpolicy(request):
    return importlib.import_module(request.param)


@pytest.fixture(params=["ppo_continuous", "dqn"])
def algo(request):  # one script of each family, for the shared Part 2
    return importlib.import_module(request.param)


# --- 1. On-policy resume with another batch: counted in env steps ---

def test_resume_with_another_batch_goes_on_from_the_same_env_step(onpolicy, in_tmp):
    onpolicy.train(tyro.cli(onpolicy.Args, args=[*tiny(onpolicy.__name__), "--total-timesteps", "512", "--run-name",
                                                 "b", "--checkpoint-every", "512", "--eval-episodes", "0"]))
    checkpoint = str(in_tmp / "runs/b/checkpoint.pt")
    minibatches = ["--num-minibatches", "2"] if onpolicy.__name__.startswith("ppo") else []
    # 512 -> 768 in rollouts of 1 x 64 steps: four of them, not 768 // 64 - 4 = 8 (the saved iteration in new units)
    summary = onpolicy.train(onpolicy.parse_args(["--resume", checkpoint, "--total-timesteps", "768", "--num-envs", "1",
                                                  *minibatches, "--run-name", "small"]))
    assert summary["global_step"] == 768
    assert steps(in_tmp / "runs/small") == [128, 256, 384, 512, 576, 640, 704, 768]
    with open(in_tmp / "runs/small/metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in rows][-4:] == [5, 6, 7, 8]
    # The learning rate anneals over env steps, to its last rollout: from 3/4 of the way at step 576.
    assert float(rows[4]["learning_rate"]) == pytest.approx(onpolicy.Args().learning_rate * (1 - 512 / 768))
    # A larger batch: one rollout of 4 x 64 fits (it used to be refused as "already the end").
    summary = onpolicy.train(onpolicy.parse_args(["--resume", checkpoint, "--total-timesteps", "768", "--num-envs", "4",
                                                  "--run-name", "big"]))
    assert summary["global_step"] == 768 and steps(in_tmp / "runs/big")[-1] == 768


# --- 2. --run-name beside --resume: a new run, the source untouched ---

@pytest.mark.parametrize("name", ["ppo_discrete", "dqn"])
def test_resume_under_another_run_name_starts_a_new_run_and_leaves_the_source_untouched(name, in_tmp):
    algo = importlib.import_module(name)
    total = 256 if name in ONPOLICY else 400
    algo.train(tyro.cli(algo.Args, args=[*flags(name), "--run-name", "source", "--checkpoint-every", str(total // 2),
                                         "--eval-episodes", "0"]))
    source = files(in_tmp / "runs/source")
    summary = algo.train(algo.parse_args(["--resume", "runs/source/checkpoint.pt", "--total-timesteps",
                                          str(2 * total), "--run-name", "branch"]))
    assert files(in_tmp / "runs/source") == source
    assert summary["global_step"] == 2 * total
    assert steps(in_tmp / "runs/branch")[: len(steps(in_tmp / "runs/source"))] == steps(in_tmp / "runs/source")
    assert json.loads((in_tmp / "runs/branch/args.json").read_text())["run_name"] == "branch"
    assert torch.load(in_tmp / "runs/branch/checkpoint.pt", weights_only=True)["global_step"] == 2 * total
    # A checkpoint from before a finished run's end cannot resume in place, but can start a new run.
    ckpt = torch.load(in_tmp / "runs/source/checkpoint.pt", weights_only=True)
    torch.save(ckpt | {"global_step": total // 2} | ({"iteration": 1} if name in ONPOLICY else {}), "early.pt")
    (in_tmp / "runs/early").mkdir()
    os.replace("early.pt", in_tmp / "runs/early/checkpoint.pt")
    (in_tmp / "runs/early/summary.json").write_text(json.dumps({"global_step": total}))
    with pytest.raises(algo.UsageError, match="resume into a new run with --run-name NAME instead"):
        algo.train(algo.parse_args(["--resume", "runs/early/checkpoint.pt"]))
    algo.train(algo.parse_args(["--resume", "runs/early/checkpoint.pt", "--run-name", "again"]))
    assert (in_tmp / "runs/again/summary.json").is_file()


# --- 3. One process per run directory ---

def test_a_run_directory_in_use_is_refused_and_a_dead_process_holds_no_lock(in_tmp):
    command = [sys.executable, str(ROOT / "dqn.py"), "--run-name", "race", "--total-timesteps", "1000000",
               "--checkpoint-every", "200", "--learning-starts", "100", "--eval-episodes", "0", "--no-cuda"]
    first = subprocess.Popen(command, cwd=in_tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (in_tmp / "runs/race/checkpoint.pt").exists() and time.time() < deadline:
            time.sleep(0.1)
        second = subprocess.run(command, cwd=in_tmp, capture_output=True, text=True, timeout=60)
        assert second.returncode == 2 and second.stderr == (
            "error: runs/race is in use by another run that is still going; wait for it to end or choose another "
            "--run-name\n")
    finally:
        first.kill()  # SIGKILL: nothing of the process runs, the system releases its lock
        first.wait()
    third = subprocess.run([*command[:2], "--resume", "runs/race/checkpoint.pt", "--total-timesteps", "600"],
                           cwd=in_tmp, capture_output=True, text=True, timeout=120)
    assert third.returncode == 0, third.stderr


# --- 4. metrics.csv read as untrusted on resume ---

def test_resume_reads_a_damaged_metrics_csv_keeping_only_whole_rows(algo, in_tmp, capsys):
    name = algo.__name__
    total = 256 if name in ONPOLICY else 400
    algo.train(tyro.cli(algo.Args, args=[*flags(name), "--run-name", "dam", "--checkpoint-every", str(total),
                                         "--eval-episodes", "0"]))
    (in_tmp / "runs/dam/summary.json").unlink()  # as if it had stopped in its final evaluation
    path = in_tmp / "runs/dam/metrics.csv"
    lines = path.read_text().splitlines()
    header, first, rest = lines[0], lines[1], lines[2:]
    damaged = [header, first, "\0\0\0" + first.replace(first.split(",")[0], "7", 1),  # NUL bytes
               first.replace(first.split(",")[0], "150.5", 1),  # not a whole number
               first + ",extra",  # a column too many
               first.replace(first.split(",")[0], "5", 1),  # a step out of order
               *rest, rest[-1][: len(rest[-1]) // 2]]  # the last row cut short
    path.write_text("\n".join(damaged) + "\n")
    summary = algo.train(algo.parse_args(["--resume", "runs/dam/checkpoint.pt"]))
    assert summary["global_step"] == total
    assert steps(in_tmp / "runs/dam") == [int(first.split(",")[0])] + [int(r.split(",")[0]) for r in rest]
    assert "runs/dam/metrics.csv: left out 5 damaged rows" in capsys.readouterr().out
    assert sorted(p.name for p in (in_tmp / "runs/dam").iterdir() if p.name.endswith(".tmp")) == []


# --- 5. SIGTERM stops a run as Ctrl-C does ---

def test_sigterm_stops_a_run_with_one_line_and_its_checkpoint_resumes(in_tmp):
    command = [sys.executable, str(ROOT / "ppo_continuous.py"), "--run-name", "term", "--total-timesteps", "10000000",
               "--checkpoint-every", "256", "--no-cuda"]
    process = subprocess.Popen(command, cwd=in_tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (in_tmp / "runs/term/checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143
    assert err == "\ninterrupted (SIGTERM); checkpoints and logs written so far are complete\n"
    assert [p.name for p in (in_tmp / "runs/term").iterdir() if p.name.endswith(".tmp")] == []
    step = torch.load(in_tmp / "runs/term/checkpoint.pt", weights_only=True)["global_step"]
    resumed = subprocess.run([*command[:2], "--resume", "runs/term/checkpoint.pt", "--total-timesteps",
                              str(step + 256), "--eval-episodes", "1"], cwd=in_tmp, capture_output=True, text=True,
                             timeout=120)
    assert resumed.returncode == 0, resumed.stderr


# --- 6. Evaluation always ends ---

@pytest.mark.parametrize("name", ["ppo_continuous", "dqn"])
def test_evaluation_of_an_env_without_time_limit_stops_at_the_cap(name, in_tmp):
    algo = importlib.import_module(name)
    argv = [*flags(name), "--env-id", toy(name, "Endless"), "--eval-episodes", "1", "--run-name", "endless"]
    if name == "dqn":
        argv += ["--eval-frequency", "0"]  # the final evaluation only
    result = subprocess.run([sys.executable, str(ROOT / f"{name}.py"), *argv], cwd=in_tmp, capture_output=True,
                            text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT / "tests")))
    assert result.returncode == 0, result.stderr
    assert (f"note: {toy(name, 'Endless')} has no time limit; each evaluation episode stops after "
            f"{algo.EVAL_STEP_CAP} steps") in result.stdout
    # The counter earns 1 a step: an episode cut at the cap.
    assert json.loads((in_tmp / "runs/endless/summary.json").read_text())["eval_returns"] == [algo.EVAL_STEP_CAP]


# --- 7. --evaluate checks that the model fits the env, as --resume does ---

@pytest.mark.parametrize("name, other", [("ppo_continuous", "MountainCarContinuous-v0"), ("dqn", "Acrobot-v1")])
def test_evaluate_on_an_env_of_other_sizes_is_one_error_and_on_one_of_the_same_sizes_uses_it(name, other, in_tmp,
                                                                                            capsys):
    algo = importlib.import_module(name)
    algo.train(tyro.cli(algo.Args, args=[*flags(name), "--run-name", "ev", "--eval-episodes", "0"]))
    error = error_of(algo, capsys, "--evaluate", "runs/ev/model.pt", "--env-id", other, "--eval-episodes", "2")
    assert error.startswith(f"error: runs/ev/model.pt was trained on {DEFAULT_ENV[name]} (observation size, action "
                            "space and size (")
    assert error.endswith("; evaluate it on an env of the same sizes")
    # Another env of the same sizes: the one asked for, not silently the model's own.
    kwargs = ["--env-kwargs", *(("g", "3.0") if name == "ppo_continuous" else ("sutton_barto_reward", "True"))]
    plain = algo.run_evaluation(algo.parse_args(["--evaluate", "runs/ev/model.pt", "--eval-episodes", "2"]))
    changed = algo.run_evaluation(algo.parse_args(["--evaluate", "runs/ev/model.pt", "--eval-episodes", "2", *kwargs]))
    assert changed["eval_returns"] != plain["eval_returns"]


# --- 8. A replay buffer larger than the machine ---

@pytest.mark.parametrize("name", OFFPOLICY)
def test_a_buffer_larger_than_memory_is_one_error_naming_the_flag(name, in_tmp, capsys):
    algo = importlib.import_module(name)
    error = error_of(algo, capsys, *TINY_OFF, "--buffer-size", "1000000000000")
    assert error.startswith("error: --buffer-size 1000000000000 needs ")
    assert error.endswith("GiB of memory; lower --buffer-size") and not (in_tmp / "runs").exists()


# --- 10. A one-sample minibatch ---

@pytest.mark.parametrize("name, argv", [
    ("ppo_continuous", ["--num-envs", "1", "--num-steps", "8", "--num-minibatches", "8", "--total-timesteps", "64"]),
    ("ppo_discrete", ["--num-envs", "2", "--num-steps", "4", "--num-minibatches", "8", "--total-timesteps", "64"]),
    ("a2c", ["--num-envs", "1", "--num-steps", "1", "--norm-adv", "--total-timesteps", "64"]),
])
def test_a_one_sample_minibatch_with_advantage_normalisation_is_refused(name, argv, in_tmp, capsys):
    algo = importlib.import_module(name)
    error = error_of(algo, capsys, *argv)
    assert "of one sample, whose advantage cannot be normalised" in error and not (in_tmp / "runs").exists()
    assert cli(algo, *argv, "--no-norm-adv", "--eval-episodes", "0") == 0  # without normalisation it trains


# --- 12. A run stopped in its final evaluation resumes to its summary ---

@pytest.mark.parametrize("name", [*ONPOLICY, *OFFPOLICY])
def test_a_run_stopped_in_its_final_evaluation_resumes_to_its_summary(name, in_tmp, monkeypatch):
    algo = importlib.import_module(name)
    total = 256 if name in ONPOLICY else 400
    evaluate = algo.evaluate

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(algo, "evaluate", interrupted)
    argv = [*flags(name), "--run-name", "last", "--checkpoint-every", str(total)]
    with pytest.raises(KeyboardInterrupt):
        algo.train(tyro.cli(algo.Args, args=[*argv, *(["--eval-frequency", "0"] if name in OFFPOLICY else [])]))
    gc.collect()  # the interrupted run's objects, and with them its hold on the directory (a process would exit)
    assert (in_tmp / "runs/last/model.pt").is_file() and not (in_tmp / "runs/last/summary.json").exists()
    monkeypatch.setattr(algo, "evaluate", evaluate)
    summary = algo.train(algo.parse_args(["--resume", "runs/last/checkpoint.pt"]))
    assert summary["global_step"] == total and len(summary["eval_returns"]) == 2
    assert json.loads((in_tmp / "runs/last/summary.json").read_text())["eval_returns"] == summary["eval_returns"]
    # Once finished, it is the end: a resume to the same total is refused.
    with pytest.raises(algo.UsageError, match="pass a larger --total-timesteps"):
        algo.train(algo.parse_args(["--resume", "runs/last/checkpoint.pt"]))


# --- 13. Envs that break their contract ---

@pytest.mark.parametrize("name", ["ppo_continuous", "a2c", "dqn", "ddpg"])
@pytest.mark.parametrize("fault, says", [("raise", "raised ValueError in step(): the simulator crashed"),
                                         ("shape", "returns observations of shape (3,), not (1,)"),
                                         ("dtype", "raised ValueError in step(): could not convert string to float")])
def test_an_env_that_breaks_its_contract_is_one_error_naming_it(name, fault, says, in_tmp, capsys):
    algo = importlib.import_module(name)
    env_id = toy(name, "Broken")
    error = error_of(algo, capsys, *flags(name), "--env-id", env_id, "--env-kwargs", "fault", fault)
    assert error.startswith(f"error: {env_id} breaks the gymnasium env contract: it {says}")
    assert error.endswith("; fix the env") and not (in_tmp / "runs").exists()


def test_ppo_continuous_refuses_a_box_action_space_that_is_not_flat(in_tmp, capsys):
    ppo = importlib.import_module("ppo_continuous")
    error = error_of(ppo, capsys, *tiny("ppo_continuous"), "--env-id", "toy_envs:ToyBox2x2-v0")
    assert error == ("error: toy_envs:ToyBox2x2-v0 has a Box action space of shape (2, 2); ppo_continuous.py needs a "
                     "flat Box one (continuous actions, one dimension); use ppo_discrete.py for discrete actions")


# --- 14. Run names stay under runs/ ---

@pytest.mark.parametrize("run_name", ["../../x", "ABSOLUTE", ".", "..", "a/b", ""])
def test_a_run_name_that_would_leave_runs_is_refused(algo, run_name, in_tmp, capsys):
    run_name = str(in_tmp / "elsewhere") if run_name == "ABSOLUTE" else run_name  # where a failure cannot harm
    error = error_of(algo, capsys, *flags(algo.__name__), "--run-name", run_name)
    assert error == (f"error: --run-name must be one directory name, made under runs/ (no / and not . or ..), got "
                     f"{run_name!r}")
    assert list(in_tmp.iterdir()) == []


# --- 15. Error lines that name the right cause ---

@pytest.mark.parametrize("name", ["ppo_continuous", "a2c", "dqn", "ddpg"])
@pytest.mark.parametrize("fault", ["nan_reward", "nan_obs"])
def test_numbers_the_env_returns_that_are_not_finite_are_blamed_on_the_env(name, fault, in_tmp, capsys):
    algo = importlib.import_module(name)
    argv = [*flags(name), "--env-id", toy(name, "Broken"), "--env-kwargs", "fault", fault, "--run-name", "bad"]
    if name == "a2c":
        argv += ["--norm-obs"]  # observations are seen through their statistics (a2c's default has none)
    assert cli(algo, *argv) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {toy(name, 'Broken')} returned "), err
    assert "check the env" in err and "--learning-rate" not in err


def test_a_checkpoint_cut_short_is_called_damaged(algo, in_tmp, capsys):
    algo.train(tyro.cli(algo.Args, args=[*flags(algo.__name__), "--run-name", "cut", "--eval-episodes", "0"]))
    whole = (in_tmp / "runs/cut/model.pt").read_bytes()
    for cut in (len(whole) // 2, len(whole) - 10):
        (in_tmp / "cut.pt").write_bytes(whole[:cut])
        for flag in ("--resume", "--evaluate"):
            assert error_of(algo, capsys, flag, "cut.pt") == (
                "error: cannot read cut.pt: the file is damaged or incomplete (written when the machine failed?); "
                "use an earlier copy")
