"""Command-line mistakes that tyro catches while parsing, and --seed's range: one `error:` line and exit
code 2 in every algorithm script, not tyro's boxed message or numpy's traceback."""

import importlib

import pytest

SCRIPTS = ["ppo_continuous", "ppo_discrete", "a2c", "dqn", "ddqn", "ddpg", "naf"]


@pytest.mark.parametrize("name", SCRIPTS)
@pytest.mark.parametrize("argv, message", [
    (["--learning-rate", "abc"], "error: Error parsing --learning-rate: could not convert string to float: 'abc'; see --help"),
    (["--total-timesteps", "1e3x"], "error: Error parsing --total-timesteps: invalid literal for int() with base 10: "
                                    "'1e3x'; see --help"),
    (["--no-such-flag", "1"], "error: Unrecognized options: --no-such-flag, 1; see --help"),
    (["--learning-rate"], "error: Missing value for argument '--learning-rate'. Expected 1 values; see --help"),
    (["--seed", "-1"], "error: --seed must be from 0 to 2**31 - 1, got -1"),
    (["--seed", str(2**31)], f"error: --seed must be from 0 to 2**31 - 1, got {2**31}"),
])
def test_parse_errors_and_seed_range_are_one_line(name, argv, message, in_tmp, capsys):
    script = importlib.import_module(name)
    with pytest.raises(SystemExit) as exit_info:
        script.main([*argv, "--no-cuda"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [message]


def test_help_still_prints_and_exits_0(in_tmp, capsys):
    script = importlib.import_module("dqn")
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--help"])
    assert exit_info.value.code == 0
    output = capsys.readouterr()
    assert "--learning-rate" in output.out and output.err == ""


@pytest.mark.parametrize("name", SCRIPTS)
def test_an_env_keyword_the_env_does_not_take_is_one_line(name, in_tmp, capsys):
    script = importlib.import_module(name)
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--env-kwargs", "no_such_keyword", "1", "--no-cuda"])
    assert exit_info.value.code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: cannot make {script.Args.env_id} with --env-kwargs {{'no_such_keyword': 1}}: ")
    assert not (in_tmp / "runs").exists()


@pytest.mark.parametrize("name, flags", [
    ("ppo_continuous", ["--total-timesteps", "64", "--num-envs", "1", "--num-steps", "32", "--num-minibatches", "2"]),
    ("ddpg", ["--total-timesteps", "64", "--learning-starts", "32", "--batch-size", "16"]),
])
def test_env_kwargs_reach_every_env_of_training_and_evaluation(name, flags, in_tmp, monkeypatch):
    """Pendulum-v1's gravity g, given as a string, arrives as a float in every gym.make of the run, of its final
    evaluation and of --evaluate later (which reads it from model.pt)."""
    script = importlib.import_module(name)
    made, make = [], script.gym.make
    monkeypatch.setattr(script.gym, "make", lambda env_id, **kwargs: made.append(kwargs) or make(env_id, **kwargs))
    script.main(["--env-id", "Pendulum-v1", "--env-kwargs", "g", "3.5", "--eval-episodes", "1", "--run-name", "g",
                 "--no-cuda", *flags])  # a failure exits (SystemExit)
    script.main(["--evaluate", "runs/g/model.pt", "--eval-episodes", "1", "--no-cuda"])
    # check_env, the training envs (one per env), the final evaluation, --evaluate
    assert len(made) >= 4 and all(kwargs["g"] == 3.5 for kwargs in made)
