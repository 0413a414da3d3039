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
