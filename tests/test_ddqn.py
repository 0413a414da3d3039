"""ddqn.py: the Double DQN target beside DQN's on hand-built networks, the overestimation it curbs,
and that the rest of the file is dqn.py's, line for line."""

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import tyro
from test_dqn import TINY_DQN, one_hot, table_network

import ddqn
import dqn

ROOT = Path(__file__).resolve().parent.parent


def test_double_dqn_target_hand_computed_where_it_differs_from_dqn():
    # s'=0: the online net prefers action 1 (Q 5), which the target net values at 0 while its own
    # max is 4 (action 0). s'=1: online picks action 1 again, target values it -2, its max is -1.
    online = table_network([[1.0, 5.0, 2.0], [0.0, 9.0, 0.0]])
    target = table_network([[4.0, 0.0, 3.0], [-1.0, -2.0, -5.0]])
    rewards, terminated = torch.tensor([1.0, 0.5, 2.0]), torch.tensor([0.0, 0.0, 1.0])
    next_obs = one_hot([0, 1, 0], 2)
    with torch.no_grad():
        y_double = ddqn.td_target(online, target, rewards, next_obs, terminated, gamma=0.5)
        y_dqn = dqn.td_target(online, target, rewards, next_obs, terminated, gamma=0.5)
    torch.testing.assert_close(y_double, torch.tensor([1.0 + 0.5 * 0.0, 0.5 + 0.5 * -2.0, 2.0]))
    torch.testing.assert_close(y_dqn, torch.tensor([1.0 + 0.5 * 4.0, 0.5 + 0.5 * -1.0, 2.0]))
    # When the online net agrees with the target net about the best action, the targets agree.
    with torch.no_grad():
        torch.testing.assert_close(ddqn.td_target(target, target, rewards, next_obs, terminated, 0.5), y_dqn)


def test_double_dqn_curbs_the_overestimation_of_noisy_estimates():
    # Every action is truly worth 0; each network's estimate is that plus independent N(0, 1) noise.
    # DQN's max over 4 noisy values is biased up by E[max of 4 N(0, 1)] = 1.03; Double DQN values
    # the online net's pick with the target net's independent noise: unbiased.
    gen = torch.Generator().manual_seed(0)
    n_states, n_actions = 1000, 4
    online = table_network(torch.randn(n_states, n_actions, generator=gen).tolist())
    target = table_network(torch.randn(n_states, n_actions, generator=gen).tolist())
    zeros = torch.zeros(n_states)
    with torch.no_grad():
        bias_dqn = dqn.td_target(online, target, zeros, torch.eye(n_states), zeros, 1.0).mean().item()
        bias_double = ddqn.td_target(online, target, zeros, torch.eye(n_states), zeros, 1.0).mean().item()
    assert bias_dqn == pytest.approx(1.03, abs=0.1)
    assert abs(bias_double) < 0.1


def without_target(path: Path) -> list[str]:
    """The module's top-level statements, minus its docstring, ALGORITHM and td_target."""
    tree = ast.parse(path.read_text())
    kept = []
    for node in tree.body[1:]:
        if isinstance(node, ast.FunctionDef) and node.name == "td_target":
            continue
        if isinstance(node, ast.Assign) and [t.id for t in node.targets] == ["ALGORITHM"]:
            continue
        kept.append(ast.dump(node))
    return kept


def test_ddqn_is_dqn_except_docstring_algorithm_name_and_target():
    assert isinstance(ast.parse((ROOT / "ddqn.py").read_text()).body[0].value, ast.Constant)  # a docstring
    assert without_target(ROOT / "ddqn.py") == without_target(ROOT / "dqn.py")
    assert (ddqn.ALGORITHM, dqn.ALGORITHM) == ("ddqn", "dqn")


def test_ddqn_train_smoke_and_models_are_not_mixed_up(in_tmp):
    summary = ddqn.train(tyro.cli(ddqn.Args, args=TINY_DQN))
    (run_dir,) = (in_tmp / "runs").iterdir()
    assert run_dir.name.startswith("CartPole-v1__ddqn__1__")
    assert summary["algorithm"] == "ddqn" and np.isfinite(summary["eval_mean"])
    assert json.loads((run_dir / "summary.json").read_text())["eval_start_q"] == summary["eval_start_q"]
    ddqn.load_model(str(run_dir / "model.pt"), torch.device("cpu"))
    with pytest.raises(dqn.UsageError, match="is not a dqn.py model"):
        dqn.load_model(str(run_dir / "model.pt"), torch.device("cpu"))
