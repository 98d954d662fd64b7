"""The algorithm layer's interfaces: the one inner step, the learner protocol, MetaAlgorithm, --algorithm.

Small float32 programs on a 3-state tabular MDP and a 2-armed bandit; each compiles in seconds.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metarl_jax import experiment
from metarl_jax.algorithms import inner, maml, multitask, outer
from metarl_jax.algorithms.base import MetaAlgorithm, MetaTrainState
from metarl_jax.learners.actor_critic import ACConfig, ActorCriticLearner
from metarl_jax.learners.base import Learner, OuterBatch
from metarl_jax.learners.pg import PGConfig, PolicyGradientLearner
from metarl_jax.learners.q_learning import QConfig, QLearner, q_network_for
from metarl_jax.networks import CategoricalPolicy
from metarl_jax.tasks.base import sample_tasks
from metarl_jax.tasks.tabular_mdp import TabularMDP

REPO = pathlib.Path(__file__).resolve().parents[1]
ENV = TabularMDP(num_states=3, num_actions=2, horizon=4)
POLICY = CategoricalPolicy(num_actions=2, hidden_sizes=(8,))
PG = PolicyGradientLearner(ENV, POLICY, PGConfig(num_inner_episodes=3, num_outer_episodes=3, horizon=4))
AC = ActorCriticLearner(ENV, POLICY, ACConfig(num_inner_episodes=3, num_outer_episodes=3, horizon=4),
                        critic_hidden_sizes=(8,))
Q = QLearner(ENV, q_network_for(ENV, hidden_sizes=(8,)), QConfig(num_inner_episodes=3, num_outer_episodes=3,
                                                                  horizon=4))
CONFIG = maml.MAMLConfig(inner_steps=2, inner_lr=0.5, estimator="naive")


def test_sgd_and_meta_sgd_are_theta_minus_rate_times_gradient_bitwise():
    params = {"w": jnp.array([1.0, -2.0, 0.5]), "b": jnp.array(0.25)}
    grads = {"w": jnp.array([0.3, 0.1, -4.0]), "b": jnp.array(2.0)}
    rates = {"w": jnp.array([0.1, 0.2, 0.3]), "b": jnp.array(0.05)}
    for rule, want in ((inner.sgd(0.1), jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)),
                       (inner.meta_sgd(rates), jax.tree.map(lambda p, g, a: p - a * g, params, grads, rates))):
        new, _ = inner.apply_inner_rule(rule, grads, rule.init(params), params)
        for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(want)):
            assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    # differentiable in the learned rates: d(p - a g)/da = -g
    d_rates = jax.grad(lambda r: sum(jnp.sum(x) for x in jax.tree.leaves(
        inner.apply_inner_rule(inner.meta_sgd(r), grads, optax.EmptyState(), params)[0])))(rates)
    np.testing.assert_array_equal(d_rates["w"], -grads["w"])


def test_inner_rule_picks_sgd_meta_sgd_or_the_optimizer_and_refuses_both():
    theta = PG.init(jax.random.PRNGKey(0))
    rates = jax.tree.map(lambda p: jnp.full_like(p, 0.2), theta)
    assert inner.inner_rule(CONFIG, {"policy": theta}) is not None
    adam = optax.adam(1e-2)
    assert inner.inner_rule(CONFIG, {"policy": theta}, adam) is adam
    with pytest.raises(ValueError, match="inner_optimizer is invalid with learned inner step sizes"):
        inner.inner_rule(CONFIG, {"policy": theta, "inner_lr": rates}, adam)


@pytest.mark.parametrize("learner", [PG, AC, Q], ids=["pg", "ac", "q"])
def test_adapt_on_the_kept_data_reproduces_adapt(learner):
    """The same inner step replayed on fixed data (TRPO / ProMP's re-adaptation) gives adapt's phi_K,
    with SGD and with an optax inner optimizer (which the TRPO / ProMP copies had lost)."""
    task = ENV.sample_params(jax.random.PRNGKey(1))

    def program(key, optimizer):
        meta_params = maml.init_meta_params(key, learner, CONFIG)
        phi, info = inner.adapt(learner, CONFIG, meta_params, task, key, optimizer, keep_data=True)
        return phi, inner.adapt_on_data(learner, CONFIG, meta_params, info.data, optimizer), info

    for optimizer in (None, optax.adam(0.05)):
        phi, replayed, info = jax.jit(lambda k: program(k, optimizer))(jax.random.PRNGKey(2))
        assert jax.tree.leaves(info.data)[0].shape[0] == CONFIG.inner_steps
        for a, b in zip(jax.tree.leaves(phi), jax.tree.leaves(replayed)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("learner", [PG, AC, Q], ids=["pg", "ac", "q"])
def test_every_learner_implements_the_protocol_and_returns_one_outer_batch_type(learner):
    assert isinstance(learner, Learner)
    params = learner.init(jax.random.PRNGKey(0))
    batch = learner.collect_outer(jax.random.PRNGKey(1), params, ENV.sample_params(jax.random.PRNGKey(2)))
    assert isinstance(batch, OuterBatch)
    assert batch.advantages.shape == batch.traj.reward.shape and batch.objective.shape == ()
    assert np.isfinite(float(learner.outer_loss(params, batch)))
    assert float(learner.objective_estimate(batch)) == float(batch.objective)
    kl = learner.kl_divergence(params, params, batch.traj.obs)
    np.testing.assert_allclose(kl, np.zeros(batch.traj.reward.shape), atol=1e-6)


def test_the_meta_layer_probes_no_learner_attributes():
    """Algorithms, the inner step and the loop call the written interface: no hasattr / getattr ladders."""
    for folder in ("algorithms", "training"):
        for path in (REPO / "metarl_jax" / folder).glob("*.py"):
            source = path.read_text()
            assert not re.search(r"\bhasattr\(\s*learner", source), path
            assert not re.search(r"\bgetattr\(\s*learner", source), path


@pytest.mark.parametrize("name", ["trpo", "promp"])
def test_trpo_and_promp_accept_the_actor_critic_learner_and_refuse_the_q_learner(name):
    sample = lambda key: sample_tasks(ENV, key, 3)
    if name == "trpo":
        alg = outer.trpo(AC, CONFIG, outer.TRPOConfig(max_kl=0.01, cg_iters=3, ls_max_steps=4), sample)
    else:
        alg = outer.promp(AC, CONFIG, outer.ProMPConfig(num_outer_steps=2, outer_lr=0.05), sample)
    assert isinstance(alg, MetaAlgorithm)
    state = alg.init(jax.random.PRNGKey(0))
    new, metrics = jax.jit(alg.step)(state)
    assert int(new.step) == 1 and bool(metrics["grad_finite"])
    moved = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(new.meta_params),
                                                               jax.tree.leaves(state.meta_params)))
    if name == "trpo":
        assert float(metrics["kl"]) <= 0.01 + 1e-6
        assert moved > 0 or not bool(metrics["accepted"])
    else:
        assert moved > 0
    factory = outer.trpo if name == "trpo" else outer.promp
    cfg = outer.TRPOConfig() if name == "trpo" else outer.ProMPConfig()
    with pytest.raises(ValueError, match="learner='QLearner' is invalid"):
        factory(Q, CONFIG, cfg, sample)


def test_every_algorithm_starts_from_the_same_parameters_for_the_same_key():
    sample = lambda key: sample_tasks(ENV, key, 2)
    algorithms = [maml.maml(PG, CONFIG, optax.adam(1e-2), sample), outer.trpo(PG, CONFIG, outer.TRPOConfig(), sample),
                  outer.promp(PG, CONFIG, outer.ProMPConfig(), sample),
                  multitask.multitask(PG, CONFIG, optax.adam(1e-2), sample)]
    states = [alg.init(jax.random.PRNGKey(7)) for alg in algorithms]
    assert all(isinstance(s, MetaTrainState) and int(s.step) == 0 for s in states)
    for s in states[1:]:
        for a, b in zip(jax.tree.leaves(s.meta_params), jax.tree.leaves(states[0].meta_params)):
            np.testing.assert_array_equal(a, b)


def test_experiment_algorithm_flag_names_the_field_and_every_algorithm_runs(tmp_path):
    assert set(experiment.ALGORITHMS) == {"maml", "trpo", "promp", "multitask"}
    with pytest.raises(ValueError, match="algorithm='sgd' is invalid"):
        experiment.MAMLExperimentConfig(algorithm="sgd")
    with pytest.raises(ValueError, match="algorithm='trpo' is invalid"):
        experiment.MAMLExperimentConfig(task="maze", learner="q", estimator="dice", algorithm="trpo")
    with pytest.raises(ValueError, match="max_kl=-1.0 is invalid"):
        experiment.MAMLExperimentConfig(max_kl=-1.0)
    base = experiment.MAMLExperimentConfig(task="bandit", learner="pg", num_iterations=2, meta_batch=4, num_episodes=4,
                                           horizon=4, inner_steps=1, hidden_sizes=(8,), eval_tasks=4,
                                           iterations_per_call=2, checkpoint_every=2, num_outer_steps=2,
                                           cg_iters=3, out_dir=str(tmp_path))
    for name in ("trpo", "multitask"):  # ProMP's step is covered with the actor-critic learner above
        config = dataclasses.replace(base, algorithm=name, name=name)
        result = experiment.run(config, progress=False)
        assert result["iterations"] == 2
        with open(os.path.join(result["run_dir"], "metrics.jsonl")) as f:
            records = [json.loads(line) for line in f]
        assert [r["iteration"] for r in records] == [0, 1] and all(r["grad_finite"] for r in records)
        assert experiment.build_algorithm(config) is experiment.build_algorithm(dataclasses.replace(config, seed=3))


def test_the_wheel_ships_only_the_library_and_its_entry_points_exist():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["tool"]["setuptools"]["packages"]["find"]["include"] == ["metarl_jax*"]
    assert isinstance(project["project"]["license"], str)  # an SPDX expression, not a table
    for name, target in project["project"]["scripts"].items():
        module, function = target.split(":")
        imported = __import__(module, fromlist=[function])
        assert callable(getattr(imported, function)), name
