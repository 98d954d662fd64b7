"""Several processes on JAX's own runtime (``jax.distributed`` over gloo on localhost).

Two processes with two virtual CPU devices each run the few MAML iterations of
``test_sharding.tiny_maml_run`` over all four devices; each must end with the
parameters of a one-process, one-device run, only process 0 reads or writes files,
and the others continue from process 0's state.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from metarl_jax.experiment import MAMLExperimentConfig
from metarl_jax.training import checkpoint, distributed
from metarl_jax.training.loop import run_loop
from test_sharding import REPO, flat_params, tiny_maml_setup

WORKER = textwrap.dedent(
    """
    import json, os, sys
    sys.path.insert(0, "tests")
    from metarl_jax.training import distributed   # imports nothing but JAX: the backend is not started yet

    process_id, port, run_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    if process_id == 0:   # explicit arguments
        distributed.initialize(f"127.0.0.1:{port}", 2, 0)
    else:                 # JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID
        distributed.initialize()
    import jax
    assert (jax.process_count(), jax.process_index()) == (2, process_id)
    assert (jax.device_count(), jax.local_device_count()) == (4, 2), jax.devices()
    from test_sharding import flat_params, tiny_maml_run

    state, history, _, _ = tiny_maml_run(run_dir=run_dir)
    print("RESULT " + json.dumps({"process": jax.process_index(), "step": int(state.step),
                                  "iterations": len(history), "params": flat_params(state).tolist()}))
    """
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(commands: list[list[str]], envs: list[dict]) -> list[subprocess.Popen]:
    return [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
            for cmd, env in zip(commands, envs)]


def _wait(procs: list[subprocess.Popen], timeout: float) -> list[tuple[int, str, str]]:
    """Wait for every process; on a failure or past ``timeout`` kill the rest.

    Returns ``(exit status, stdout, stderr)`` per process; the test fails with every
    process's output if one exits non-zero or the deadline passes.
    """
    deadline = time.monotonic() + timeout
    failed = None
    while any(p.poll() is None for p in procs):
        if time.monotonic() > deadline:
            failed = f"timed out after {timeout} s"
            break
        if any(p.poll() not in (None, 0) for p in procs):  # one died: the others would wait for it
            failed = "a process failed"
            break
        time.sleep(0.1)
    for p in procs:
        if p.poll() is None:
            p.kill()
    outputs = [(p.wait(),) + p.communicate() for p in procs]
    if failed or any(code != 0 for code, _, _ in outputs):
        report = "\n".join(f"--- process {i}: exit status {code}\nstdout:\n{out}\nstderr:\n{err[-6000:]}"
                           for i, (code, out, err) in enumerate(outputs))
        pytest.fail(f"{failed or 'a process failed'}\n{report}")
    return outputs


def _result(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, stdout
    return json.loads(lines[0][len("RESULT "):])


def test_two_processes_give_the_one_process_run(tmp_path):
    """2 processes x 2 devices (gloo on localhost) = a one-device run; process 1 writes no files.

    Process 0's run directory holds a checkpoint of another initial state (``seed=1``) at
    iteration 0: process 0 resumes from it and process 1, which has no run directory and
    would start from ``seed=0``, must continue from process 0's state too.
    """
    t0 = time.perf_counter()
    step, start, train_config = tiny_maml_setup(devices=1, seed=1)
    run_dirs = [tmp_path / "process0", tmp_path / "process1"]
    checkpoint.save_checkpoint(run_dirs[0] / "checkpoints", 0, start, {"iteration": 0})
    port = _free_port()
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
    base = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    base.update(XLA_FLAGS=flags.strip(), JAX_PLATFORMS="cpu")
    envs = [dict(base), dict(base, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                             JAX_PROCESS_ID="1")]
    commands = [[sys.executable, "-c", WORKER, str(i), str(port), str(run_dirs[i])] for i in range(2)]
    procs = _start(commands, envs)
    try:  # meanwhile, the reference in this process: one device, no distributed runtime
        reference, _ = run_loop(step, start, train_config, None, progress=False)
    finally:
        outputs = _wait(procs, timeout=240)

    expected = flat_params(reference)
    results = [_result(out) for _, out, _ in outputs]
    assert [r["process"] for r in results] == [0, 1]
    diffs = []
    for r in results:
        assert r["step"] == 3 and r["iterations"] == 3
        diffs.append(float(np.max(np.abs(np.asarray(r["params"]) - expected))))
    assert max(diffs) <= 1e-5, diffs
    np.testing.assert_array_equal(results[0]["params"], results[1]["params"])  # one replicated state
    assert not run_dirs[1].exists()  # process 1 wrote nothing
    with open(run_dirs[0] / "metrics.jsonl") as f:
        assert [json.loads(line)["iteration"] for line in f] == [0, 1, 2]
    saved = sorted(name for name in os.listdir(run_dirs[0] / "checkpoints") if name.startswith("step_"))
    assert saved == ["step_00000000", "step_00000003"]  # the one it resumed from and process 0's final one
    print(f"largest difference to one process: {max(diffs):.3g}; test {time.perf_counter() - t0:.1f} s")


# --------------------------------------------------------------------------- settings


def test_settings_come_from_arguments_or_environment():
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "3", "JAX_PROCESS_ID": "2"}
    assert distributed.resolve(environ={}) is None
    assert distributed.resolve(environ=env) == distributed.DistributedConfig("10.0.0.1:1234", 3, 2)
    assert distributed.resolve(process_id=0, environ=env) == distributed.DistributedConfig("10.0.0.1:1234", 3, 0)
    with pytest.raises(ValueError, match=r"coordinator_address='h:1' is invalid: .*missing num_processes "
                                         r"\(JAX_NUM_PROCESSES\), process_id \(JAX_PROCESS_ID\)"):
        distributed.resolve("h:1", environ={})
    for args, message in ((("h", 2, 0), "coordinator_address='h' is invalid"),
                          (("h:1", 2, 2), "process_id=2 is invalid"),
                          (("h:1", 0, 0), "num_processes=0 is invalid"),
                          (("h:1", "two", 0), "num_processes='two' is invalid")):
        with pytest.raises(ValueError, match=message):
            distributed.resolve(*args, environ={})
    parsed = distributed.from_command_line(["--task", "navigation", "--num-processes", "2", "--process_id=1",
                                            "--coordinator-address", "h:9"])
    assert parsed == {"coordinator_address": "h:9", "num_processes": "2", "process_id": "1"}
    assert distributed.initialize() is None  # no settings: a one-process run, nothing started


def test_experiment_config_passes_devices_and_checks_distributed_fields():
    assert MAMLExperimentConfig(devices=2).train_config().devices == 2
    with pytest.raises(ValueError, match="devices=0 is invalid"):
        MAMLExperimentConfig(devices=0)
    with pytest.raises(ValueError, match="missing process_id"):
        MAMLExperimentConfig(coordinator_address="h:1", num_processes=2)


def test_experiment_command_line_rejects_incomplete_settings():
    """``python -m experiments.*`` acts on the flags when its package is imported: incomplete ones exit 2."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    proc = subprocess.run([sys.executable, "-m", "experiments.maml", "--num-processes", "2"], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "error: num_processes='2' is invalid" in proc.stderr and "missing coordinator_address" in proc.stderr
