"""The benchmark commands run end to end on tiny configurations; multi-task pretraining really learns.

The benchmarks themselves (numbers in docs/benchmarks.md) are far too slow for the suite: here each
command runs in-process through ``main(argv)`` with tiny flags and must write valid JSON and PNGs.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import benchmark_adaptation, benchmark_estimators
from metarl_jax.learners.pg import PGConfig, PolicyGradientLearner
from metarl_jax.algorithms.maml import MAMLConfig, init_meta_params
from metarl_jax.algorithms.multitask import multitask
from metarl_jax.networks import make_policy_for
from metarl_jax.tasks import BanditParams, BernoulliBandit
from metarl_jax.training.loop import TrainConfig, make_optimizer, run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == PNG_MAGIC


def test_benchmark_adaptation_end_to_end(tmp_path):
    out = tmp_path / "adaptation"
    payload = benchmark_adaptation.main([
        "--pairs", "bandit:pg", "--iterations", "2", "--adapt-sizes", "3", "--timing-repeats", "1",
        "--out-dir", str(out),
    ])
    with open(out / "benchmark_adaptation.json") as f:
        saved = json.load(f)
    assert saved["command"] == payload["command"]
    (pair,) = saved["pairs"]
    assert set(pair["curves"]) == set(benchmark_adaptation.VARIANTS)
    for curve in pair["curves"].values():
        assert len(curve["mean"]) == 6 and np.all(np.isfinite(curve["mean"] + curve["ci95"]))
    assert pair["eval_tasks"] == 100 and np.isfinite(pair["optimum"]["mean"])
    (timing,) = pair["adapt_timing"]
    assert timing["tasks"] == 3 and timing["median_s"] > 0
    assert _is_png(out / "adaptation_bandit_pg.png")
    assert "| bandit:pg | multi-task pretrained |" in (out / "benchmark_adaptation.md").read_text()
    # Headroom: the multi-task policy without adaptation is the reference, so its k=0 fraction is exactly 0.
    headroom = pair["headroom"]["multitask"]
    assert headroom["fraction"][0] == pytest.approx(0.0, abs=1e-9) and headroom["headroom"] > 0
    assert "Fraction of the headroom closed" in (out / "benchmark_adaptation.md").read_text()

    # A rerun loading the checkpoints reproduces the curves without training.
    again = benchmark_adaptation.main([
        "--pairs", "bandit:pg", "--iterations", "2", "--adapt-sizes", "--checkpoint-dir", str(out),
        "--out-dir", str(tmp_path / "loaded"),
    ])
    (loaded,) = again["pairs"]
    assert loaded["training"]["maml"]["loaded_from"].startswith(str(out))
    for variant in benchmark_adaptation.VARIANTS:
        np.testing.assert_allclose(loaded["curves"][variant]["mean"], pair["curves"][variant]["mean"], rtol=1e-5)


def test_benchmark_adaptation_rejects_bad_flags():
    with pytest.raises(SystemExit):
        benchmark_adaptation.main(["--eval-tasks", "10"])
    with pytest.raises(SystemExit):
        benchmark_adaptation.main(["--steps", "2"])


def test_benchmark_estimators_end_to_end(tmp_path, monkeypatch):
    """Two estimators end to end; the recorded gradient statistics are recomputed in numpy from the mean
    gradients the benchmark computed (captured by wrapping ``make_gradient_statistics``): ``mean_norm = |g_bar|``,
    ``ratio``, ``mean_standard_error`` and ``mean_norm_debiased`` by their formulas, and
    ``cosine_to_dice_mean`` = the cosine between first-order's ``g_bar`` and DiCE's (not DiCE's with itself)."""
    captured = {}
    real_statistics = benchmark_estimators.make_gradient_statistics

    def capturing(learner, maml_config, *args):
        stats_fn = real_statistics(learner, maml_config, *args)

        def wrapped(meta_params, key):
            out = stats_fn(meta_params, key)
            captured.setdefault(maml_config.estimator, []).append(np.asarray(out[0], np.float64))
            return out

        return wrapped

    monkeypatch.setattr(benchmark_estimators, "make_gradient_statistics", capturing)
    out = tmp_path / "estimators"
    grad_keys = 3
    benchmark_estimators.main([
        "--estimators", "first_order", "dice", "--seeds", "2", "--iterations", "2", "--iterations-per-call", "2",
        "--grad-keys", str(grad_keys), "--grad-key-chunk", "3", "--meta-batch", "2", "--episodes", "2",
        "--horizon", "5", "--hidden-sizes", "4", "--eval-tasks", "3", "--out-dir", str(out),
    ])
    with open(out / "benchmark_estimators.json") as f:
        saved = json.load(f)
    assert set(saved["estimators"]) == {"first_order", "dice"}
    for estimator, result in saved["estimators"].items():
        assert np.asarray(result["train_post_adaptation_return"]).shape == (2, 2)
        for i, point in enumerate(("initial", "trained")):
            stats, mean, dice_mean = result["gradient"][point], captured[estimator][i], captured["dice"][i]
            var = stats["var_trace"]
            assert var > 0
            assert stats["mean_norm"] == pytest.approx(np.linalg.norm(mean), rel=1e-5)
            assert stats["ratio"] == pytest.approx(var / np.sum(mean**2), rel=1e-4)
            assert stats["mean_standard_error"] == pytest.approx(np.sqrt(var / grad_keys), rel=1e-6)
            assert stats["mean_norm_debiased"] == pytest.approx(
                np.sqrt(max(np.sum(mean**2) - var / grad_keys, 0.0)), rel=1e-4, abs=1e-9)
            cosine = mean @ dice_mean / (np.linalg.norm(mean) * np.linalg.norm(dice_mean))
            assert stats["cosine_to_dice_mean"] == pytest.approx(cosine, abs=1e-6)
    for point in ("initial", "trained"):  # the first-order direction is not DiCE's
        assert saved["estimators"]["first_order"]["gradient"][point]["cosine_to_dice_mean"] < 1.0 - 1e-4
    assert _is_png(out / "estimators_learning_curves.png")
    table = (out / "benchmark_estimators.md").read_text()
    assert "| dice |" in table and "| first_order |" in table


def test_multitask_pretraining_learns_the_shared_structure():
    """On bandits whose arm 0 is good in every task, the multi-task initialisation must prefer arm 0.

    Arm 0 pays with p ~ U[0.6, 0.9], the other arms with p ~ U[0, 0.4]. The exact expected return of a
    logit-table policy over this distribution is ``H * softmax(theta) . E[p]``; the random (uniform)
    initialisation gets ``H * mean(E[p])``, the best fixed arm ``H * 0.75``.
    """
    arms, horizon = 4, 5
    family = BernoulliBandit(num_arms=arms, horizon=horizon)
    low = jnp.asarray([0.6] + [0.0] * (arms - 1))
    high = jnp.asarray([0.9] + [0.4] * (arms - 1))

    def sample(key):
        probs = jax.random.uniform(key, (16, arms), minval=low, maxval=high)
        return BanditParams(probs=probs, max_steps_in_episode=jnp.full((16,), horizon))

    learner = PolicyGradientLearner(family, make_policy_for(family, tabular=True),
                                    PGConfig(num_inner_episodes=8, num_outer_episodes=8, horizon=horizon,
                                             gamma=1.0, baseline="mean"))
    maml_config = MAMLConfig(inner_lr=0.5, learn_inner_lr=True)
    train_config = TrainConfig(num_iterations=30, meta_batch=16, outer_lr=0.1, iterations_per_call=30)
    state, history = run(multitask(learner, maml_config, make_optimizer(train_config), sample), train_config,
                         progress=False)
    meta_params = state.meta_params

    random_params = init_meta_params(jax.random.PRNGKey(0), learner, maml_config)
    assert jax.tree.structure(meta_params) == jax.tree.structure(random_params)
    np.testing.assert_array_equal(meta_params["inner_lr"]["logits"], 0.5)  # Meta-SGD rates untouched
    assert len(history) == 30
    expected_p = np.asarray((low + high) / 2)
    value = lambda mp: horizon * float(jax.nn.softmax(mp["policy"]["logits"][0]) @ expected_p)
    random_value, best_fixed = value(random_params), horizon * expected_p.max()
    assert value(meta_params) > random_value + 0.7 * (best_fixed - random_value), (
        value(meta_params), random_value, best_fixed)
    # The training batches' measured return rose with it.
    assert np.mean([h["return"] for h in history[-5:]]) > np.mean([h["return"] for h in history[:5]]) + 0.5


def test_headroom_closed_matches_hand_computed_fractions():
    from metarl_jax.evaluation import headroom_closed

    adapted = np.array([[0.0, 1.0, 3.0], [2.0, 3.0, 5.0]])   # mean per k: 1, 2, 4
    reference = np.array([0.0, 2.0])                           # mean 1
    optimum = np.array([2.0, 4.0])                             # mean 3: headroom 2
    out = headroom_closed(adapted, reference, optimum, num_bootstrap=200)
    assert out["headroom"] == pytest.approx(2.0)
    np.testing.assert_allclose(out["fraction"], [0.0, 0.5, 1.5])
    assert all(lo <= f + 1e-12 and f <= hi + 1e-12 for lo, f, hi in zip(out["ci_low"], out["fraction"], out["ci_high"]))
    with pytest.raises(ValueError, match="shape"):
        headroom_closed(adapted, reference[:1], optimum)


def test_estimated_optimum_is_the_step_with_the_best_mean_over_every_curve():
    """``best_column`` picks, over every curve and step, the column of per-task returns with the largest mean
    (a path that diverges after its best step does not pull the estimate down), and names it."""
    long_path = np.array([[1.0, 5.0, -40.0], [3.0, 7.0, -60.0]])   # means 2, 6, -50: best at k=1
    maml = np.array([[4.0, 6.5], [4.0, 4.5]])                       # means 4, 5.5
    column, source = benchmark_adaptation.best_column({"maml, 40 steps": long_path, "maml": maml})
    np.testing.assert_array_equal(column, [5.0, 7.0])
    assert source == "maml, 40 steps at k=1"
    column, source = benchmark_adaptation.best_column({"a": long_path[:, :1], "maml": maml})
    np.testing.assert_array_equal(column, [6.5, 4.5])
    assert source == "maml at k=1"
