"""metarl_jax.validation: the helpers, and every config and argument rejecting bad values through them.

Each rejection is a ``ValueError`` whose one-line message reads ``<field>=<value!r> is invalid: <allowed>``;
on the command line it is one ``error: ...`` line on stderr and exit status 2, before any training
(``tests/test_cli_errors.py``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.deploy import DeployConfig
from metarl_jax import validation as v
from metarl_jax.algorithms.maml import MAMLConfig, auto_task_chunk
from metarl_jax.algorithms.outer import ProMPConfig, TRPOConfig
from metarl_jax.algorithms.task_sampler import TaskSelectionConfig, sample_indices
from metarl_jax.algorithms.task_selection import tail_mean
from metarl_jax.api import MetaRL
from metarl_jax.deploy import deploy
from metarl_jax.experiment import MAMLExperimentConfig
from metarl_jax.learners.actor_critic import ACConfig
from metarl_jax.learners.pg import PGConfig
from metarl_jax.learners.q_learning import QConfig
from metarl_jax.policy_selection import SelectionConfig
from metarl_jax.preprocessing import PreprocessConfig, clip_by_zscore, concat_time_feature, polynomial_features
from metarl_jax.tasks import (
    BernoulliBandit,
    GridMaze,
    LogUniform,
    Navigation2D,
    TabularMDP,
    Uniform,
    acrobot_target_family,
    cartpole_family,
    cartpole_target_family,
    finite_horizon_value_iteration,
    make_family,
    sample_tasks,
)
from metarl_jax.tasks.hard_tasks import RareBestArmBandit
from metarl_jax.tasks.tabular_mdp import discounted_q_value_iteration
from metarl_jax.training.checkpoint import save_checkpoint
from metarl_jax.training.loop import TrainConfig, run_loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _message(fn) -> str:
    with pytest.raises(ValueError) as err:
        fn()
    return str(err.value)


# --------------------------------------------------------------------------- the helpers


def test_require_raises_the_one_message_shape():
    v.require(True, "x", 1, "anything")  # no error
    assert _message(lambda: v.require(False, "x", [1, 2], "must be short")) == "x=[1, 2] is invalid: must be short"


@pytest.mark.parametrize("value", [3, 0, -2, np.int64(3), np.int32(0), np.uint8(7), 10**30])
def test_is_int_accepts_python_and_numpy_integers(value):
    assert v.is_int(value)


@pytest.mark.parametrize("value", [True, False, np.bool_(True), 2.0, 2.5, np.float64(2.0), "3", None, [3],
                                   np.array(3), jnp.asarray(3)])
def test_is_int_rejects_bools_floats_strings_none_and_arrays(value):
    assert not v.is_int(value)


def test_check_int_returns_a_python_int_and_names_its_bounds():
    assert v.check_int("n", np.int64(4), minimum=1) == 4 and type(v.check_int("n", np.int64(4))) is int
    assert v.check_int("n", 1, minimum=1) == 1 and v.check_int("n", 4, minimum=1, maximum=4) == 4  # inclusive
    assert v.check_int("n", -7) == -7  # no bounds
    assert _message(lambda: v.check_int("n", 0, minimum=1)) == "n=0 is invalid: must be an integer >= 1"
    assert _message(lambda: v.check_int("n", 5, minimum=1, maximum=4)) == "n=5 is invalid: must be an integer in [1, 4]"
    assert _message(lambda: v.check_int("n", 9, maximum=4)) == "n=9 is invalid: must be an integer <= 4"
    for bad in (True, 2.0, 2.5, "2", None, np.float32(2.0)):
        assert _message(lambda: v.check_int("n", bad, minimum=1)) == f"n={bad!r} is invalid: must be an integer >= 1"


def test_check_optional_int_passes_none_through():
    assert v.check_optional_int("k", None, minimum=1) is None
    assert v.check_optional_int("k", np.int16(2), minimum=1) == 2
    assert _message(lambda: v.check_optional_int("k", 1.5, minimum=1)) == \
        "k=1.5 is invalid: must be None or an integer >= 1"
    assert _message(lambda: v.check_optional_int("k", False, minimum=0)) == \
        "k=False is invalid: must be None or an integer >= 0"


@pytest.mark.parametrize("value", [0.5, 1, np.float32(0.25), np.float64(-3.0), np.int64(2), 10**400])
def test_is_real_accepts_finite_ints_floats_and_numpy_numbers(value):
    assert v.is_real(value)


@pytest.mark.parametrize("value", [True, np.bool_(False), "0.5", None, float("nan"), float("inf"), -float("inf"),
                                   np.float32("nan"), np.array(0.5), jnp.asarray(0.5), [0.5], 1 + 0j])
def test_is_real_rejects_bools_strings_nonfinite_arrays_and_complex(value):
    assert not v.is_real(value)


def test_check_real_bounds_open_and_closed():
    assert v.check_real("a", 1) == 1.0 and type(v.check_real("a", np.float32(0.5))) is float
    assert v.check_real("a", 0.0, minimum=0.0) == 0.0  # closed: the bound itself is in
    assert v.check_real("a", 1.0, minimum=0.0, maximum=1.0, min_open=True) == 1.0
    cases = [
        (dict(minimum=0.0, min_open=True), 0.0, "must be a finite number > 0"),
        (dict(minimum=0.0), -1e-9, "must be a finite number >= 0"),
        (dict(maximum=1.0, max_open=True), 1.0, "must be a finite number < 1"),
        (dict(maximum=1.0), 1.5, "must be a finite number <= 1"),
        (dict(minimum=0.0, maximum=1.0, min_open=True), 0.0, "must be a number in (0, 1]"),
        (dict(minimum=0.0, maximum=1.0, max_open=True), 1.0, "must be a number in [0, 1)"),
        (dict(minimum=0.0, maximum=2.4, min_open=True, max_open=True), 2.4, "must be a number in (0, 2.4)"),
        ({}, float("nan"), "must be a finite number"),
        ({}, float("-inf"), "must be a finite number"),
        ({}, True, "must be a finite number"),
        ({}, "1.0", "must be a finite number"),
        ({}, None, "must be a finite number"),
    ]
    for kwargs, bad, allowed in cases:
        assert _message(lambda: v.check_real("a", bad, **kwargs)) == f"a={bad!r} is invalid: {allowed}"


def test_check_optional_real_and_check_probability():
    assert v.check_optional_real("r", None, minimum=0.0) is None
    assert v.check_optional_real("r", 2, minimum=0.0) == 2.0
    assert _message(lambda: v.check_optional_real("r", 0.0, minimum=0.0, min_open=True)) == \
        "r=0.0 is invalid: must be None or a finite number > 0"
    assert v.check_probability("p", 0) == 0.0 and v.check_probability("p", 1.0) == 1.0
    for bad in (-0.1, 1.1, float("nan")):
        assert _message(lambda: v.check_probability("p", bad)) == f"p={bad!r} is invalid: must be a number in [0, 1]"


def test_check_bool_accepts_only_true_and_false():
    assert v.check_bool("b", True) is True and v.check_bool("b", np.bool_(False)) is False
    for bad in (0, 1, "True", None, 1.0):
        assert _message(lambda: v.check_bool("b", bad)) == f"b={bad!r} is invalid: must be True or False"


def test_check_choice_names_every_choice_and_compares_by_type():
    assert v.check_choice("mode", "b", ("a", "b")) == "b"
    assert v.check_choice("x", None, ("auto", None)) is None
    assert _message(lambda: v.check_choice("mode", "c", ("a", "b"))) == "mode='c' is invalid: must be one of 'a', 'b'"
    assert _message(lambda: v.check_choice("k", True, (1, 2))) == "k=True is invalid: must be one of 1, 2"  # not 1
    assert "k=['a'] is invalid" in _message(lambda: v.check_choice("k", ["a"], ("a",)))  # unhashable: no TypeError
    assert "k=array" in _message(lambda: v.check_choice("k", np.array(["a", "b"]), ("a",)))  # no ambiguous truth


def test_check_int_sequence_for_layer_sizes():
    assert v.check_int_sequence("h", [64, np.int64(32)]) == (64, 32)
    assert v.check_int_sequence("h", (), min_length=0) == ()
    allowed = "must be a non-empty sequence of integers >= 1"
    for bad in ((), (0, 8), (8.0,), (True,), "64", 64, None, (8, None)):
        assert _message(lambda: v.check_int_sequence("h", bad)) == f"h={bad!r} is invalid: {allowed}"
    assert _message(lambda: v.check_int_sequence("seeds", (-1,), minimum=0)) == \
        "seeds=(-1,) is invalid: must be a non-empty sequence of integers >= 0"


def test_check_real_sequence_and_check_interval():
    assert v.check_real_sequence("s", (0.5, 1)) == (0.5, 1.0)
    assert _message(lambda: v.check_real_sequence("s", (0.5, 0.0), minimum=0.0, min_open=True)) == \
        "s=(0.5, 0.0) is invalid: must be a non-empty sequence of finite numbers > 0"
    assert "s=(nan,) is invalid" in _message(lambda: v.check_real_sequence("s", (float("nan"),)))
    assert v.check_interval("r", [-1, 1.5], minimum=-2.0, maximum=2.0) == (-1.0, 1.5)
    allowed = "must be a pair (lo, hi) of finite numbers with -2 <= lo < hi <= 2"
    for bad in ((1.0, 1.0), (1.0, -1.0), (-3.0, 0.0), (0.0, 2.5), (0.0, float("nan")), (0.0,), "ab", None, (0, 1, 2)):
        assert _message(lambda: v.check_interval("r", bad, minimum=-2.0, maximum=2.0)) == f"r={bad!r} is invalid: {allowed}"
    assert _message(lambda: v.check_interval("r", (2, 1))) == \
        "r=(2, 1) is invalid: must be a pair (lo, hi) of finite numbers with lo < hi"


def test_validation_is_the_lowest_layer_and_imports_no_jax():
    """``metarl_jax.validation`` is importable on its own: no jax, no other module of the package."""
    code = ("import sys, metarl_jax.validation; "
            "bad = sorted(m for m in sys.modules if m == 'jax' or (m.startswith('metarl_jax.') "
            "and m != 'metarl_jax.validation')); print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_no_module_keeps_a_private_validator():
    """The validators it replaced are gone, so no module validates with its own rules."""
    removed = re.compile(r"\b(_require|_require_unroll|_require_int|_is_int|_is_real|_is_number|_one_of|_check_int"
                         r"|_positive_int|_check_real)\b")
    found = []
    for top in ("metarl_jax", "experiments"):
        for directory, _, files in os.walk(os.path.join(ROOT, top)):
            for name in files:
                if name.endswith(".py"):
                    with open(os.path.join(directory, name)) as f:
                        found += [f"{name}: {m}" for m in removed.findall(f.read())]
    assert found == []


# --------------------------------------------------------------------------- values the configs accept


def test_configs_accept_numpy_integers_and_json_values_and_store_plain_types():
    assert PGConfig(horizon=np.int64(5), gamma=1).horizon == 5
    assert TrainConfig(meta_batch=np.int32(4), seed=np.int64(3)).meta_batch == 4
    assert MAMLConfig(task_chunk=None, inner_steps=np.int64(2)).task_chunk is None
    config = MAMLExperimentConfig(task="bandit", hidden_sizes=[8, 8], eval_steps=None)  # a list, as from JSON
    assert config.hidden_sizes == (8, 8) and hash(config) == hash(MAMLExperimentConfig(task="bandit", hidden_sizes=(8, 8)))
    selection = TaskSelectionConfig(pool_size=np.int64(4))
    assert type(selection.pool_size) is int and json.loads(json.dumps(selection.pool_size)) == 4
    assert BernoulliBandit(num_arms=np.int64(3), horizon=np.int32(2)).num_arms == 3


# --------------------------------------------------------------------------- every config rejects bad values

_X = jnp.ones((2, 3), jnp.float32)
_KEY = jax.random.PRNGKey(0)

#: ``(constructor or call, field, bad value)``: the call must raise a ValueError naming ``field=value``.
BAD_VALUES = [
    # PGConfig (horizon, num_inner_episodes: accepted before, as int(x) >= 1)
    (lambda: PGConfig(horizon=2.5), "horizon", 2.5),
    (lambda: PGConfig(num_inner_episodes=True), "num_inner_episodes", True),
    (lambda: PGConfig(num_outer_episodes="4"), "num_outer_episodes", "4"),
    (lambda: PGConfig(gamma=0.0), "gamma", 0.0),
    (lambda: PGConfig(baseline="value"), "baseline", "value"),
    (lambda: PGConfig(rollout_unroll=0), "rollout_unroll", 0),
    (lambda: PGConfig(standardize_advantages="yes"), "standardize_advantages", "yes"),
    # ACConfig
    (lambda: ACConfig(horizon=2.5), "horizon", 2.5),
    (lambda: ACConfig(gae_lambda=1.5), "gae_lambda", 1.5),
    (lambda: ACConfig(critic_lr_scale=float("inf")), "critic_lr_scale", float("inf")),
    (lambda: ACConfig(bootstrap_at_horizon=0), "bootstrap_at_horizon", 0),
    # QConfig
    (lambda: QConfig(num_outer_episodes=np.float64(3.0)), "num_outer_episodes", np.float64(3.0)),
    (lambda: QConfig(epsilon=-0.1), "epsilon", -0.1),
    (lambda: QConfig(double_q=1), "double_q", 1),
    # MAMLConfig (inner_steps: accepted before)
    (lambda: MAMLConfig(inner_steps=1.5), "inner_steps", 1.5),
    (lambda: MAMLConfig(inner_lr=0.0), "inner_lr", 0.0),
    (lambda: MAMLConfig(task_chunk=2.0), "task_chunk", 2.0),
    (lambda: MAMLConfig(estimator="maml"), "estimator", "maml"),
    (lambda: MAMLConfig(learn_inner_lr=1), "learn_inner_lr", 1),
    (lambda: MAMLConfig(init_entropy_coef=float("inf")), "init_entropy_coef", float("inf")),
    (lambda: auto_task_chunk(2.5), "meta_batch", 2.5),
    # TRPOConfig, ProMPConfig
    (lambda: TRPOConfig(cg_iters=2.0), "cg_iters", 2.0),
    (lambda: TRPOConfig(max_kl=float("nan")), "max_kl", float("nan")),
    (lambda: TRPOConfig(ls_backtrack_ratio=1.0), "ls_backtrack_ratio", 1.0),
    (lambda: ProMPConfig(num_outer_steps=True), "num_outer_steps", True),
    (lambda: ProMPConfig(clip_eps=0.0), "clip_eps", 0.0),
    # TrainConfig (meta_batch: accepted before) and run_loop's arguments
    (lambda: TrainConfig(meta_batch=1.9), "meta_batch", 1.9),
    (lambda: TrainConfig(num_iterations=0), "num_iterations", 0),
    (lambda: TrainConfig(checkpoint_every=2.5), "checkpoint_every", 2.5),
    (lambda: TrainConfig(seed=-1), "seed", -1),
    (lambda: TrainConfig(seed=1.0), "seed", 1.0),
    (lambda: TrainConfig(outer_lr="0.1"), "outer_lr", "0.1"),
    (lambda: TrainConfig(max_grad_norm=0.0), "max_grad_norm", 0.0),
    (lambda: TrainConfig(final_lr_fraction=1.5), "final_lr_fraction", 1.5),
    (lambda: TrainConfig(lr_schedule="linear"), "lr_schedule", "linear"),
    (lambda: run_loop(lambda s: (s, {}), None, TrainConfig(), stop_after=1.5), "stop_after", 1.5),
    # TaskSelectionConfig and the sampler
    (lambda: TaskSelectionConfig(pool_size=2.0), "pool_size", 2.0),
    (lambda: TaskSelectionConfig(pool_size=4, temperature=0.0), "temperature", 0.0),
    (lambda: TaskSelectionConfig(pool_size=4, staleness_coef=1.5), "staleness_coef", 1.5),
    (lambda: TaskSelectionConfig(pool_size=4, strategy="greedy"), "strategy", "greedy"),
    (lambda: sample_indices(TaskSelectionConfig(pool_size=4), None, _KEY, 2.0), "batch_size", 2.0),
    (lambda: tail_mean([1.0, 2.0], 0.0), "fraction", 0.0),
    # SelectionConfig
    (lambda: SelectionConfig(lr_scales=(0.5, -1.0)), "lr_scales", (0.5, -1.0)),
    (lambda: SelectionConfig(lr_scales=[0.5]), "lr_scales", [0.5]),
    (lambda: SelectionConfig(num_steps=1.5), "num_steps", 1.5),
    # MAMLExperimentConfig
    (lambda: MAMLExperimentConfig(hidden_sizes=(0, 8)), "hidden_sizes", (0, 8)),
    (lambda: MAMLExperimentConfig(hidden_sizes=(8.0,)), "hidden_sizes", (8.0,)),
    (lambda: MAMLExperimentConfig(hidden_sizes=()), "hidden_sizes", ()),
    (lambda: MAMLExperimentConfig(eval_tasks=2.5), "eval_tasks", 2.5),
    (lambda: MAMLExperimentConfig(num_arms=1), "num_arms", 1),
    (lambda: MAMLExperimentConfig(maze_size=2.0), "maze_size", 2.0),
    (lambda: MAMLExperimentConfig(tabular_policy=1), "tabular_policy", 1),
    (lambda: MAMLExperimentConfig(inner_lr=-0.1), "inner_lr", -0.1),
    (lambda: MAMLExperimentConfig(seed=1.5), "seed", 1.5),
    (lambda: MAMLExperimentConfig(task="chess"), "task", "chess"),
    (lambda: MAMLExperimentConfig(epsilon=float("nan")), "epsilon", float("nan")),
    # preprocessing
    (lambda: PreprocessConfig(obs_polynomial_degree=2.0), "obs_polynomial_degree", 2.0),
    (lambda: PreprocessConfig(replacement=float("nan")), "replacement", float("nan")),
    (lambda: PreprocessConfig(obs_low=-float("inf")), "obs_low", -float("inf")),
    (lambda: polynomial_features(_X, 1.5), "degree", 1.5),
    (lambda: concat_time_feature(_X, jnp.zeros(2), 0), "horizon", 0),
    (lambda: clip_by_zscore(None, _X, 0.0), "max_z", 0.0),
    # task families and their functions
    (lambda: BernoulliBandit(num_arms=2.0), "num_arms", 2.0),
    (lambda: BernoulliBandit(horizon=True), "horizon", True),
    (lambda: TabularMDP(num_states=0), "num_states", 0),
    (lambda: TabularMDP(reward_noise_std=-1.0), "reward_noise_std", -1.0),
    (lambda: Navigation2D(horizon=2.5), "horizon", 2.5),
    (lambda: Navigation2D(goal_range=0), "goal_range", 0),
    (lambda: GridMaze(size=1), "size", 1),
    (lambda: GridMaze(horizon="5"), "horizon", "5"),
    (lambda: RareBestArmBandit(num_arms=2), "num_arms", 2),
    (lambda: RareBestArmBandit(common_arms=5), "common_arms", 5),
    (lambda: RareBestArmBandit(rare_fraction=1.5), "rare_fraction", 1.5),
    (lambda: cartpole_target_family(target_range=3.0), "target_range", 3.0),
    (lambda: acrobot_target_family(height_range=(1.0, -1.0)), "height_range", (1.0, -1.0)),
    (lambda: cartpole_family(horizon=0), "horizon", 0),
    (lambda: Uniform(0.0, float("nan")), "Uniform.high", float("nan")),
    (lambda: LogUniform(0.0, 1.0), "LogUniform.low", 0.0),
    (lambda: make_family("chess"), "name", "chess"),
    (lambda: sample_tasks(BernoulliBandit(), _KEY, 2.0), "num_tasks", 2.0),
    (lambda: finite_horizon_value_iteration(None, 2.0), "horizon", 2.0),
    (lambda: discounted_q_value_iteration(None, 1.0, 10), "gamma", 1.0),
    # MetaRL arguments (construction fails before any training)
    (lambda: MetaRL("bandit", learning_rate=True), "learning_rate", True),
    (lambda: MetaRL(state_size=2.0, action_size=2), "state_size", 2.0),
    (lambda: MetaRL(state_size=3, action_size=1), "action_size", 1),
    (lambda: MetaRL("bandit", meta_batch=1.9), "meta_batch", 1.9),
    (lambda: MetaRL("bandit", hidden_sizes=(8, 0)), "hidden_sizes", (8, 0)),
    # deploy arguments (checked before the learner is touched) and the deploy CLI's config
    (lambda: deploy(None, None, None, None, _KEY, 2.5), "num_rounds", 2.5),
    (lambda: deploy(None, None, None, None, _KEY, 0), "num_rounds", 0),
    (lambda: deploy(None, None, None, None, _KEY, 3, inner_lr=float("nan")), "inner_lr", float("nan")),
    (lambda: deploy(None, None, None, None, _KEY, 3, keep_best="yes"), "keep_best", "yes"),
    (lambda: DeployConfig(checkpoint="run", rounds=1.5), "rounds", 1.5),
    (lambda: DeployConfig(checkpoint="run", inner_lr=-1.0), "inner_lr", -1.0),
    # checkpoints (checked before anything is written)
    (lambda: save_checkpoint("/nonexistent/never-written", 1.0, {}), "step", 1.0),
    (lambda: save_checkpoint("/nonexistent/never-written", 1, {}, keep=0), "keep", 0),
]


@pytest.mark.parametrize("call, field, value", BAD_VALUES, ids=[f"{i}-{c[1]}" for i, c in enumerate(BAD_VALUES)])
def test_every_config_rejects_a_bad_value_naming_field_and_value(call, field, value):
    message = _message(call)
    assert f"{field}={value!r} is invalid: " in message, message
    assert "\n" not in message


def test_the_table_covers_every_config_with_enough_cases():
    assert len(BAD_VALUES) >= 40
    fields = {field for _, field, _ in BAD_VALUES}
    assert {"horizon", "num_inner_episodes", "inner_steps", "meta_batch", "hidden_sizes"} <= fields


@pytest.fixture(scope="module")
def agent():
    return MetaRL("bandit", num_arms=2, horizon=2, meta_batch=2, num_episodes=2, hidden_sizes=(4,))


@pytest.mark.parametrize("call, field, value", [
    (lambda a: a.train(2.5), "num_iterations", 2.5),
    (lambda a: a.train(0), "num_iterations", 0),
    (lambda a: a.adapt(steps=True), "steps", True),
])
def test_metarl_methods_reject_bad_counts_before_running(agent, call, field, value):
    assert f"{field}={value!r} is invalid: must be an integer >= 1" in _message(lambda: call(agent))
    assert agent.iterations == 0 and agent.history == []
