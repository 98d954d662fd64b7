"""Task families: gymnax environments whose tasks are their ``EnvParams``.

``make_family(name, **kwargs)`` builds a family by name; ``FAMILY_NAMES`` lists
the names of the families with no optional dependency, ``OPTIONAL_FAMILY_NAMES``
those that need an extra (imported only when built). See
:mod:`metarl_jax.tasks.base` for the contract every family keeps.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from metarl_jax.tasks.bandit import BanditParams, BanditState, BernoulliBandit
from metarl_jax.tasks.base import TaskFamily, index_tasks, num_tasks_in, sample_tasks
from metarl_jax.tasks.gymnax_families import (
    Distribution,
    LogUniform,
    RandomizedParams,
    Uniform,
    acrobot_family,
    acrobot_target_family,
    cartpole_derived,
    cartpole_family,
    cartpole_target_family,
    pendulum_family,
)
from metarl_jax.tasks.maze import (
    SMALL_MAZE_LAYOUT,
    GridMaze,
    MazeParams,
    MazeState,
    open_layout,
)
from metarl_jax.tasks.navigation import Navigation2D, NavigationParams, NavigationState
from metarl_jax.tasks.tabular_mdp import (
    TabularMDP,
    TabularMDPParams,
    TabularState,
    discounted_policy_q,
    discounted_q_value_iteration,
    finite_horizon_value_iteration,
    greedy_policy,
    policy_evaluation,
)
from metarl_jax.validation import check_choice

_REGISTRY: dict[str, Callable[..., TaskFamily]] = {
    "bandit": BernoulliBandit,
    "tabular_mdp": TabularMDP,
    "navigation": Navigation2D,
    "cartpole": cartpole_family,
    "cartpole_target": cartpole_target_family,
    "acrobot": acrobot_family,
    "acrobot_target": acrobot_target_family,
    "pendulum": pendulum_family,
    "maze": GridMaze,
}

#: Names of the families with no optional dependency (what ``--task`` offers).
FAMILY_NAMES: tuple[str, ...] = tuple(_REGISTRY)

#: Families that need an optional extra: ``{name: (module, builder)}``, imported when built, so
#: ``import metarl_jax.tasks`` never needs the extra.
_OPTIONAL_REGISTRY: dict[str, tuple[str, str]] = {
    "risk_control": ("metarl_jax.tasks.finance.risk_control", "risk_control_family"),
}

#: Names :func:`make_family` also accepts, each needing an optional extra (``risk_control``: ``finance``).
OPTIONAL_FAMILY_NAMES: tuple[str, ...] = tuple(_OPTIONAL_REGISTRY)


def make_family(name: str, **kwargs) -> TaskFamily:
    """Build the task family registered as ``name`` with constructor ``kwargs``.

    Names: ``bandit`` (:class:`BernoulliBandit`), ``tabular_mdp`` (:class:`TabularMDP`),
    ``navigation`` (:class:`Navigation2D`), ``cartpole`` / ``acrobot`` / ``pendulum``
    (:func:`cartpole_family` etc., kwarg ``horizon``), ``cartpole_target``
    (:func:`cartpole_target_family`: the cart position to balance at), ``acrobot_target``
    (:func:`acrobot_target_family`: the tip height to swing to), ``maze`` (:class:`GridMaze`),
    ``risk_control`` (:func:`metarl_jax.tasks.finance.risk_control_family`: windows of the market
    series shipped with ``arch``; needs the extra ``finance``).
    """
    check_choice("name", name, FAMILY_NAMES + OPTIONAL_FAMILY_NAMES)
    if name in _OPTIONAL_REGISTRY:
        module, builder = _OPTIONAL_REGISTRY[name]
        return getattr(importlib.import_module(module), builder)(**kwargs)
    return _REGISTRY[name](**kwargs)


__all__ = [
    "FAMILY_NAMES",
    "SMALL_MAZE_LAYOUT",
    "BanditParams",
    "BanditState",
    "BernoulliBandit",
    "Distribution",
    "GridMaze",
    "LogUniform",
    "MazeParams",
    "MazeState",
    "Navigation2D",
    "NavigationParams",
    "NavigationState",
    "OPTIONAL_FAMILY_NAMES",
    "RandomizedParams",
    "TabularMDP",
    "TabularMDPParams",
    "TabularState",
    "TaskFamily",
    "Uniform",
    "acrobot_family",
    "acrobot_target_family",
    "cartpole_derived",
    "cartpole_family",
    "cartpole_target_family",
    "discounted_policy_q",
    "discounted_q_value_iteration",
    "finite_horizon_value_iteration",
    "greedy_policy",
    "index_tasks",
    "make_family",
    "num_tasks_in",
    "open_layout",
    "pendulum_family",
    "policy_evaluation",
    "sample_tasks",
]
