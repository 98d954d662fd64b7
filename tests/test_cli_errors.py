"""Every command line (experiments, deploy, benchmarks) and ``MetaRL`` rejects a bad input before any work.

One table of bad inputs: each command-line case must exit with status 2 after printing exactly one line
on stderr, ``error: ...``, naming the field (or flag) and the rejected value, with nothing on stdout
and no file or directory created (the working directory is an empty ``tmp_path``, where every default
output directory would land). Each ``MetaRL`` case must raise a one-line ``ValueError`` naming the
field and value, equally without output. Nothing here trains: the whole file takes seconds.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os
import subprocess
import sys
from typing import Any, Callable

import jax
import pytest

import benchmarks.torch_reference  # noqa: F401  (imported before the test changes directory)
import experiments.benchmark_adaptation  # noqa: F401
import experiments.benchmark_estimators  # noqa: F401
import experiments.benchmark_memory  # noqa: F401
import experiments.benchmark_speed  # noqa: F401
import experiments.benchmark_task_selection  # noqa: F401
import metarl_jax.experiments.deploy  # noqa: F401
import metarl_jax.experiments.maml  # noqa: F401
import metarl_jax.experiments.maml_acrobot_target  # noqa: F401
import metarl_jax.experiments.maml_bandit  # noqa: F401
import metarl_jax.experiments.maml_cartpole_ac  # noqa: F401
import metarl_jax.experiments.maml_cartpole_target  # noqa: F401
import metarl_jax.experiments.maml_maze_q  # noqa: F401
import metarl_jax.experiments.maml_navigation  # noqa: F401
import metarl_jax.experiments.maml_tabular_mdp  # noqa: F401
import metarl_jax.experiments.maml_tabular_q  # noqa: F401
from metarl_jax import cli, experiment
from metarl_jax.api import MetaRL
from metarl_jax.experiment import MAMLExperimentConfig
from metarl_jax.experiments.deploy import DeployConfig
from metarl_jax.validation import check_writable_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
jax.devices()  # start the backend now: a first-use notice must not land in a case's captured stderr

# Placeholders in a case's arguments and expected text: FILE is a regular file in tmp_path, TMP is tmp_path.
FILE, TMP = "<FILE>", "<TMP>"


@dataclasses.dataclass(frozen=True)
class Case:
    """A bad input: ``argv`` for ``<module>.main`` (a command line) or ``call(ctx)`` (Python, ``ValueError``)."""

    id: str
    expected: tuple[str, ...]  # each must appear in the one line (field or flag, and the value)
    module: str | None = None
    argv: tuple[str, ...] = ()
    call: Callable[[Any], Any] | None = None


def C(id, module, argv, *expected):
    return Case(id, tuple(expected), module=module, argv=tuple(argv))


def P(id, call, *expected):
    return Case(id, tuple(expected), call=call)


@functools.lru_cache(maxsize=1)
def _agent() -> MetaRL:
    return MetaRL("bandit", num_arms=2, horizon=2, meta_batch=2, num_episodes=2, hidden_sizes=(4,))


MAML, BANDIT, NAV = "metarl_jax.experiments.maml", "metarl_jax.experiments.maml_bandit", "metarl_jax.experiments.maml_navigation"
DEPLOY = "metarl_jax.experiments.deploy"
ADAPT, EST = "experiments.benchmark_adaptation", "experiments.benchmark_estimators"
MEM, SPEED, SEL = "experiments.benchmark_memory", "experiments.benchmark_speed", "experiments.benchmark_task_selection"
TORCH = "benchmarks.torch_reference"
OUT = ("--out-dir", f"{TMP}/out")  # where a CLI with an output option would write (never created)

CASES = [
    # ---- experiment CLIs (tyro): values tyro cannot parse, unknown flags, missing values
    C("bandit-horizon-float", BANDIT, ["--horizon", "2.5", *OUT], "--horizon", "'2.5'", "expected INT"),
    C("bandit-unknown-flag", BANDIT, ["--foo", "1", *OUT], "Unrecognized options", "--foo"),
    C("bandit-hidden-sizes-text", BANDIT, ["--hidden-sizes", "a", *OUT], "--hidden-sizes", "'a'"),
    C("bandit-missing-value", BANDIT, [*OUT, "--horizon"], "--horizon", "Missing value"),
    C("bandit-task-chunk-text", BANDIT, ["--task-chunk", "x", *OUT], "--task-chunk", "'x'"),
    C("acrobot-max-grad-norm-text", "metarl_jax.experiments.maml_acrobot_target", ["--max-grad-norm", "abc", *OUT],
      "--max-grad-norm", "'abc'"),
    C("maml-bool-flag-with-value", MAML, ["--tabular-policy", "yes", *OUT], "Unrecognized options", "yes"),
    # ---- experiment CLIs: values the config rejects
    C("maml-hidden-sizes-empty", MAML, ["--hidden-sizes", *OUT], "hidden_sizes=()"),
    C("maml-hidden-sizes-zero", MAML, ["--hidden-sizes", "0", "4", *OUT], "hidden_sizes=(0, 4) is invalid"),
    C("maml-horizon-zero", MAML, ["--horizon", "0", *OUT], "horizon=0 is invalid: must be an integer >= 1"),
    C("maml-meta-batch-zero", MAML, ["--meta-batch", "0", *OUT], "meta_batch=0 is invalid: must be an integer >= 1"),
    C("navigation-meta-batch-negative", NAV, ["--meta-batch", "-3", *OUT], "meta_batch=-3 is invalid"),
    C("maml-gamma-out-of-range", MAML, ["--gamma", "1.5", *OUT], "gamma=1.5 is invalid: must be a number in (0, 1]"),
    C("navigation-gamma-nan", NAV, ["--gamma", "nan", *OUT], "gamma=nan is invalid"),
    C("maml-outer-lr-inf", MAML, ["--outer-lr", "inf", *OUT], "outer_lr=inf is invalid"),
    C("maml-init-log-std-minus-inf", MAML, ["--init-log-std", "-inf", *OUT], "init_log_std=-inf is invalid"),
    C("maml-inner-lr-nan", MAML, ["--inner-lr", "nan", *OUT], "inner_lr=nan is invalid"),
    C("maml-task-choice", MAML, ["--task", "chess", *OUT], "task='chess' is invalid: must be one of 'bandit'"),
    C("maml-seed-negative", MAML, ["--seed", "-1", *OUT], "seed=-1 is invalid: must be an integer >= 0"),
    C("maml-task-chunk-zero", MAML, ["--task-chunk", "0", *OUT], "task_chunk=0 is invalid"),
    C("maml-q-on-continuous-actions", MAML, ["--task", "navigation", "--learner", "q", *OUT],
      "learner='q' is invalid with task='navigation'", "Discrete action space"),
    C("navigation-horizon-beyond-memory", NAV, ["--horizon", "10000000", *OUT], "memory=",
      "horizon=10000000", "needs at least", "the machine has"),
    C("maml-trpo-with-q", MAML, ["--algorithm", "trpo", "--learner", "q", *OUT], "algorithm='trpo' is invalid"),
    C("bandit-num-arms", BANDIT, ["--num-arms", "1", *OUT], "num_arms=1 is invalid: must be an integer >= 2"),
    C("bandit-estimator-choice", BANDIT, ["--estimator", "maml", *OUT],
      "estimator='maml' is invalid: must be one of 'dice'"),
    C("tabular-mdp-iterations-zero", "metarl_jax.experiments.maml_tabular_mdp", ["--num-iterations", "0", *OUT],
      "num_iterations=0 is invalid"),
    C("maze-size-one", "metarl_jax.experiments.maml_maze_q", ["--maze-size", "1", *OUT], "maze_size=1 is invalid"),
    C("cartpole-ac-gae-lambda-nan", "metarl_jax.experiments.maml_cartpole_ac", ["--gae-lambda", "nan", *OUT],
      "gae_lambda=nan is invalid"),
    # ---- experiment CLIs: output directories
    C("cartpole-out-dir-under-file", "metarl_jax.experiments.maml_cartpole_target", ["--out-dir", f"{FILE}/runs"],
      f"out_dir='{FILE}/runs' is invalid", "lies under the regular file"),
    C("tabular-q-run-dir-is-file", "metarl_jax.experiments.maml_tabular_q", ["--run-dir", FILE],
      f"run_dir='{FILE}' is invalid", "is a regular file"),
    # ---- deploy
    C("deploy-checkpoint-missing", DEPLOY, [*OUT], "--checkpoint"),
    C("deploy-rounds-zero", DEPLOY, ["--checkpoint", "/nonexistent/run", "--rounds", "0"],
      "rounds=0 is invalid: must be an integer >= 1"),
    C("deploy-inner-lr-nan", DEPLOY, ["--checkpoint", f"{TMP}/run", "--inner-lr", "nan", *OUT], "inner_lr=nan"),
    C("deploy-task-text", DEPLOY, ["--checkpoint", f"{TMP}/run", "--task", "0.2,x", *OUT], "task='0.2,x' is invalid"),
    C("deploy-task-inf", DEPLOY, ["--checkpoint", f"{TMP}/run", "--task", "inf,0.5", *OUT], "task='inf,0.5' is invalid"),
    C("deploy-out-dir-under-file", DEPLOY, ["--checkpoint", f"{TMP}/run", "--out-dir", f"{FILE}/d"],
      f"out_dir='{FILE}/d' is invalid"),
    C("deploy-no-such-checkpoint", DEPLOY, ["--checkpoint", f"{TMP}/run", *OUT], f"checkpoint='{TMP}/run' is invalid"),
    C("deploy-rounds-float", DEPLOY, ["--checkpoint", f"{TMP}/run", "--rounds", "1.5"], "--rounds", "'1.5'"),
    # ---- benchmark_adaptation
    C("adaptation-pair-family", ADAPT, ["--pairs", "chess:pg", *OUT], "pairs='chess:pg' is invalid", "task='chess'"),
    C("adaptation-pair-no-colon", ADAPT, ["--pairs", "navigation", *OUT], "pairs='navigation' is invalid"),
    C("adaptation-pair-q-continuous", ADAPT, ["--pairs", "navigation:q", *OUT], "pairs='navigation:q' is invalid"),
    C("adaptation-eval-tasks", ADAPT, ["--eval-tasks", "50", *OUT], "eval_tasks=50 is invalid"),
    C("adaptation-steps-float", ADAPT, ["--steps", "2.5", *OUT], "--steps", "'2.5'"),
    C("adaptation-memory-nan", ADAPT, ["--max-adapt-memory-gb", "nan", *OUT], "max_adapt_memory_gb=nan"),
    C("adaptation-sizes-zero", ADAPT, ["--adapt-sizes", "0", *OUT], "adapt_sizes=0 is invalid"),
    C("adaptation-sizes-text", ADAPT, ["--adapt-sizes", "1", "x", *OUT], "adapt_sizes='x' is invalid"),
    C("adaptation-iterations-zero", ADAPT, ["--iterations", "0", *OUT], "iterations=0 is invalid"),
    C("adaptation-optimum-steps-negative", ADAPT, ["--optimum-steps", "-1", *OUT], "optimum_steps=-1 is invalid"),
    C("adaptation-out-dir-is-file", ADAPT, ["--out-dir", FILE], f"out_dir='{FILE}' is invalid", "is a regular file"),
    C("adaptation-checkpoint-dir-missing", ADAPT, ["--checkpoint-dir", f"{TMP}/none", *OUT],
      f"checkpoint_dir='{TMP}/none' is invalid"),
    # ---- benchmark_estimators
    C("estimators-name", EST, ["--estimators", "dice", "reinforce", *OUT], "estimators=", "'reinforce'"),
    C("estimators-reference", EST, ["--reference", "bar", *OUT], "reference='bar' is invalid"),
    C("estimators-grad-keys", EST, ["--grad-keys", "1", *OUT], "grad_keys=1 is invalid: must be an integer >= 2"),
    C("estimators-hidden-sizes-zero", EST, ["--hidden-sizes", "0", *OUT], "hidden_sizes=(0,) is invalid"),
    C("estimators-hidden-sizes-empty", EST, ["--hidden-sizes", *OUT], "--hidden-sizes", "expected at least one"),
    C("estimators-seeds-zero", EST, ["--seeds", "0", *OUT], "seeds=0 is invalid"),
    C("estimators-meta-batch-negative", EST, ["--meta-batch", "-1", *OUT], "meta_batch=-1 is invalid"),
    C("estimators-out-dir-under-file", EST, ["--out-dir", f"{FILE}/x/y"], f"out_dir='{FILE}/x/y' is invalid"),
    C("estimators-checkpoint-dir-is-file", EST, ["--checkpoint-dir", FILE, *OUT], f"checkpoint_dir='{FILE}' is invalid"),
    # ---- benchmark_memory
    C("memory-inner-steps-zero", MEM, ["--inner-steps", "1", "0"], "inner_steps=0 is invalid: must be an integer >= 1"),
    C("memory-meta-batch-zero", MEM, ["--meta-batch", "0"], "meta_batch=0 is invalid"),
    C("memory-episodes-negative", MEM, ["--episodes", "-5"], "episodes=-5 is invalid"),
    C("memory-horizon-text", MEM, ["--horizon", "x"], "--horizon", "'x'"),
    C("memory-iters-zero", MEM, ["--iters", "0"], "iters=0 is invalid"),
    C("memory-unknown-flag", MEM, ["--remat"], "unrecognized arguments", "--remat"),
    # ---- benchmark_speed
    C("speed-meta-batch-zero", SPEED, ["--meta-batch", "0"], "meta_batch=0 is invalid: must be an integer >= 1"),
    C("speed-meta-batch-negative", SPEED, ["--meta-batch", "20", "-3"], "meta_batch=-3 is invalid"),
    C("speed-meta-batch-text", SPEED, ["--meta-batch", "1,x"], "meta_batch='x' is invalid"),
    C("speed-budget-nan", SPEED, ["--sweep", "--budget-s", "nan"], "budget_s=nan is invalid"),
    C("speed-budget-inf", SPEED, ["--budget-s", "inf"], "budget_s=inf is invalid"),
    C("speed-budget-minus-inf", SPEED, ["--budget-s=-inf"], "budget_s=-inf is invalid"),
    C("speed-iters-zero", SPEED, ["--iters", "0"], "iters=0 is invalid"),
    C("speed-warmup-negative", SPEED, ["--warmup", "-1"], "warmup=-1 is invalid: must be an integer >= 0"),
    C("speed-task-choice", SPEED, ["--task", "chess"], "--task", "'chess'"),
    C("speed-order-choice", SPEED, ["--order", "3"], "--order", "3"),
    C("speed-task-chunk-zero", SPEED, ["--task-chunk", "0"], "task-chunk='0' is invalid"),
    C("speed-rollout-unroll-zero", SPEED, ["--rollout-unroll", "0"], "rollout_unroll=0 is invalid"),
    C("speed-q-on-continuous", SPEED, ["--learner", "q", "--task", "navigation"], "learner='q' is invalid",
      "task='navigation'"),
    # ---- benchmark_task_selection (tyro)
    C("selection-seeds-negative", SEL, ["--seeds", "-1", *OUT], "seeds=(-1,) is invalid"),
    C("selection-eval-tasks", SEL, ["--eval-tasks", "5", *OUT], "eval_tasks=5 is invalid"),
    C("selection-temperature-nan", SEL, ["--temperatures", "nan", *OUT], "temperature=nan is invalid"),
    C("selection-num-arms-float", SEL, ["--num-arms", "2.5", *OUT], "--num-arms", "'2.5'"),
    C("selection-out-dir-under-file", SEL, ["--out-dir", f"{FILE}/runs"], f"out_dir='{FILE}/runs' is invalid"),
    # ---- benchmarks.torch_reference (checked before torch is imported)
    C("torch-meta-batch-zero", TORCH, ["--meta-batch", "0"], "meta_batch=0 is invalid"),
    C("torch-iters-zero", TORCH, ["--iters", "0"], "iters=0 is invalid"),
    C("torch-warmup-negative", TORCH, ["--warmup", "-1"], "warmup=-1 is invalid"),
    C("torch-threads-zero", TORCH, ["--threads", "0"], "threads=0 is invalid"),
    C("torch-episodes-zero", TORCH, ["--episodes", "0"], "episodes=0 is invalid"),
    C("torch-horizon-negative", TORCH, ["--horizon", "-1"], "horizon=-1 is invalid"),
    C("torch-order-choice", TORCH, ["--order", "3"], "--order", "3"),
    # ---- MetaRL arguments and methods, and experiment.run (ValueError)
    P("metarl-learning-rate-nan", lambda ctx: MetaRL("bandit", learning_rate=float("nan")), "learning_rate=nan"),
    P("metarl-learning-rate-inf", lambda ctx: MetaRL("bandit", learning_rate=float("inf")), "learning_rate=inf"),
    P("metarl-family-name", lambda ctx: MetaRL("chess"), "family_or_name='chess' is invalid"),
    P("metarl-horizon-zero", lambda ctx: MetaRL("bandit", horizon=0), "horizon=0 is invalid"),
    P("metarl-gamma-minus-inf", lambda ctx: MetaRL("bandit", gamma=float("-inf")), "gamma=-inf is invalid"),
    P("metarl-reserved-out-dir", lambda ctx: MetaRL("bandit", out_dir="runs"), "out_dir='runs' is invalid"),
    P("metarl-option-of-other-family", lambda ctx: MetaRL("navigation", num_arms=3), "num_arms=3 is invalid"),
    P("metarl-inner-steps-negative", lambda ctx: MetaRL("bandit", inner_steps=-1), "inner_steps=-1 is invalid"),
    P("metarl-unknown-option", lambda ctx: MetaRL("bandit", colour="red"), "colour='red' is invalid"),
    P("metarl-train-negative", lambda ctx: _agent().train(-3), "num_iterations=-3 is invalid"),
    P("metarl-adapt-steps-zero", lambda ctx: _agent().adapt(steps=0), "steps=0 is invalid"),
    P("metarl-adapt-select", lambda ctx: _agent().adapt(select="yes"), "select='yes' is invalid"),
    P("metarl-save-under-file", lambda ctx: _agent().save(f"{ctx}/ckpt"), f"path='{FILE}/ckpt' is invalid"),
    P("experiment-run-out-dir-under-file",
      lambda ctx: experiment.run(MAMLExperimentConfig(task="bandit", out_dir=f"{ctx}/runs")),
      f"out_dir='{FILE}/runs' is invalid"),
]


def _tree(root) -> list[tuple[str, bool, int]]:
    """Every path under ``root`` with whether it is a directory and its size: what a case may not change."""
    out = []
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(directory, name)
            out.append((os.path.relpath(path, root), os.path.isdir(path), os.path.getsize(path)))
    return sorted(out)


def test_the_table_spans_every_command_line_and_metarl():
    assert len(CASES) >= 45 and len({c.id for c in CASES}) == len(CASES)
    modules = {c.module for c in CASES if c.module}
    assert {MAML, DEPLOY, ADAPT, EST, MEM, SPEED, SEL, TORCH} <= modules
    assert sum(c.call is not None for c in CASES) >= 10


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_bad_input_fails_in_one_line_before_any_work(case, tmp_path, monkeypatch, capsys):
    regular = tmp_path / "file"
    regular.write_text("a regular file, not a directory\n")
    fill = lambda text: text.replace(FILE, str(regular)).replace(TMP, str(tmp_path))
    monkeypatch.chdir(tmp_path)  # default output directories (runs/...) would appear here
    before = _tree(tmp_path)
    if case.module is not None:
        main = importlib.import_module(case.module).main
        with pytest.raises(SystemExit) as exit_info:
            main([fill(a) for a in case.argv])
        assert exit_info.value.code == 2
        captured = capsys.readouterr()
        lines = captured.err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
        message = lines[0]
    else:
        with pytest.raises(ValueError) as err:
            case.call(str(regular))
        message = str(err.value)
        assert "\n" not in message
        captured = capsys.readouterr()
    for part in case.expected:
        assert fill(part) in message, message
    assert "Traceback" not in captured.err
    assert captured.out == ""  # nothing ran, no run directory was announced
    assert _tree(tmp_path) == before  # nothing was created


# --------------------------------------------------------------------------- what still works


@pytest.mark.parametrize("module", [BANDIT, MEM])
def test_help_still_prints_to_stdout_and_exits_0(module, capsys):
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(module).main(["--help"])
    assert exit_info.value.code in (0, None)
    captured = capsys.readouterr()
    assert "--horizon" in captured.out and captured.err == ""


def test_parse_dataclass_defaults_replace_the_class_defaults(capsys):
    """Values from a saved config (lists as JSON has them) become the defaults; flags still override them."""
    saved = {"task": "bandit", "horizon": 7, "hidden_sizes": [8, 8], "seed": 3}
    config = cli.parse_dataclass(MAMLExperimentConfig, ["--seed", "5"], defaults=saved)
    assert (config.task, config.horizon, config.hidden_sizes, config.seed) == ("bandit", 7, (8, 8), 5)
    assert config == MAMLExperimentConfig(task="bandit", horizon=7, hidden_sizes=(8, 8), seed=5)
    # a required field stays required; a saved value is validated like a typed one
    assert cli.parse_dataclass(DeployConfig, ["--checkpoint", "c"], defaults={"rounds": 4}).rounds == 4
    for defaults, argv, expected in (({"rounds": 4}, [], "--checkpoint"),
                                     ({"horizon": 0}, [], "horizon=0 is invalid"),
                                     ({"colour": "red"}, [], "colour='red' is invalid: not a field")):
        cls = DeployConfig if "rounds" in defaults else MAMLExperimentConfig
        with pytest.raises(SystemExit) as exit_info:
            cli.parse_dataclass(cls, argv, defaults=defaults)
        assert exit_info.value.code == 2
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1 and expected in lines[0], lines


@pytest.mark.parametrize("text, expected", [
    # tyro's ASCII rendering (no UTF-8 stdout): the title line, then a rule
    (" Value error \n ---------- \n  Error parsing --horizon: invalid literal for int()\n  with base 10: '2.5'\n"
     "  ----------\n  Argument helptext:\n      --horizon INT\n",
     "Error parsing --horizon: invalid literal for int() with base 10: '2.5' (expected INT)"),
    ("\x1b[31m╭─ Required options ─╮\x1b[0m\n│ Missing from prog:  │\n│     --checkpoint STR │\n"
     "│         help text    │\n│     --task STR       │\n│ ──────────────────── │\n╰──────────────────────╯\n",
     "Missing from prog: --checkpoint STR, --task STR"),
    ("something unexpected\nwith more lines\n", "something unexpected with more lines"),
    ("", "the command line could not be parsed"),
    ("╭──╮\n╰──╯\n", "╭──╮"),
])
def test_condensing_never_fails_on_an_unexpected_box(text, expected):
    assert cli.condense_tyro_error(text) == expected


def test_check_writable_dir_accepts_creatable_paths_and_names_what_is_wrong(tmp_path, monkeypatch):
    regular = tmp_path / "file"
    regular.write_text("x")
    assert check_writable_dir("out_dir", str(tmp_path)) == str(tmp_path)
    assert check_writable_dir("out_dir", str(tmp_path / "a" / "b")) == str(tmp_path / "a" / "b")
    assert not (tmp_path / "a").exists()  # checked, not created
    for path, why in ((regular, "it is a regular file"), (regular / "a" / "b", f"lies under the regular file {str(regular)!r}"),
                      ("", "a non-empty path")):
        with pytest.raises(ValueError, match="out_dir=.* is invalid: .*") as err:
            check_writable_dir("out_dir", str(path))
        assert why in str(err.value)
    # write permission (os.access: root passes it everywhere, so it is simulated here)
    monkeypatch.setattr(os, "access", lambda path, mode: os.path.abspath(path) != str(tmp_path))
    with pytest.raises(ValueError, match=f"{str(tmp_path)!r} is not writable"):
        check_writable_dir("out_dir", str(tmp_path / "new"))


def test_cli_is_a_low_layer_without_jax_or_tyro():
    """``metarl_jax.cli`` imports only ``metarl_jax.validation`` and the standard library (tyro lazily)."""
    code = ("import sys, metarl_jax.cli; "
            "bad = sorted(m for m in sys.modules if m in ('jax', 'tyro') or (m.startswith('metarl_jax.') "
            "and m not in ('metarl_jax.validation', 'metarl_jax.cli'))); print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
