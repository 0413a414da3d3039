"""naf.py: the quadratic advantage (P positive definite, Q maximal at mu), the target and the action
scaling against hand-computed values, the gradient step against a plain reference; that the code it
shares with ddpg.py is ddpg.py's; then train() on a tiny budget and the script as a user runs it."""

import ast
import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import tyro
from conftest import run_script

# Importing test_ddpg also registers its GlassboxCountingBox-v0 env.
from test_ddpg import HIGH, LOW, read_metrics

import ddpg
import naf

ROOT = Path(__file__).resolve().parent.parent

# The same tiny budget as test_ddpg's: one update per step after 100 uniform steps, 16-16 trunk.
TINY_NAF = ["--total-timesteps", "400", "--learning-starts", "100", "--buffer-size", "1000",
            "--batch-size", "16", "--hidden-sizes", "16", "16", "--metrics-every", "100",
            "--eval-frequency", "200", "--eval-episodes", "2", "--no-cuda"]


def tiny_args(*extra: str) -> naf.Args:
    return tyro.cli(naf.Args, args=[*TINY_NAF, *extra])


def random_network(obs_dim=5, low=(-1.0, 0.0, -3.0), high=(1.0, 2.0, 1.0), seed=0, spread=3.0):
    """A QNetwork with random weights scaled up by `spread`, so that mu, L and V vary a lot."""
    torch.manual_seed(seed)
    net = naf.QNetwork(obs_dim, len(low), [32, 32], np.array(low), np.array(high))
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(spread)
    return net


# --- The quadratic advantage ---


def test_lower_triangular_hand_computed():
    # n = 2: entries (d0, d1, below) -> [[exp d0, 0], [below, exp d1]].
    l_matrix = naf.lower_triangular(torch.tensor([[0.0, np.log(2.0), 5.0]], dtype=torch.float32), 2)
    torch.testing.assert_close(l_matrix, torch.tensor([[[1.0, 0.0], [5.0, 2.0]]]))
    # n = 3: the diagonal first, then below it row by row: (1, 0), (2, 0), (2, 1).
    entries = torch.tensor([[0.0, 0.0, np.log(3.0), 7.0, -8.0, 9.0]], dtype=torch.float32)
    expected = torch.tensor([[[1.0, 0.0, 0.0], [7.0, 1.0, 0.0], [-8.0, 9.0, 3.0]]])
    torch.testing.assert_close(naf.lower_triangular(entries, 3), expected)
    # n = 1 (Pendulum-v1): L = exp(entry), P = exp(2 entry).
    torch.testing.assert_close(naf.lower_triangular(torch.tensor([[1.0], [-1.0]]), 1),
                               torch.tensor([[[np.e]], [[np.exp(-1.0)]]], dtype=torch.float32))


def test_precision_is_symmetric_positive_definite_for_random_inputs():
    # Weights 1.5 times PyTorch's initial scale: L's entries then range over four orders of
    # magnitude, P's eigenvalues over more, and every P must still be positive definite.
    net = random_network(spread=1.5)
    obs = torch.randn(2000, 5, generator=torch.Generator().manual_seed(1)) * 2
    with torch.no_grad():
        _, _, l_matrix = net.heads(obs)
    l_matrix = l_matrix.double()
    precision = l_matrix @ l_matrix.transpose(1, 2)
    torch.testing.assert_close(precision, precision.transpose(1, 2))
    assert (torch.linalg.eigvalsh(precision) > 0).all()
    # L is P's Cholesky factor (lower-triangular, positive diagonal): the parametrisation is the
    # factorisation every positive definite matrix has.
    assert (torch.triu(l_matrix, diagonal=1) == 0).all() and (torch.diagonal(l_matrix, dim1=1, dim2=2) > 0).all()
    torch.testing.assert_close(torch.linalg.cholesky(precision), l_matrix)


def test_advantage_is_the_explicit_quadratic_form():
    gen = torch.Generator().manual_seed(2)
    l_matrix = naf.lower_triangular(torch.randn(50, 6, generator=gen), 3)
    actions, mu = torch.randn(50, 3, generator=gen), torch.randn(50, 3, generator=gen)
    u = actions - mu
    precision = l_matrix @ l_matrix.transpose(1, 2)
    explicit = -0.5 * torch.einsum("bi,bij,bj->b", u, precision, u)
    torch.testing.assert_close(naf.advantage(actions, mu, l_matrix), explicit)
    # Hand-computed, n = 2: L = [[1, 0], [5, 2]], a - mu = (1, -1): L^T (a - mu) = (1 - 5, -2).
    small = torch.tensor([[[1.0, 0.0], [5.0, 2.0]]])
    a = naf.advantage(torch.tensor([[1.0, -1.0]]), torch.zeros(1, 2), small)
    torch.testing.assert_close(a, torch.tensor([-0.5 * (16.0 + 4.0)]))


def test_q_is_maximal_at_mu_and_its_gradient_vanishes_there():
    net = random_network()
    obs = torch.randn(64, 5, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        value, mu, _ = net.heads(obs)
        q_at_mu = net(obs, mu)
        torch.testing.assert_close(q_at_mu, value)  # max_a Q(s, a) = V(s)
        low, high = net.action_bias - net.action_scale, net.action_bias + net.action_scale
        for _ in range(20):  # random actions anywhere in the box, and far outside it
            inside = low + (high - low) * torch.rand(64, 3)
            assert (net(obs, inside) <= q_at_mu + 1e-5).all()
            assert (net(obs, 10 * torch.randn(64, 3)) <= q_at_mu + 1e-5).all()
    at_mu = mu.clone().requires_grad_(True)
    (grad_at_mu,) = torch.autograd.grad(net(obs, at_mu).sum(), at_mu)
    torch.testing.assert_close(grad_at_mu, torch.zeros_like(mu), atol=1e-5, rtol=0)
    off_mu = (mu + 0.1).requires_grad_(True)
    (grad_off_mu,) = torch.autograd.grad(net(obs, off_mu).sum(), off_mu)
    assert (grad_off_mu.norm(dim=1) > 1e-4).all()  # elsewhere it points back towards mu
    assert ((grad_off_mu * (mu - off_mu)).sum(1) > 0).all()


def test_mu_stretches_tanh_to_asymmetric_bounds():
    net = naf.QNetwork(3, 2, [4], LOW, HIGH)
    obs = torch.zeros(1, 3)
    for tanh_value, expected in [([1 - 1e-7, 1 - 1e-7], HIGH), ([-1 + 1e-7, -1 + 1e-7], LOW),
                                 ([0.0, 0.0], [0.5, -1.0]), ([0.5, -0.5], [0.75, -2.0])]:
        with torch.no_grad():
            for p in net.parameters():
                p.zero_()
            net.mu_head.bias.copy_(torch.atanh(torch.tensor(tanh_value)))
            torch.testing.assert_close(net.heads(obs)[1][0], torch.tensor(expected, dtype=torch.float32),
                                       atol=1e-5, rtol=0)


# --- Target ---


def test_td_target_is_r_plus_gamma_v_of_next_state():
    # V'(s') = 2 relu(s') + 1 by hand; the mu and L heads are random and must not matter.
    target = naf.QNetwork(1, 2, [1], LOW, HIGH)
    with torch.no_grad():
        target.hidden[0].weight.fill_(1.0)
        target.hidden[0].bias.zero_()
        target.value_head.weight.fill_(2.0)
        target.value_head.bias.fill_(1.0)
    rewards, terminated = torch.tensor([1.0, 0.5, 2.0]), torch.tensor([0.0, 0.0, 1.0])
    next_obs = torch.tensor([[1.0], [2.0], [3.0]])
    with torch.no_grad():
        y = naf.td_target(target, rewards, next_obs, terminated, gamma=0.5)
        # 1 + 0.5 * 3,  0.5 + 0.5 * 5,  terminated: 2 alone.
        torch.testing.assert_close(y, torch.tensor([2.5, 3.0, 2.0]))
        # V'(s') is max_a' Q'(s', a'): no action in the box does better.
        best = target(next_obs, target.heads(next_obs)[1])
        torch.testing.assert_close(best, torch.tensor([3.0, 5.0, 7.0]))


# --- The gradient step ---


def test_gradient_step_matches_a_plain_reference():
    net = random_network(obs_dim=3, low=(-1.0, 0.0), high=(1.0, 2.0), spread=1.0)
    target = random_network(obs_dim=3, low=(-1.0, 0.0), high=(1.0, 2.0), seed=1, spread=1.0)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(4)
    obs, next_obs = torch.randn(6, 3, generator=gen), torch.randn(6, 3, generator=gen)
    actions = torch.rand(6, 2, generator=gen) * 2 + torch.tensor([-1.0, 0.0])
    rewards, terminated = torch.randn(6, generator=gen), torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    before, target_before = copy.deepcopy(net), copy.deepcopy(target)
    # The reference, written out: y from the target's V head, Q = V - 1/2 u^T P u with P formed
    # explicitly, then one SGD step on the mean squared error.
    with torch.no_grad():
        y = rewards + 0.9 * (1 - terminated) * target_before.heads(next_obs)[0]
    value, mu, l_matrix = before.heads(obs)
    u = actions - mu
    a = -0.5 * torch.einsum("bi,bij,bj->b", u, l_matrix @ l_matrix.transpose(1, 2), u)
    loss = ((value + a - y) ** 2).mean()
    params = list(before.parameters())
    expected = [p.detach() - 0.1 * g for p, g in zip(params, torch.autograd.grad(loss, params))]

    values = naf.gradient_step(net, target, optimizer, (obs, actions, rewards, next_obs, terminated), gamma=0.9, tau=0.25)
    for new, want in zip(net.parameters(), expected):
        torch.testing.assert_close(new, want)
    torch.testing.assert_close(values["td_loss"], loss.detach())
    torch.testing.assert_close(values["q_taken"], (value + a).detach())
    torch.testing.assert_close(values["advantage_taken"], a.detach())
    # Then the target moves towards the network just updated: theta' <- tau theta + (1 - tau) theta'.
    for new, theta, old in zip(target.parameters(), net.parameters(), target_before.parameters()):
        torch.testing.assert_close(new, 0.25 * theta + 0.75 * old)


# --- Part 2: acting in numpy ---


def test_acting_actions_are_mu_and_follow_updates():
    net = random_network(spread=1.0)
    act = naf.acting_actions(net)
    obs = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32)

    def torch_mu():
        with torch.no_grad():
            return net.heads(torch.from_numpy(obs))[1].numpy()
    np.testing.assert_allclose(act(obs), torch_mu(), rtol=1e-5, atol=1e-6)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.1, fused=True)
    net(torch.from_numpy(obs), torch.zeros(7, 3)).sum().backward()
    optimizer.step()
    np.testing.assert_allclose(act(obs), torch_mu(), rtol=1e-5, atol=1e-6)


# --- The algorithm code shared with ddpg.py is ddpg.py's (Part 2's shared blocks: tools/sync.py) ---


SHARED = ["make_env", "make_vector_env", "true_next_obs", "ReplayBuffer", "mlp_layers", "hidden_features",
          "ActionNoise", "select_actions", "update_target"]


def top_level(path: Path) -> dict[str, str]:
    return {node.name: ast.dump(node) for node in ast.parse(path.read_text()).body
            if isinstance(node, ast.FunctionDef | ast.ClassDef)}


def test_algorithm_code_shared_with_ddpg_is_identical():
    ours, theirs = top_level(ROOT / "naf.py"), top_level(ROOT / "ddpg.py")
    for name in SHARED:
        assert ours[name] == theirs[name], name


# --- train() end to end ---


def test_train_smoke_writes_metrics_model_and_summary(in_tmp):
    summary = naf.train(tiny_args("--run-name", "smoke"))
    run_dir = in_tmp / "runs" / "smoke"
    rows = read_metrics(run_dir)
    assert [int(r["global_step"]) for r in rows] == [100, 200, 300, 400]
    assert [int(r["gradient_steps"]) for r in rows] == [1, 101, 201, 301]
    for key in ("td_loss", "q_taken", "sps"):
        assert all(np.isfinite(float(r[key])) for r in rows), key
    assert all(float(r["advantage_taken"]) <= 0 for r in rows)
    assert [int(r["global_step"]) for r in rows if r["eval_return"]] == [200, 400]
    assert summary["algorithm"] == "naf" and summary["global_step"] == 400 and len(summary["eval_returns"]) == 2
    assert json.loads((run_dir / "summary.json").read_text())["eval_mean"] == summary["eval_mean"]
    net, _ = naf.load_model(str(run_dir / "model.pt"), torch.device("cpu"))
    returns = naf.evaluate(net, "Pendulum-v1", {}, 2, naf.eval_seed(1), 0.98, torch.device("cpu"))[0]
    assert returns == summary["eval_returns"]


def test_updates_per_step_counts_per_transition(in_tmp):
    # (test_ddpg checks the transitions train() stores; that code is ddpg.py's, line for line.)
    naf.train(tiny_args("--run-name", "ups", "--checkpoint-every", "400", "--eval-episodes", "0",
                        "--num-envs", "2", "--updates-per-step", "2"))
    ckpt = torch.load(in_tmp / "runs/ups/checkpoint.pt", weights_only=True)
    # 2 envs x 2 updates per vector step, from step 100 (the buffer's 100th transition) to 400:
    # 151 vector steps.
    assert ckpt["buffer"]["size"] == 400 and ckpt["num_updates"] == 4 * 151


def test_same_seed_gives_the_same_numbers_on_cpu(in_tmp):
    a = naf.train(tiny_args("--run-name", "a", "--seed", "7"))
    b = naf.train(tiny_args("--run-name", "b", "--seed", "7"))
    c = naf.train(tiny_args("--run-name", "c", "--seed", "8"))
    drop_timing = lambda rows: [{k: v for k, v in r.items() if k not in ("time", "sps")} for r in rows]
    assert drop_timing(read_metrics(in_tmp / "runs/a")) == drop_timing(read_metrics(in_tmp / "runs/b"))
    assert a["eval_start_q"] == b["eval_start_q"] and c["eval_start_q"] != a["eval_start_q"]


def test_checkpoint_with_buffer_then_resume_trains_at_once(in_tmp):
    naf.train(tiny_args("--run-name", "ck", "--checkpoint-every", "200", "--eval-episodes", "0"))
    ckpt = torch.load(in_tmp / "runs/ck/checkpoint.pt", weights_only=True)
    assert ckpt["global_step"] == 400 and ckpt["num_updates"] == 301 and ckpt["buffer"]["size"] == 400
    assert ckpt["optimizer"]["state"]
    # The target is a Polyak average, saved as such: it lags the online network.
    assert not all(torch.equal(ckpt["target_network"][k], ckpt["q_network"][k]) for k in ckpt["q_network"])
    with pytest.raises(ddpg.UsageError) as error:  # the other script refuses it, naming this one
        ddpg.parse_args(["--resume", "runs/ck/checkpoint.pt"])
    assert str(error.value) == ("runs/ck/checkpoint.pt was saved by naf.py, not ddpg.py; use python naf.py --resume "
                                "runs/ck/checkpoint.pt")
    summary = naf.train(naf.parse_args(["--resume", str(in_tmp / "runs/ck/checkpoint.pt"), "--total-timesteps", "500"]))
    assert summary["global_step"] == 500
    rows = read_metrics(in_tmp / "runs/ck")
    assert [int(r["global_step"]) for r in rows] == [100, 200, 300, 400, 500]
    assert int(rows[-1]["gradient_steps"]) == 301 + 100


# --- Bad input: one line on stderr, exit code 2, no traceback ---


@pytest.mark.parametrize("flags, message", [
    (["--env-id", "Pendulum-v2"], "cannot make Pendulum-v2: Environment version `v2` for environment `Pendulum` "
                                  "doesn't exist. It provides versioned environments: [ `v1` ]."),
    (["--updates-per-step", "0"], "--updates-per-step must be positive"),
    (["--batch-size", "0"], "--batch-size must be positive"),
    (["--tau", "0"], "--tau must be in (0, 1]"),
    (["--total-timesteps", "500", "--learning-starts", "1000"], "training would never start"),
    (["--resume", "no/such/checkpoint.pt"], "no file at no/such/checkpoint.pt"),
    (["--env-id", "CartPole-v1"],
     ("CartPole-v1 has a Discrete action space; naf.py needs a flat Box one (continuous actions); for "
     "discrete actions use dqn.py")),
])
def test_bad_input_is_one_line_and_exit_code_2(in_tmp, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        naf.main(flags)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


def test_help_lists_the_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        naf.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--env-id", "--total-timesteps", "--buffer-size", "--learning-starts", "--updates-per-step",
                 "--tau", "--exploration-noise", "--ou-noise", "--hidden-sizes", "--resume", "--evaluate"):
        assert flag in out, flag
    assert "--policy-frequency" not in out  # no actor


# --- The script as a subprocess ---


def test_save_evaluate_later_with_video_then_resume(tmp_path):
    train = run_script("naf.py", *TINY_NAF, "--eval-episodes", "1", "--run-name", "cli", "--checkpoint-every", "400",
                       "--ou-noise", cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    assert "step" in train.stdout and "SPS" in train.stdout and "OU noise 0.3" in train.stdout
    summary = json.loads((tmp_path / "runs/cli/summary.json").read_text())

    later = run_script("naf.py", "--evaluate", "runs/cli/model.pt", "--capture-video", cwd=tmp_path)
    assert later.returncode == 0, later.stderr
    # The same episode and the same greedy action: the same result as at the end of training.
    assert f"eval: {summary['eval_mean']:.1f} ± {summary['eval_std']:.1f} over 1 episodes" in later.stdout
    assert f"Q(first state) predicted {np.mean(summary['eval_start_q']):.2f}" in later.stdout
    assert len(list((tmp_path / "runs/cli/videos").glob("*.mp4"))) == 1

    # A model or checkpoint of the other script is refused in one line that names the script to use.
    wrong = run_script("ddpg.py", "--evaluate", "runs/cli/model.pt", cwd=tmp_path)
    assert wrong.returncode == 2 and wrong.stderr.strip() == (
        "error: runs/cli/model.pt was saved by naf.py, not ddpg.py; use python naf.py --evaluate runs/cli/model.pt")

    resumed = run_script("naf.py", "--resume", "runs/cli/checkpoint.pt", "--total-timesteps", "500",
                         "--eval-episodes", "0", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from runs/cli/checkpoint.pt at step 400 with 400 transitions in the buffer" in resumed.stdout
    assert json.loads((tmp_path / "runs/cli/summary.json").read_text())["global_step"] == 500


def test_track_without_network_falls_back_to_offline(tmp_path):
    result = run_script("naf.py", *TINY_NAF, "--run-name", "tr", "--track", "--eval-episodes", "0",
                        cwd=tmp_path, timeout=180)
    assert result.returncode == 0, result.stderr
    assert "wandb: no network, logging offline" in result.stdout
    assert list((tmp_path / "runs/tr/wandb").glob("offline-run-*"))



# --- Failures that must lose nothing and hide nothing; devices (the shared code is tested in test_ddpg) ---


def test_divergence_stops_the_run_with_exit_code_3(in_tmp, capsys):
    with pytest.raises(SystemExit) as exit_info:
        naf.main([*TINY_NAF, "--learning-rate", "1e30", "--run-name", "div"])
    assert exit_info.value.code == 3
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: training diverged at step 200: td_loss is "), lines
    assert lines[0].endswith("; no checkpoint was written; try a lower --learning-rate or check --exploration-noise")
    assert not (in_tmp / "runs/div/model.pt").exists() and not (in_tmp / "runs/div/summary.json").exists()


def test_dict_observations_train_flattened_and_video_skipped_without_frames(in_tmp, capsys):
    summary = naf.train(tiny_args("--env-id", "toy_envs:ToyWalkDict-v0", "--run-name", "walk", "--capture-video",
                                  "--total-timesteps", "200"))
    assert ("video skipped: toy_envs:ToyWalkDict-v0 cannot render frames here (it has no rgb_array render mode); "
            "evaluating without video") in capsys.readouterr().out
    assert (in_tmp / "runs/walk/summary.json").exists()
    net, state = naf.load_model(str(in_tmp / "runs/walk/model.pt"), torch.device("cpu"))
    assert state["obs_dim"] == 6
    assert naf.evaluate(net, "toy_envs:ToyWalkDict-v0", {}, 2, naf.eval_seed(1), 0.98, torch.device("cpu"))[0] == (
        summary["eval_returns"])


def test_load_model_loads_onto_the_cpu_then_moves_the_network(tmp_path):
    net = naf.QNetwork(3, 2, [4], LOW, HIGH)
    torch.save({"algorithm": "naf", "args": {"hidden_sizes": [4]}, "obs_dim": 3, "act_dim": 2,
                "action_low": LOW.tolist(), "action_high": HIGH.tolist(), "q_network": net.state_dict(),
                "global_step": 1}, tmp_path / "model.pt")
    on_meta, state = naf.load_model(str(tmp_path / "model.pt"), torch.device("meta"))
    assert {p.device.type for p in on_meta.parameters()} == {"meta"}
    assert {t.device.type for t in state["q_network"].values()} == {"cpu"}


def test_acting_through_a_refreshed_host_copy_gives_the_same_run(in_tmp, monkeypatch):
    # What a GPU does (a copy of the network in host memory acts), forced on the CPU: the same run.
    flags = ("--total-timesteps", "150", "--metrics-every", "50", "--eval-episodes", "0")
    naf.train(tiny_args("--run-name", "itself", *flags))
    monkeypatch.setattr(naf, "host_copy", lambda module, device: copy.deepcopy(module))
    naf.train(tiny_args("--run-name", "copy", *flags))
    drop_timing = lambda rows: [{k: v for k, v in r.items() if k not in ("time", "sps")} for r in rows]
    assert drop_timing(read_metrics(in_tmp / "runs/itself")) == drop_timing(read_metrics(in_tmp / "runs/copy"))
