"""benchmark.py on a real Ray cluster started by --ray-address local, in a network namespace of its own so that
every Ray address is 127.0.0.1: two tiny runs whose directories come back under runs/, with the same numbers as
the same runs made without Ray. And a Ray address that nothing answers, said within seconds."""

import csv
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

import pytest
from conftest import ROOT

import benchmark

TINY_A2C = ["--total-timesteps", "256", "--num-envs", "2", "--eval-episodes", "2", "--no-cuda"]


def in_own_network(command: list[str]) -> list[str]:
    """`command` in a new network namespace with only the loopback interface up (root: unshare -n; otherwise a
    user namespace too)."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs unshare and ip (util-linux, iproute2) for a loopback-only network namespace")
    flags = ["-n"] if os.geteuid() == 0 else ["-r", "-n"]
    if subprocess.run(["unshare", *flags, "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot create a network namespace here")
    return ["unshare", *flags, "sh", "-c", f"ip link set lo up && exec {shlex.join(command)}"]


def metrics_without_time(path):
    """metrics.csv's rows without the columns that measure time (time, sps): what the run computed."""
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k not in ("time", "sps")} for row in csv.DictReader(f)]


GPU_PROBE = (  # a stand-in run that says which GPUs it was given, and finishes
    "import argparse, json, os, pathlib\np = argparse.ArgumentParser()\n"
    "for f in ('--env-id', '--seed', '--run-name'): p.add_argument(f)\na, _ = p.parse_known_args()\n"
    "print('CUDA_VISIBLE_DEVICES=' + repr(os.environ.get('CUDA_VISIBLE_DEVICES')))\n"
    "d = pathlib.Path('runs') / a.run_name\nd.mkdir(parents=True, exist_ok=True)\n"
    "(d / 'summary.json').write_text(json.dumps({'seed': 1, 'global_step': 1, 'wall_time': 0, 'sps': 1, "
    "'eval_mean': 1.0}))\n")


def test_benchmark_on_a_local_ray_cluster_brings_the_runs_back(tmp_path):
    argv = ["--scripts", "a2c.py", "--env-ids", "CartPole-v1", "--seeds", "1", "2", "--progress-interval", "1",
            "--", *TINY_A2C]
    on_ray, alone = tmp_path / "ray", tmp_path / "local"
    on_ray.mkdir(), alone.mkdir()
    (on_ray / "gpu_probe.py").write_text(GPU_PROBE)
    # A machine whose GPU every process may see: a run that asks Ray for no GPU must see none all the same.
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", CUDA_VISIBLE_DEVICES="0")
    command = in_own_network([sys.executable, str(ROOT / "benchmark.py"), "--scripts", "a2c.py", "gpu_probe.py",
                              *argv[2:-len(TINY_A2C) - 1], "--ray-address", "local", "--", *TINY_A2C])
    result = subprocess.run(command, cwd=on_ray, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Ray cluster at local: 1 node(s)" in result.stdout
    for seed in (1, 2):
        probe = (on_ray / "runs" / f"CartPole-v1__gpu_probe__{seed}" / "stdout.log").read_text()
        assert "CUDA_VISIBLE_DEVICES=''" in probe, probe
    for seed in (1, 2):
        assert f"start  CartPole-v1__a2c__{seed} on node" in result.stdout
        assert f"done   CartPole-v1__a2c__{seed}" in result.stdout
        directory = on_ray / "runs" / f"CartPole-v1__a2c__{seed}"
        assert {"args.json", "metrics.csv", "model.pt", "stdout.log", "summary.json"} <= {
            p.name for p in directory.iterdir()}
        first = (directory / "stdout.log").read_text().splitlines()[0]
        assert first.endswith(f"a2c.py --env-id CartPole-v1 --seed {seed} --run-name CartPole-v1__a2c__{seed} "
                              + " ".join(TINY_A2C))  # the command, with the script in the node's temporary folder
    # The same runs as local processes: the same numbers.
    local = subprocess.run([sys.executable, str(ROOT / "benchmark.py"), *argv], cwd=alone, capture_output=True,
                           text=True, timeout=120)
    assert local.returncode == 0, local.stdout + local.stderr
    for seed in (1, 2):
        name = f"CartPole-v1__a2c__{seed}"
        a, b = (json.loads((d / "runs" / name / "summary.json").read_text()) for d in (on_ray, alone))
        assert (a["eval_mean"], a["eval_std"], a["global_step"]) == (b["eval_mean"], b["eval_std"], b["global_step"])
        assert metrics_without_time(on_ray / "runs" / name / "metrics.csv") == metrics_without_time(
            alone / "runs" / name / "metrics.csv")


def test_an_unreachable_ray_address_is_one_error_line_within_seconds(in_tmp, capsys):
    start = time.time()
    assert benchmark.main(["--scripts", "a2c.py", "--env-ids", "CartPole-v1", "--ray-address", "127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach a Ray cluster at 127.0.0.1:9 (Connection refused)")
    assert err.count("\n") == 1 and time.time() - start < 10
    assert not (in_tmp / "runs").exists()


@pytest.mark.parametrize("argv, message", [
    (["--cpus-per-run", "2"], "error: --cpus-per-run: for runs on a Ray cluster; give --ray-address too"),
    (["--ray-address", "local", "--cpus-per-run", "0"], "error: --cpus-per-run must be positive"),
    (["--ray-address", "somewhere"], "error: --ray-address somewhere: give auto, local or host:port"),
])
def test_bad_ray_flags_are_one_error_line(in_tmp, capsys, argv, message):
    assert benchmark.main(["--scripts", "a2c.py", "--env-ids", "CartPole-v1", *argv]) == 2
    assert capsys.readouterr().err.startswith(message)


def test_without_ray_address_ray_is_not_imported(tmp_path):
    (tmp_path / "ok.py").write_text(
        "import argparse, json, pathlib\np = argparse.ArgumentParser()\n"
        "for f in ('--env-id', '--seed', '--run-name'): p.add_argument(f)\na = p.parse_args()\n"
        "d = pathlib.Path('runs') / a.run_name\nd.mkdir(parents=True, exist_ok=True)\n"
        "(d / 'summary.json').write_text(json.dumps({'seed': 1, 'global_step': 1, 'wall_time': 0, 'sps': 1, "
        "'eval_mean': 1.0}))\n")
    code = ("import sys, benchmark; code = benchmark.main(['--scripts', 'ok.py', '--env-ids', 'Env-v0', '--seeds', '1']);"
            " print(code, 'ray' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.stdout.strip().endswith("0 False"), result.stdout + result.stderr
    assert (tmp_path / "runs" / "Env-v0__ok__1" / "summary.json").is_file()
