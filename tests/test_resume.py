"""The run directory is the source of truth: resume from it alone, refuse conflicting flags, never
rewrite ``config.json``, refuse to start over silently, stop cleanly at SIGINT, say when updates
were skipped. Through the command line, as a user meets it (``main(argv)`` in-process; one
subprocess for the signal)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from metarl_jax.experiments import maml_bandit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A tiny run whose every setting differs from the module's defaults, so a resume that fell back to
# the defaults (seed 0, 10 held-out tasks ...) would show.
ARGS = ["--num-iterations", "6", "--meta-batch", "4", "--num-episodes", "4", "--horizon", "5", "--hidden-sizes", "8",
        "--iterations-per-call", "2", "--checkpoint-every", "2", "--eval-tasks", "4", "--eval-steps", "1",
        "--seed", "3"]


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _only_run(out_dir):
    (name,) = os.listdir(os.path.join(out_dir, "maml_bandit"))
    return os.path.join(out_dir, "maml_bandit", name)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished 6-iteration run: ``(run_dir, {file: bytes})`` of what it wrote."""
    out = str(tmp_path_factory.mktemp("out"))
    assert maml_bandit.main([*ARGS, "--out-dir", out]) == 0
    run_dir = _only_run(out)
    files = {name: _read(os.path.join(run_dir, name)) for name in ("config.json", "metrics.jsonl", "summary.json")}
    return run_dir, files


@pytest.fixture
def copy_of(finished, tmp_path):
    """A fresh copy of the finished run directory, and the original's files."""
    run_dir = str(tmp_path / "run")
    shutil.copytree(finished[0], run_dir)
    return run_dir, finished[1]


def test_resume_with_run_dir_alone_continues_the_saved_config_bit_for_bit(copy_of, capsys):
    """Lose the last checkpoint (a crash after iteration 4): ``--run-dir DIR`` alone resumes with the saved
    config (seed 3, 4 held-out tasks; not the module's defaults) and writes the uninterrupted run's exact
    metrics.jsonl and summary; config.json is never rewritten; history.jsonl records the resume."""
    run_dir, original = copy_of
    shutil.rmtree(os.path.join(run_dir, "checkpoints", "step_00000006"))
    capsys.readouterr()
    assert maml_bandit.main(["--run-dir", run_dir]) == 0
    err = capsys.readouterr().err
    assert "resuming at iteration 4 from its checkpoint; 2 iterations recorded after it are run again" in err
    assert _read(os.path.join(run_dir, "metrics.jsonl")) == original["metrics.jsonl"]
    assert _read(os.path.join(run_dir, "config.json")) == original["config.json"]
    summary = json.loads(_read(os.path.join(run_dir, "summary.json")))
    expected = json.loads(original["summary.json"])
    for field in ("seconds_per_iteration_median", "run_dir"):
        summary.pop(field), expected.pop(field)
    assert summary == expected and summary["eval_tasks"] == 4 and summary["iterations"] == 6
    events = _lines(os.path.join(run_dir, "history.jsonl"))
    assert [e["event"] for e in events] == ["start", "resume"] and events[1]["from_iteration"] == 4
    assert events[1]["command"].endswith(f"--run-dir {run_dir}")


@pytest.mark.parametrize("flags, message", [
    (["--seed", "4"], "seed=4 (saved 3)"),
    (["--hidden-sizes", "16", "16", "--inner-lr", "0.5"], "inner_lr=0.5 (saved None); hidden_sizes=(16, 16) (saved (8,))"),
    (["--eval-tasks", "100"], "eval_tasks=100 (saved 4)"),
])
def test_conflicting_flags_are_refused_in_one_line_and_nothing_changes(copy_of, flags, message, capsys):
    run_dir, original = copy_of
    before = {n: _read(os.path.join(run_dir, n)) for n in ("config.json", "metrics.jsonl", "history.jsonl")}
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        maml_bandit.main(["--run-dir", run_dir, *flags])
    assert info.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: run_dir={run_dir!r} is invalid: given with flags that "
                                                   "differ from the run's saved config: ") and message in lines[0]
    assert captured.out == ""
    assert {n: _read(os.path.join(run_dir, n)) for n in before} == before


def test_the_iteration_count_may_grow_recorded_in_the_history_but_never_shrink(copy_of, capsys):
    run_dir, original = copy_of
    with pytest.raises(SystemExit) as info:
        maml_bandit.main(["--run-dir", run_dir, "--num-iterations", "4"])
    assert info.value.code == 2
    assert "num_iterations=4 is invalid: the run in" in capsys.readouterr().err
    assert maml_bandit.main(["--run-dir", run_dir, "--num-iterations", "8"]) == 0
    records = _lines(os.path.join(run_dir, "metrics.jsonl"))
    assert [r["iteration"] for r in records] == list(range(8))
    assert _read(os.path.join(run_dir, "metrics.jsonl")).startswith(original["metrics.jsonl"])  # the 6 kept as they were
    assert _read(os.path.join(run_dir, "config.json")) == original["config.json"]  # still says 6: history says 8
    events = _lines(os.path.join(run_dir, "history.jsonl"))
    assert events[-1]["event"] == "extend" and events[-1]["num_iterations"] == 8
    assert events[-1]["num_iterations_before"] == 6 and events[-1]["lr_decay_iterations"] == 6
    assert json.loads(_read(os.path.join(run_dir, "summary.json")))["iterations"] == 8
    # The extension is part of the run now: --run-dir alone goes on to 8, not back to config.json's 6.
    capsys.readouterr()
    assert maml_bandit.main(["--run-dir", run_dir]) == 0
    assert "complete at 8 iterations: evaluating again" in capsys.readouterr().out


def test_a_run_without_checkpoint_is_refused_unless_restart(copy_of, capsys):
    run_dir, original = copy_of
    shutil.rmtree(os.path.join(run_dir, "checkpoints"))
    with pytest.raises(SystemExit) as info:
        maml_bandit.main(["--run-dir", run_dir])
    assert info.value.code == 2
    assert "holds no checkpoint to resume from; pass --restart" in capsys.readouterr().err
    assert _read(os.path.join(run_dir, "metrics.jsonl")) == original["metrics.jsonl"]  # not truncated
    assert maml_bandit.main(["--run-dir", run_dir, "--restart"]) == 0
    assert _read(os.path.join(run_dir, "metrics.jsonl")) == original["metrics.jsonl"]  # the same run again
    (aside,) = [n for n in os.listdir(run_dir) if n.startswith("metrics.jsonl.discarded-")]
    assert _read(os.path.join(run_dir, aside)) == original["metrics.jsonl"]
    assert _lines(os.path.join(run_dir, "history.jsonl"))[-1]["event"] == "restart"
    with pytest.raises(SystemExit):  # with a checkpoint again, --restart is refused: resume instead
        maml_bandit.main(["--run-dir", run_dir, "--restart"])
    assert "has a checkpoint at iteration 6" in capsys.readouterr().err


def test_a_directory_that_is_not_a_run_is_refused_and_a_new_one_starts_a_run(tmp_path, capsys):
    stranger = tmp_path / "photos"
    stranger.mkdir()
    (stranger / "cat.png").write_bytes(b"\x89PNG")
    with pytest.raises(SystemExit) as info:
        maml_bandit.main([*ARGS, "--run-dir", str(stranger)])
    assert info.value.code == 2
    assert "holds files but no config.json, so it is not a run directory" in capsys.readouterr().err
    assert os.listdir(stranger) == ["cat.png"]


def test_sigint_mid_run_exits_130_with_a_checkpoint_and_the_printed_command_finishes_the_same_run(finished, tmp_path):
    """A real Ctrl-C to ``python -m experiments.maml_bandit`` after its first iterations: exit 130, no
    traceback, a checkpoint, the resume command on stderr; running that command gives the metrics of
    the uninterrupted run (same config, same seed)."""
    out = str(tmp_path / "out")
    args = [*ARGS, "--iterations-per-call", "1", "--num-iterations", "150", "--checkpoint-every", "1000", "--out-dir", out]
    proc = subprocess.Popen([sys.executable, "-m", "experiments.maml_bandit", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        metrics = None
        while time.time() < deadline and proc.poll() is None:
            runs = os.path.join(out, "maml_bandit")
            if os.path.isdir(runs) and os.listdir(runs):
                metrics = os.path.join(runs, os.listdir(runs)[0], "metrics.jsonl")
                if os.path.exists(metrics) and os.path.getsize(metrics) > 0:
                    break
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    run_dir = _only_run(out)
    stopped = _lines(metrics)
    assert 1 <= len(stopped) < 150
    assert f"SIGINT: stopped after iteration {len(stopped)}; checkpoint {run_dir}/checkpoints/step_" in stderr
    resume = [line for line in stderr.splitlines() if line.startswith("resume with: ")]
    assert resume == [f"resume with: python -m experiments.maml_bandit --run-dir {run_dir}"]
    assert maml_bandit.main(["--run-dir", run_dir]) == 0  # what the printed command runs
    full_dir = str(tmp_path / "full")
    assert maml_bandit.main([*args[:-1], full_dir]) == 0
    assert _read(metrics) == _read(os.path.join(_only_run(full_dir), "metrics.jsonl"))


def test_skipped_nonfinite_updates_are_counted_in_the_summary_and_the_exit_status(tmp_path, capsys):
    """An outer step size of 1e38 saturates the softmax policy into NaN gradients: with on_nonfinite=skip the
    run finishes, exits 3, warns in one line, and summary.json counts the skipped updates (valid JSON)."""
    out = str(tmp_path / "out")
    status = maml_bandit.main([*ARGS, "--outer-lr", "1e38", "--max-grad-norm", "None", "--lr-schedule", "constant",
                               "--on-nonfinite", "skip", "--out-dir", out])
    assert status == 3
    run_dir = _only_run(out)
    records = _lines(os.path.join(run_dir, "metrics.jsonl"))
    skipped = sum(r["grad_finite"] is False for r in records)
    assert skipped >= 1 and all(r["grad_norm"] is None and "grad_norm" in r["nonfinite"]
                                for r in records if r["grad_finite"] is False)
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert summary["skipped_updates"] == skipped
    assert f"warning: {skipped} of 6 meta-updates were skipped" in capsys.readouterr().err
