"""The training loop: resume equals an uninterrupted run, non-finite gradients, determinism, CLI errors."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments.maml_bandit import BanditConfig
from metarl_jax.training import checkpoint
from metarl_jax.algorithms import outer
from metarl_jax.experiment import build
from metarl_jax.algorithms.maml import MetaTrainState, maml
from metarl_jax.tasks import sample_tasks
from metarl_jax.training.loop import (
    NonFiniteGradientError,
    TrainConfig,
    load_meta_params,
    make_optimizer,
    read_metrics,
    run,
    run_loop,
)

CONFIG = BanditConfig(num_iterations=8, meta_batch=4, num_episodes=4, horizon=5, hidden_sizes=(8,),
                      iterations_per_call=2, checkpoint_every=2)


def _setup(config=CONFIG):
    family, learner, maml_config, train_config = build(config)
    sample = lambda key: sample_tasks(family, key, train_config.meta_batch)
    return learner, maml_config, train_config, sample


def _strip(history):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


def _maml(learner, maml_config, train_config, sample):
    """MAML with the training config's Adam and non-finite policy (what an experiment runs)."""
    return maml(learner, maml_config, make_optimizer(train_config), sample,
                skip_nonfinite=train_config.on_nonfinite == "skip")


# One algorithm object for the MAML runs below: every run of it reuses one compiled scan.
_LEARNER, _MAML_CONFIG, _TRAIN, _SAMPLE = _setup()
_ALG = _maml(_LEARNER, _MAML_CONFIG, _TRAIN, _SAMPLE)


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    _, full = run(_ALG, _TRAIN, str(tmp_path / "full"), progress=False)
    interrupted = str(tmp_path / "interrupted")
    run(_ALG, _TRAIN, interrupted, progress=False, stop_after=4)
    assert len(read_metrics(interrupted)) == 4
    # Simulate work done after the last checkpoint and lost in a crash: an extra metrics line.
    with open(os.path.join(interrupted, "metrics.jsonl"), "a") as f:
        f.write(json.dumps({"iteration": 4, "post_adaptation_return": 123.0}) + "\n")
    state, resumed = run(_ALG, _TRAIN, interrupted, progress=False)
    assert int(state.step) == 8
    assert _strip(read_metrics(interrupted)) == _strip(full)
    assert _strip(resumed) == _strip(full)


def test_iteration_count_not_a_multiple_of_the_chunk_is_exact():
    odd = dataclasses.replace(_TRAIN, num_iterations=5)  # chunks of 2: 2 + 2 + 1
    state, history = run(_maml(_LEARNER, _MAML_CONFIG, odd, _SAMPLE), odd, progress=False)
    assert int(state.step) == 5
    assert [h["iteration"] for h in history] == [0, 1, 2, 3, 4]


def test_same_seed_same_metrics_and_different_seed_differs(tmp_path):
    """Same seed: the histories agree and ``metrics.jsonl`` is byte-identical (``cmp``); the
    wall-clock times go to ``timings.jsonl`` and come back in ``read_metrics``."""
    _, a = run(_ALG, _TRAIN, str(tmp_path / "a"), progress=False)
    _, b = run(_ALG, _TRAIN, str(tmp_path / "b"), progress=False)
    assert _strip(a) == _strip(b)
    metrics_a, metrics_b = ((tmp_path / d / "metrics.jsonl").read_bytes() for d in "ab")
    assert metrics_a == metrics_b and b'"seconds"' not in metrics_a
    timings = [json.loads(line) for line in (tmp_path / "a" / "timings.jsonl").read_text().splitlines()]
    assert [t["iteration"] for t in timings] == list(range(_TRAIN.num_iterations))
    assert [h["seconds"] for h in read_metrics(str(tmp_path / "a"))] == [t["seconds"] for t in timings]
    other = dataclasses.replace(_TRAIN, seed=1)
    _, c = run(_ALG, other, progress=False)
    assert _strip(a) != _strip(c)


class _NaNLearner:
    """Wraps a learner so that its outer loss, hence the meta-gradient, is NaN."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def outer_loss(self, params, data):
        return self._inner.outer_loss(params, data) * jnp.nan


def test_nonfinite_gradient_stops_and_keeps_last_good_checkpoint(tmp_path):
    learner, maml_config, train_config, sample = _LEARNER, _MAML_CONFIG, _TRAIN, _SAMPLE
    run_dir = str(tmp_path / "run")
    four = dataclasses.replace(train_config, num_iterations=4)
    good_state, _ = run(_maml(learner, maml_config, four, sample), four, run_dir, progress=False)
    with pytest.raises(NonFiniteGradientError, match="non-finite meta-gradient at iteration 4") as info:
        run(_maml(_NaNLearner(learner), maml_config, train_config, sample), train_config, run_dir, progress=False)
    assert int(info.value.last_good_state.step) == 4  # the error hands back the last good state
    assert [h["iteration"] for h in info.value.history] == [0, 1, 2, 3]
    step, restored, _ = checkpoint.restore_latest(os.path.join(run_dir, "checkpoints"), good_state)
    assert step == 4
    for a, b in zip(np.asarray(restored.meta_params["policy"]["params"]["Dense_0"]["kernel"]).ravel(),
                    np.asarray(good_state.meta_params["policy"]["params"]["Dense_0"]["kernel"]).ravel()):
        assert a == b
    assert len(read_metrics(run_dir)) == 4


def test_nonfinite_gradient_skip_leaves_parameters_unchanged():
    skip = dataclasses.replace(_TRAIN, num_iterations=2, on_nonfinite="skip")
    initial = _maml(_LEARNER, _MAML_CONFIG, skip, _SAMPLE).init(jax.random.PRNGKey(skip.seed))
    state, history = run(_maml(_NaNLearner(_LEARNER), _MAML_CONFIG, skip, _SAMPLE), skip, progress=False)
    assert [h["grad_finite"] for h in history] == [False, False]
    for a, b in zip(jax.tree.leaves(state.meta_params), jax.tree.leaves(initial.meta_params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_train_config_validation_names_the_field():
    with pytest.raises(ValueError, match="meta_batch=0"):
        TrainConfig(meta_batch=0)
    with pytest.raises(ValueError, match="on_nonfinite='ignore'"):
        TrainConfig(on_nonfinite="ignore")


def test_experiment_task_chunk_auto_resolves_per_meta_batch_and_platform():
    """``task_chunk="auto"`` (the default) is ``maml.auto_task_chunk`` for the run's meta-batch on
    JAX's default backend; integers and ``None`` pass through; anything else names the field."""
    from metarl_jax.algorithms.maml import auto_task_chunk

    assert BanditConfig().task_chunk == "auto"
    expected = auto_task_chunk(20)  # 4 on a CPU (5 chunks of 4), None on an accelerator
    assert BanditConfig(meta_batch=20).maml_config().task_chunk == expected
    if jax.default_backend() == "cpu":
        assert expected == 4
    assert BanditConfig(meta_batch=4).maml_config().task_chunk is None  # too few tasks to split
    assert BanditConfig(meta_batch=20, task_chunk=None).maml_config().task_chunk is None
    assert BanditConfig(meta_batch=20, task_chunk=7).maml_config().task_chunk == 7
    for bad in ("some", 0, True, 2.5):
        with pytest.raises(ValueError, match=f"task_chunk={bad!r} is invalid: allowed values are 'auto', None"):
            BanditConfig(task_chunk=bad)


def test_experiment_defaults_evaluate_the_trained_steps_and_the_table_marks_them():
    """eval_steps defaults to inner_steps (3); the table has one column per k and marks the trained K."""
    from metarl_jax.experiment import DEFAULT_INNER_LR, MAMLExperimentConfig, result_table

    config = MAMLExperimentConfig()
    assert config.inner_steps == 3 and config.evaluated_steps == 3 and config.maml_config().inner_steps == 3
    assert MAMLExperimentConfig(inner_steps=2, eval_steps=5).evaluated_steps == 5
    assert config.maml_config().inner_lr == 0.1  # navigation
    assert MAMLExperimentConfig(task="bandit").maml_config().inner_lr == DEFAULT_INNER_LR[("bandit", "pg")]
    assert MAMLExperimentConfig(task="bandit", inner_lr=0.5).maml_config().inner_lr == 0.5
    for bad in (0, True, 2.5):
        with pytest.raises(ValueError, match=f"eval_steps={bad!r} is invalid"):
            MAMLExperimentConfig(eval_steps=bad)
    with pytest.raises(ValueError, match="estimator='lvc' is invalid: the Q-learning inner step"):
        MAMLExperimentConfig(task="maze", learner="q", estimator="lvc")
    curve = {"mean": [-40.0, -25.0, -17.0, -12.5], "ci95": [2.0, 2.0, 1.5, 0.75]}
    table = result_table({"curves": {"meta-learned": curve, "random init": curve}, "eval_tasks": 100,
                          "trained_inner_steps": 3, "metric": "mean undiscounted episode return",
                          "optimum": {"mean": -0.5, "ci95": 0.1}})
    lines = table.splitlines()
    assert "mean undiscounted episode return" in lines[0] and "100 tasks" in lines[0] and "K=3" in lines[0]
    assert lines[1].split() == ["policy", "k=0", "(before)", "k=1", "k=2", "k=3", "(trained", "K)"]
    assert lines[3].split()[-3:] == ["-12.50", "±", "0.75"]
    assert lines[-1].startswith("exact optimum")


# --------------------------------------------------------------------------- TRPO / ProMP through the same loop

TRPO = outer.TRPOConfig(cg_iters=3, ls_max_steps=4)  # few CG / line-search iterations: a small program
_OUTER_LEARNER, _OUTER_MAML, _OUTER_TRAIN, _OUTER_SAMPLE = _LEARNER, _MAML_CONFIG, _TRAIN, _SAMPLE
_TRPO_ALG = outer.trpo(_OUTER_LEARNER, _OUTER_MAML, TRPO, _OUTER_SAMPLE)  # one object: one compilation
_TRPO_META = {"outer": "TRPO", "outer_config": dataclasses.asdict(TRPO)}


def _promp_tx(promp_config, train_config):
    """ProMP's outer optimizer as a training config sets it: Adam at ``outer_lr``, clipped if ``max_grad_norm``."""
    adam = outer.promp_optimizer(promp_config)
    if train_config.max_grad_norm is None:
        return adam
    return optax.chain(optax.clip_by_global_norm(train_config.max_grad_norm), adam)


def test_trpo_run_writes_metrics_and_resumes_exactly(tmp_path):
    """As test_resumed_run_equals_uninterrupted_run, with TRPO as the outer rule (outer.trpo through run)."""
    args = (_TRPO_ALG, _OUTER_TRAIN)
    kwargs = dict(progress=False, metadata=_TRPO_META)
    full_dir = str(tmp_path / "full")
    full_state, full = run(*args, full_dir, **kwargs)
    assert [h["iteration"] for h in read_metrics(full_dir)] == list(range(8))
    assert {"post_adaptation_return", "kl", "accepted", "grad_finite", "surrogate_improvement"} <= set(full[-1])
    assert all(h["kl"] <= TRPO.max_kl * (1 + 1e-5) for h in full)
    assert any(h["accepted"] for h in full)  # the parameters moved
    interrupted = str(tmp_path / "interrupted")
    run(*args, interrupted, stop_after=4, **kwargs)
    assert len(read_metrics(interrupted)) == 4
    with open(os.path.join(interrupted, "metrics.jsonl"), "a") as f:  # work lost after the last checkpoint
        f.write(json.dumps({"iteration": 4, "post_adaptation_return": 123.0}) + "\n")
    state, resumed = run(*args, interrupted, **kwargs)
    assert int(state.step) == 8
    assert _strip(read_metrics(interrupted)) == _strip(full)
    assert _strip(resumed) == _strip(full)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(full_state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    _, _, meta = checkpoint.restore_latest(os.path.join(interrupted, "checkpoints"), state)
    assert meta["iteration"] == 8 and meta["outer"] == "TRPO"
    # load_meta_params reads a TRPO run's parameters without rebuilding its outer state.
    loaded = load_meta_params(os.path.join(interrupted, "checkpoints"), _TRPO_ALG)
    assert jax.tree.structure(loaded) == jax.tree.structure(full_state.meta_params)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(full_state.meta_params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    initial = _TRPO_ALG.init(jax.random.PRNGKey(_OUTER_TRAIN.seed)).meta_params
    assert any(not np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(initial)))  # trained, not the init


def test_run_loop_and_run_validation_names_the_field():
    train_config = dataclasses.replace(_OUTER_TRAIN, num_iterations=1)
    step = lambda s: (s, {"grad_finite": jnp.array(True)})
    with pytest.raises(ValueError, match="init_state=.*scalar integer field `step`"):
        run_loop(step, {"params": jnp.zeros(2)}, train_config, progress=False)
    with pytest.raises(ValueError, match="stop_after=-1 is invalid"):
        run_loop(step, MetaTrainState({}, (), None, jnp.zeros((), jnp.int32)), train_config, stop_after=-1)
    with pytest.raises(ValueError, match="train_config=.* is invalid: must be a TrainConfig"):
        run_loop(step, MetaTrainState({}, (), None, jnp.zeros((), jnp.int32)), {"num_iterations": 1})
    with pytest.raises(ValueError, match="must add 1 to state.step per iteration"):  # the step forgot the counter
        run_loop(step, MetaTrainState({}, (), None, jnp.zeros((), jnp.int32)), train_config, progress=False)
    with pytest.raises(ValueError, match="lack 'grad_finite'"):
        run_loop(lambda s: (s._replace(step=s.step + 1), {"loss": jnp.zeros(())}),
                 MetaTrainState({}, (), None, jnp.zeros((), jnp.int32)), train_config, progress=False)
    with pytest.raises(ValueError, match="trpo_config=.* is invalid: must be a TRPOConfig"):
        outer.trpo(_OUTER_LEARNER, _OUTER_MAML, _OUTER_MAML, _OUTER_SAMPLE)
    with pytest.raises(ValueError, match="algorithm=.* is invalid: must be a MetaAlgorithm"):
        run(step, train_config, progress=False)
    with pytest.raises(ValueError, match="train_config=.* is invalid: must be a TrainConfig"):
        run(_TRPO_ALG, {"num_iterations": 1}, progress=False)


class _NaNAdvantages(_NaNLearner):
    """Wraps a learner so that its outer batches' advantages, hence TRPO's / ProMP's gradients, are NaN."""

    def collect_outer(self, key, params, task):
        batch = self._inner.collect_outer(key, params, task)
        return batch.replace(advantages=batch.advantages * jnp.nan)


def test_promp_run_skips_nonfinite_updates():
    """ProMP through run with on_nonfinite='skip': recorded, parameters and Adam state unchanged."""
    promp = outer.ProMPConfig(num_outer_steps=2)
    skip = dataclasses.replace(_OUTER_TRAIN, num_iterations=2, on_nonfinite="skip")
    algorithm = outer.promp(_NaNAdvantages(_OUTER_LEARNER), _OUTER_MAML, promp, _OUTER_SAMPLE,
                            _promp_tx(promp, skip), skip_nonfinite=True)
    state, history = run(algorithm, skip, progress=False)
    assert [h["grad_finite"] for h in history] == [False, False] and int(state.step) == 2
    initial = outer.promp(_OUTER_LEARNER, _OUTER_MAML, promp, _OUTER_SAMPLE, _promp_tx(promp, skip),
                          skip_nonfinite=True).init(jax.random.PRNGKey(skip.seed))
    for a, b in zip(jax.tree.leaves((state.meta_params, state.opt_state)),
                    jax.tree.leaves((initial.meta_params, initial.opt_state))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_json_outputs_are_valid_json_with_the_nonfinite_values_named(tmp_path):
    """``write_json`` never writes bare NaN / Infinity (invalid JSON): they become null, listed by path."""
    from metarl_jax.experiment import write_json

    path = str(tmp_path / "summary.json")
    write_json(path, {"mean": float("nan"), "curve": [1.0, float("inf")], "nested": {"x": np.float32("-inf")},
                      "ok": np.float32(2.5), "n": 3})
    text = open(path).read()
    assert "NaN" not in text and "Infinity" not in text
    payload = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert payload["mean"] is None and payload["curve"] == [1.0, None] and payload["nested"] == {"x": None}
    assert payload["ok"] == 2.5 and payload["n"] == 3
    assert payload["nonfinite_values"] == ["mean", "curve[1]", "nested.x"]


def test_skipped_nonfinite_updates_leave_valid_json_lines_naming_the_values(tmp_path):
    """on_nonfinite='skip': each metrics.jsonl line parses as strict JSON; NaN values are null, named in ``nonfinite``."""
    skip = dataclasses.replace(_TRAIN, num_iterations=2, on_nonfinite="skip")
    run_dir = str(tmp_path / "run")
    run(_maml(_NaNLearner(_LEARNER), _MAML_CONFIG, skip, _SAMPLE), skip, run_dir, progress=False)
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        lines = f.read().splitlines()
    assert len(lines) == 2
    for line in lines:
        record = json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c} in {line}"))
        assert record["grad_finite"] is False
        assert record["meta_loss"] is None and "meta_loss" in record["nonfinite"]
        assert all(record[name] is None for name in record["nonfinite"] if "[" not in name)
    assert [r["meta_loss"] for r in read_metrics(run_dir)] == [None, None]


# --------------------------------------------------------------------------- interrupts and restarts

import signal  # noqa: E402

from metarl_jax.training.interrupts import TrainingInterrupted, deferred_interrupts  # noqa: E402

_SIGNAL_AT = {"iteration": -1, "signum": signal.SIGINT}  # read by the callback: one compiled step for every case


def _signal_at_iteration(step):
    if int(step) == _SIGNAL_AT["iteration"]:
        os.kill(os.getpid(), _SIGNAL_AT["signum"])


def _signalling_step(state):
    """``_ALG.step`` that sends this process ``_SIGNAL_AT["signum"]`` from inside the compiled call of one iteration."""
    jax.debug.callback(_signal_at_iteration, state.step)
    return _ALG.step(state)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_run_finishes_the_call_checkpoints_and_the_resume_equals_an_uninterrupted_run(tmp_path, signum):
    """The signal arrives inside the compiled call of iteration 2 (calls of 2 iterations): the loop
    finishes that call, checkpoints iteration 4 and raises TrainingInterrupted (exit status 128 + signal);
    resuming the run directory then gives exactly the uninterrupted run's metrics and state."""
    full_state, full = run(_ALG, _TRAIN, str(tmp_path / "full"), progress=False)
    run_dir = str(tmp_path / "interrupted")
    _SIGNAL_AT.update(iteration=2, signum=signum)
    handler_before = signal.getsignal(signum)
    try:
        with pytest.raises(TrainingInterrupted) as info:
            run_loop(_signalling_step, _ALG.init(jax.random.PRNGKey(_TRAIN.seed)), _TRAIN, run_dir, progress=False)
    finally:
        _SIGNAL_AT.update(iteration=-1)
    stop = info.value
    assert (stop.signum, stop.iteration, stop.exit_status) == (signum, 4, 128 + signum)
    assert isinstance(stop, KeyboardInterrupt) and int(stop.state.step) == 4
    assert os.path.basename(stop.checkpoint) == "step_00000004"
    assert [h["iteration"] for h in read_metrics(run_dir)] == [0, 1, 2, 3]
    assert signal.getsignal(signum) == handler_before  # the loop's handler is gone, the previous one back
    state, resumed = run(_ALG, _TRAIN, run_dir, progress=False)
    assert _strip(read_metrics(run_dir)) == _strip(full) and _strip(resumed) == _strip(full)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(full_state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_signal_before_the_loop_starts_checkpoints_iteration_0():
    """A request already set when the loop starts (the signal came during setup): nothing runs, iteration 0 is saved."""
    with deferred_interrupts() as request:
        request.signum = signal.SIGINT
        with pytest.raises(TrainingInterrupted) as info:
            run(_ALG, _TRAIN, progress=False, interrupt=request)
    assert info.value.iteration == 0 and info.value.checkpoint is None and info.value.history == []


def test_records_without_a_checkpoint_refuse_to_start_over_unless_restart(tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    four = dataclasses.replace(_TRAIN, num_iterations=4)
    alg = _maml(_LEARNER, _MAML_CONFIG, four, _SAMPLE)
    _, first = run(alg, four, run_dir, progress=False)
    import shutil

    shutil.rmtree(os.path.join(run_dir, "checkpoints"))
    metrics_before = open(os.path.join(run_dir, "metrics.jsonl")).read()
    with pytest.raises(ValueError, match=r"run_dir=.* is invalid: it records 4 iterations .* no restorable checkpoint"
                                         r".*restart=True \(--restart\)"):
        run(alg, four, run_dir, progress=False)
    assert open(os.path.join(run_dir, "metrics.jsonl")).read() == metrics_before  # nothing truncated
    capsys.readouterr()
    _, again = run(alg, four, run_dir, progress=False, restart=True)
    assert "set aside as metrics.jsonl.discarded-" in capsys.readouterr().err
    assert _strip(again) == _strip(first)
    kept = [n for n in os.listdir(run_dir) if n.startswith("metrics.jsonl.discarded-")]
    assert len(kept) == 1 and open(os.path.join(run_dir, kept[0])).read() == metrics_before
