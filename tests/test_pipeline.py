"""The pipeline after meta-training: task selection in the jitted step, deployment, the CLI, MetaRL.

Tiny static shapes and shared configs, so each compiled program is built once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import deploy as deploy_cli
from metarl_jax.algorithms import task_selection as curriculum
from metarl_jax import evaluation
from metarl_jax.algorithms import task_sampler as ts
from metarl_jax.algorithms.base import MetaAlgorithm
from metarl_jax.api import MetaRL
from metarl_jax.deploy import deploy, deploy_batch
from metarl_jax.experiment import LEARNERS, MAMLExperimentConfig, write_json
from metarl_jax.algorithms.maml import adapt, init_meta_params, maml
from metarl_jax.tasks import (
    BanditParams,
    BernoulliBandit,
    Navigation2D,
    NavigationParams,
    TabularMDP,
    TabularMDPParams,
    sample_tasks,
)
from metarl_jax.tasks.hard_tasks import RareBestArmBandit
from metarl_jax.training.loop import NonFiniteGradientError, jit_multi_step, make_optimizer
from metarl_jax.training.loop import run as training_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One tiny bandit set-up shared by the selection, resume and deploy tests.
CONFIG = MAMLExperimentConfig(task="bandit", num_iterations=4, meta_batch=4, num_episodes=4, horizon=4, gamma=1.0,
                              baseline="mean", normalize="episode", inner_lr=0.05, inner_steps=1, estimator="first_order",
                              outer_lr=1e-2, hidden_sizes=(8,), iterations_per_call=2, checkpoint_every=2)
FAMILY = BernoulliBandit(num_arms=3, horizon=CONFIG.horizon)
LEARNER = LEARNERS["pg"](CONFIG, FAMILY)
MAML_CONFIG = CONFIG.maml_config()
TRAIN_CONFIG = CONFIG.train_config()
SELECTION = ts.TaskSelectionConfig(strategy="prioritized", pool_size=8, temperature=1.0, staleness_coef=0.1)
# Pool: even indices hard (one sure arm, a different one from task to task: R* = H, while a
# near-uniform policy gets about H/3 after a small inner step), odd ones easy (every arm 0.5:
# R* = H/2 = what any policy gets, so their optimality gap is 0 up to noise).
HARD = np.arange(8) % 2 == 0
_SURE = np.eye(3, dtype=np.float32)[np.arange(8) % 3]
POOL = BanditParams(probs=jnp.asarray(np.where(HARD[:, None], _SURE, 0.5), jnp.float32),
                    max_steps_in_episode=jnp.full((8,), CONFIG.horizon, jnp.int32))


def _maml(learner, sample):
    """MAML with the training config's Adam and non-finite policy."""
    return maml(learner, MAML_CONFIG, make_optimizer(TRAIN_CONFIG), sample,
                skip_nonfinite=TRAIN_CONFIG.on_nonfinite == "skip")


def _selection(pool=POOL, meta_batch=TRAIN_CONFIG.meta_batch):
    """MAML on tasks selected from ``pool`` (the learner's family and horizon)."""
    return curriculum.with_task_selection(lambda sample: _maml(LEARNER, sample), LEARNER.env, SELECTION, meta_batch,
                                          int(LEARNER.config.horizon), pool)


SELECTION_ALG = _selection()  # one object: the selection tests share one compiled scan


def _selection_state():
    return SELECTION_ALG.init(jax.random.PRNGKey(0))


# --------------------------------------------------------------------------- task selection


def test_selection_step_scores_the_sampled_tasks_and_focuses_on_hard_ones():
    multi_step = jit_multi_step(SELECTION_ALG.step, TRAIN_CONFIG.iterations_per_call)
    state = _selection_state()
    np.testing.assert_allclose(state.pool_optimum, np.where(HARD, 4.0, 2.0))
    state, metrics = multi_step(state)  # 2 meta-iterations of 4 tasks: unseen tasks first covers the pool
    idx, scores = np.asarray(metrics["task_indices"]), np.asarray(metrics["task_scores"])
    post = np.asarray(metrics["per_task_post_adaptation_return"])
    assert sorted(idx.ravel().tolist()) == list(range(8))
    np.testing.assert_allclose(scores, np.asarray(state.pool_optimum)[idx] - post, rtol=1e-6)
    sampler = state.sampler
    assert int(sampler.step) == 2 and bool(np.all(sampler.seen))
    for s in range(2):  # every task's score is the one computed at the step that sampled it
        np.testing.assert_allclose(np.asarray(sampler.scores)[idx[s]], scores[s], rtol=1e-6)
        np.testing.assert_array_equal(np.asarray(sampler.last_sampled)[idx[s]], s + 1)
    drawn = []
    for _ in range(3):
        state, metrics = multi_step(state)
        drawn.append(np.asarray(metrics["task_indices"]).ravel())
    probs = np.asarray(jax.jit(ts.sampling_probabilities, static_argnums=0)(SELECTION, state.sampler))
    # uniform would give the hard half 0.5; rank prioritisation puts most mass on the 4 largest gaps
    assert probs[HARD].sum() > 0.65, probs
    assert np.mean(HARD[np.concatenate(drawn)]) > 0.6
    assert np.asarray(state.sampler.scores)[HARD].mean() > np.asarray(state.sampler.scores)[~HARD].mean() + 1.0


def test_selection_training_resumes_exactly(tmp_path):
    strip = lambda history: [{k: v for k, v in h.items() if k != "seconds"} for h in history]
    full_state, full = training_run(SELECTION_ALG, TRAIN_CONFIG, str(tmp_path / "full"), progress=False)
    run_dir = str(tmp_path / "interrupted")
    training_run(SELECTION_ALG, TRAIN_CONFIG, run_dir, progress=False, stop_after=2)
    state, resumed = training_run(SELECTION_ALG, TRAIN_CONFIG, run_dir, progress=False)
    assert int(state.step) == 4 and strip(resumed) == strip(full)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(full_state)):  # sampler, params, key: bit for bit
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_selection_validation_names_the_field():
    with pytest.raises(ValueError, match="score='optimality_gap' is invalid"):
        curriculum.check_score(SELECTION, object())  # a family without an exact optimum
    assert curriculum.default_score(object()) == "negative_return"
    with pytest.raises(ValueError, match="pool_size=8 does not match"):
        _selection(pool=sample_tasks(FAMILY, jax.random.PRNGKey(0), 5)).init(jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="meta_batch=0 is invalid"):
        _selection(meta_batch=0)
    with pytest.raises(ValueError, match="rare_fraction=1.5"):
        RareBestArmBandit(rare_fraction=1.5)
    rare = RareBestArmBandit(num_arms=4, rare_fraction=0.3)
    tasks = sample_tasks(rare, jax.random.PRNGKey(0), 2000)
    assert abs(float(np.mean(rare.is_rare(tasks))) - 0.3) < 0.04
    assert curriculum.tail_mean(np.arange(20.0), 0.1) == 0.5


# --------------------------------------------------------------------------- deployment


def test_deploy_improves_over_rounds_against_no_update_control():
    meta_params = init_meta_params(jax.random.PRNGKey(0), LEARNER, MAML_CONFIG)  # the uniform policy
    tasks = sample_tasks(FAMILY, jax.random.PRNGKey(1), 64)
    run = jax.jit(lambda lr: deploy_batch(LEARNER, MAML_CONFIG, meta_params, tasks, jax.random.PRNGKey(2), 8, lr))
    adapted, control = run(1.0), run(0.0)  # same keys: paired
    e, t = CONFIG.num_episodes, CONFIG.horizon
    assert adapted.returns.shape == (64, 8) and adapted.action_counts.shape == (64, 8, 3)
    assert adapted.paths.shape == (64, 8, t, 1) and adapted.mean_action is None
    np.testing.assert_allclose(np.asarray(adapted.action_counts).sum(-1), e * t)
    np.testing.assert_array_equal(adapted.returns[:, 0], control.returns[:, 0])  # round 0: the same policy
    # the last three rounds: online adaptation beats acting with the meta-learned policy unchanged
    diff = np.asarray(adapted.returns[:, -3:].mean(1) - control.returns[:, -3:].mean(1))
    gap = float(np.mean(t * np.asarray(tasks.probs).max(1)) - np.mean(control.returns))  # optimum - control
    assert diff.mean() > 0.3 * gap, (diff.mean(), gap)
    assert diff.mean() > 4 * diff.std(ddof=1) / np.sqrt(diff.size)
    # deployment is maml.adapt run for R steps, with the statistics recorded on the way
    cfg = dataclasses.replace(MAML_CONFIG, inner_lr=1.0, inner_steps=8)
    phi, info = jax.jit(lambda t, k: adapt(LEARNER, cfg, meta_params, t, k))(
        jax.tree.map(lambda x: x[5], tasks), jax.random.split(jax.random.PRNGKey(2), 64)[5])
    np.testing.assert_allclose(info.inner_returns, adapted.returns[5], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(phi), jax.tree.leaves(adapted.params)):
        np.testing.assert_allclose(a, b[5], rtol=1e-5, atol=1e-6)
    best = np.asarray(tasks.probs).argmax(1)
    share = np.asarray(adapted.action_counts)[np.arange(64), :, best] / (e * t)  # pulls of the best arm
    assert share[:, -1].mean() > share[:, 0].mean() + 0.2
    with pytest.raises(ValueError, match="num_rounds=0"):
        deploy(LEARNER, MAML_CONFIG, meta_params, jax.tree.map(lambda x: x[0], tasks), jax.random.PRNGKey(0), 0)
    with pytest.raises(ValueError, match="vmap"):
        deploy(LEARNER, MAML_CONFIG, meta_params, tasks, jax.random.PRNGKey(0), 2)


def test_deploy_keep_best_updates_from_the_last_accepted_round_and_undoes_bad_steps():
    """``keep_best``: a round clearly (2 standard errors) below the best is rejected and its step retaken.

    At an overshooting step size (inner_lr=30: one step from the uniform policy nearly commits to
    whichever arm the 16 pulls favoured) plain SGD keeps stepping from wherever it landed, while
    keep_best returns to the last accepted parameters after a clearly worse round. Asserted over 64
    bandits, the last four of 8 rounds: keep_best's mean return is not lower than plain SGD's.
    """
    meta_params = init_meta_params(jax.random.PRNGKey(0), LEARNER, MAML_CONFIG)
    tasks = sample_tasks(FAMILY, jax.random.PRNGKey(1), 64)
    run = jax.jit(lambda lr, keep: deploy_batch(LEARNER, MAML_CONFIG, meta_params, tasks, jax.random.PRNGKey(2), 8,
                                                lr, keep_best=keep), static_argnums=1)
    plain, best = run(30.0, False), run(30.0, True)
    returns, starts, se = (np.asarray(x) for x in (best.returns, best.update_from_round, best.return_stderr))
    for i in range(64):  # replay the acceptance rule in numpy
        best_value, anchor, rejected = -np.inf, 0, 0
        for r in range(8):
            if returns[i, r] >= best_value - 2.0 * se[i, r]:
                best_value, anchor = max(best_value, returns[i, r]), r
            else:
                rejected += 1
            assert starts[i, r] == anchor, (i, r)
        assert int(best.extra_episodes[i]) == CONFIG.num_episodes * rejected
    np.testing.assert_array_equal(np.asarray(plain.update_from_round), np.tile(np.arange(8), (64, 1)))
    np.testing.assert_array_equal(np.asarray(plain.returns[:, :2]), returns[:, :2])  # rounds 0, 1: same policies
    assert np.sum(starts != np.arange(8)) > 0  # some steps were rejected
    round0 = lambda t, k: LEARNER.collect(jax.random.split(k, 8)[0], meta_params["policy"], t).episode_returns(1.0)
    episodes = np.asarray(jax.vmap(round0)(tasks, jax.random.split(jax.random.PRNGKey(2), 64)))  # [64, E]
    np.testing.assert_allclose(returns[:, 0], episodes.mean(1), rtol=1e-6)
    np.testing.assert_allclose(se[:, 0], episodes.std(1, ddof=1) / np.sqrt(episodes.shape[1]), rtol=1e-5, atol=1e-7)
    assert float(returns[:, 4:].mean()) >= float(np.asarray(plain.returns)[:, 4:].mean()), (
        returns[:, 4:].mean(), np.asarray(plain.returns)[:, 4:].mean())


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A run directory as the experiments write it: config.json + checkpoints/ of a tiny training run."""
    run_dir = str(tmp_path_factory.mktemp("run"))
    config = dataclasses.replace(CONFIG, task="bandit")
    family = BernoulliBandit(horizon=config.horizon)  # what experiment.build makes of config.json
    learner = LEARNERS["pg"](config, family)
    write_json(os.path.join(run_dir, "config.json"), dataclasses.asdict(config))
    sample = lambda k: sample_tasks(family, k, config.meta_batch)
    training_run(_maml(learner, sample), TRAIN_CONFIG, run_dir, progress=False)
    return run_dir


def test_deploy_cli_runs_end_to_end(trained_run, tmp_path, capsys):
    out = str(tmp_path / "out")
    assert deploy_cli.main(["--checkpoint", os.path.join(trained_run, "checkpoints"), "--task", "0.1,0.9",
                            "--rounds", "3", "--out-dir", out]) == 0  # an exit status, as a console script needs
    printed = capsys.readouterr().out
    (first_name,) = os.listdir(out)
    with open(os.path.join(out, first_name, "deploy.json")) as f:
        payload = json.load(f)
    # round 2: return, mode-policy return, the round the next update starts from, pulls of 2 arms
    assert re.search(r"^\s*2\s+\S+\s+\S+\s+[012]\s+\d+ \d+\s*$", printed, re.M), printed
    assert len(payload["returns"]) == 3 and np.asarray(payload["action_counts"]).shape == (3, 2)
    assert payload["optimal_return"] == pytest.approx(0.9 * CONFIG.horizon)
    first = payload["out_dir"]
    assert os.path.dirname(first) == out  # its own directory <out-dir>/<timestamp>
    for name in ("deploy.json", "returns.png", "pulls.png"):
        assert os.path.getsize(os.path.join(first, name)) > 0
    with open(os.path.join(first, "deploy.json")) as f:
        first_bytes = f.read()
    assert json.loads(first_bytes)["task"]["probs"] == pytest.approx([0.1, 0.9])
    # A second deploy keeps the first's files: it writes to a new directory.
    assert deploy_cli.main(["--checkpoint", os.path.join(trained_run, "checkpoints"), "--task", "0.9,0.1",
                            "--rounds", "3", "--out-dir", out]) == 0
    (second,) = [os.path.join(out, n) for n in os.listdir(out) if n != first_name]
    assert second != first and sorted(os.listdir(out)) == sorted(os.path.basename(d) for d in (first, second))
    with open(os.path.join(first, "deploy.json")) as f:
        assert f.read() == first_bytes
    with open(os.path.join(second, "deploy.json")) as f:
        assert json.load(f)["task"]["probs"] == pytest.approx([0.9, 0.1])


@pytest.mark.parametrize("args, message", [
    (["--checkpoint", "/nonexistent/run"], "checkpoint='/nonexistent/run' is invalid: no such file"),
    (["--checkpoint", "RUN", "--rounds", "0"], "rounds=0 is invalid"),
    (["--checkpoint", "RUN", "--task", "0.5"], "task='0.5' is invalid: this bandit takes 2 arm probabilities"),
    (["--checkpoint", "RUN", "--inner-lr", "-1"], "inner_lr=-1.0 is invalid"),
    (["--checkpoint", "EMPTY"], "holds no checkpoint"),
    (["--checkpoint", "RUN", "--out-dir", "/proc/no-such-place"], "out_dir='/proc/no-such-place' is invalid"),
])
def test_deploy_cli_errors_are_clear(args, message, trained_run, tmp_path, capsys):
    args = [trained_run if a == "RUN" else str(tmp_path) if a == "EMPTY" else a for a in args]
    with pytest.raises(SystemExit) as exit_info:
        deploy_cli.main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


def test_load_run_takes_one_checkpoint_directory(trained_run):
    """A checkpoint is a ``step_<digits>`` directory: ``load_run`` takes one as it takes the run directory."""
    from metarl_jax.deploy import load_run
    from metarl_jax.training import checkpoint

    one = checkpoint.latest_checkpoint(os.path.join(trained_run, "checkpoints"))
    assert os.path.isdir(one)
    by_step, by_run = load_run(one + os.sep), load_run(trained_run)
    assert os.path.normpath(by_step.checkpoint) == by_run.checkpoint == one and by_step.run_dir == by_run.run_dir
    for a, b in zip(jax.tree.leaves(by_step.meta_params), jax.tree.leaves(by_run.meta_params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# --------------------------------------------------------------------------- MetaRL


def _readme_example() -> str:
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    section = text.split("## A newcomer's entry point", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_newcomer_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(_readme_example(), "README.md", "exec"), namespace)  # noqa: S102 - our own README
    agent = namespace["agent"]
    assert agent.iterations == 20 and len(namespace["history"]) == 20
    expected = {"iteration", "pre_adaptation_return", "post_adaptation_return", "meta_loss"}
    assert expected <= set(namespace["history"][-1])
    action = agent.predict()
    assert action.shape == () and action.dtype == np.int32 and 0 <= int(action) < 3
    restored = MetaRL("bandit", num_arms=3, horizon=10, learning_rate=3e-2, meta_batch=8, num_episodes=8,
                      hidden_sizes=(16,), baseline="mean").load("runs/newcomer")
    assert restored.iterations == 20 and int(restored.predict()) == int(action)
    for a, b in zip(jax.tree.leaves(restored.params), jax.tree.leaves(agent.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # num_arms reaches the family, and the trained agent adapts: over 100 held-out bandits its mean
    # return after the trained K=3 steps beats its return before adapting (measured 4.9 -> 6.7 of an
    # optimum 7.3 over 200 bandits; margin 0.5, about twice the 95% CI of the difference).
    assert agent.family.num_arms == 3 and int(namespace["task"].probs.shape[0]) == 3
    tasks = sample_tasks(agent.family, jax.random.PRNGKey(7), 100)
    curve = np.asarray(evaluation.adaptation_returns(agent.learner, agent.maml_config, agent.meta_params, tasks,
                                                     jax.random.PRNGKey(3), agent.maml_config.inner_steps))
    assert curve.mean(0)[-1] > curve.mean(0)[0] + 0.5, curve.mean(0)


def test_metarl_train_continues_where_the_last_call_stopped():
    agent = MetaRL("bandit", num_arms=2, horizon=3, meta_batch=2, num_episodes=2, hidden_sizes=(8,),
                   estimator="first_order", iterations_per_call=1)  # one compiled length: one compilation
    first = agent.train(2)
    assert [h["iteration"] for h in first] == [0, 1] and agent.iterations == 2
    assert all(h["grad_finite"] is True for h in first)
    second = agent.train(1)
    assert [h["iteration"] for h in second] == [2] and agent.iterations == 3
    assert agent.history == first + second
    with pytest.raises(ValueError, match=re.escape("num_iterations=0 is invalid: must be an integer >= 1")):
        agent.train(0)

    # A non-finite meta-gradient in the middle of a call keeps the iterations finished before it.
    good = agent._algorithm()

    def flaky_step(state):  # iteration 4 reports a non-finite gradient
        new_state, metrics = good.step(state)
        return new_state, dict(metrics, grad_finite=metrics["grad_finite"] & (state.step != 4))

    agent._compiled["train"] = MetaAlgorithm(good.init, flaky_step)
    with pytest.raises(NonFiniteGradientError, match="iteration 4"):
        agent.train(3)  # iterations 3, 4 (non-finite), 5
    assert agent.iterations == 4 and [h["iteration"] for h in agent.history] == [0, 1, 2, 3]


def test_metarl_from_sizes_adapts_and_predicts_state_indices():
    agent = MetaRL(state_size=3, action_size=2, horizon=3, meta_batch=2, num_episodes=2, hidden_sizes=(8,))
    assert isinstance(agent.family, TabularMDP) and agent.family.obs_dim() == 3
    before = agent.predict([0, 1, 2])
    assert before.shape == (3,) and before.dtype == np.int32
    task = TabularMDPParams(transitions=jnp.full((3, 2, 3), 1.0 / 3.0), rewards=jnp.asarray([[1.0, 0.0]] * 3),
                            init_dist=jnp.full((3,), 1.0 / 3.0), max_steps_in_episode=3)
    phi = agent.adapt(task, steps=1)
    assert agent.task is task
    assert jax.tree.structure(phi) == jax.tree.structure(agent.meta_params["policy"])
    assert agent.predict(2).shape == () and agent.predict(np.eye(3, dtype=np.float32)[1]).shape == ()
    with pytest.raises(ValueError, match="state indices must be in"):
        agent.predict(3)


def test_metarl_continuous_actions():
    agent = MetaRL(Navigation2D(horizon=4), meta_batch=2, num_episodes=2, hidden_sizes=(8,))
    assert agent.config.horizon == 4
    agent.adapt(NavigationParams(goal=jnp.asarray([0.3, -0.2], jnp.float32), max_steps_in_episode=4), steps=1)
    action = agent.predict(np.zeros(2))
    assert action.shape == (2,) and action.dtype == np.float32
    assert agent.predict(np.zeros((5, 2), np.float32)).shape == (5, 2)
    with pytest.raises(ValueError, match=r"state has shape \(3,\)"):
        agent.predict(np.zeros(3))


@pytest.mark.parametrize("kwargs, message", [
    ({}, "family_or_name=None is invalid"),
    ({"family_or_name": "chess"}, "family_or_name='chess' is invalid"),
    ({"family_or_name": "bandit", "learner": "maml"}, "learner='maml' is invalid"),
    ({"family_or_name": "bandit", "learning_rate": -1.0}, "learning_rate=-1.0 is invalid"),
    ({"family_or_name": "bandit", "meta_batch": 0}, "meta_batch=0 is invalid"),
    ({"family_or_name": "bandit", "estimator": "maml"}, "estimator='maml' is invalid"),
    ({"family_or_name": "bandit", "bogus": 1}, "bogus=1 is invalid"),
    ({"family_or_name": "bandit", "num_arms": 1}, "num_arms=1 is invalid"),
    ({"state_size": 0, "action_size": 2}, "state_size=0 is invalid"),
    ({"family_or_name": BernoulliBandit(num_arms=3), "action_size": 2}, "action_size=2 is invalid"),
    ({"family_or_name": "bandit", "name": "x"}, "name='x' is invalid here"),
])
def test_metarl_validation_names_the_field(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        MetaRL(**kwargs)
