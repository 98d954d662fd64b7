"""A newcomer's entry point: one object that meta-trains, adapts and acts.

:class:`MetaRL` mirrors the classic object interface (``train`` / ``adapt`` /
``predict`` / ``save`` / ``load``) and is a thin layer over the functional core:
:func:`metarl_jax.experiment.LEARNERS` builds the learner from a validated
:class:`~metarl_jax.experiment.MAMLExperimentConfig`, training runs
:func:`metarl_jax.algorithms.maml.maml` in the one training loop,
:func:`metarl_jax.training.loop.run_loop` (``lax.scan`` calls of ``iterations_per_call``
meta-iterations, as :func:`metarl_jax.training.loop.meta_train`),
adaptation is :func:`metarl_jax.algorithms.inner.adapt`, actions come from the policy's mode
(:class:`metarl_jax.deploy.ModeActions`), and ``save`` / ``load`` use the
crash-safe checkpoints of :mod:`metarl_jax.training.checkpoint`. The object holds the
state the functions thread explicitly (training state, adapted parameters, a
PRNG key); use the functions directly when you need to ``vmap`` or differentiate.

    agent = MetaRL("bandit", num_arms=3, horizon=10, meta_batch=8, num_episodes=8)
    history = agent.train(20)           # [{"iteration": 0, "post_adaptation_return": ..., ...}, ...]
    agent.adapt()                       # inner_steps (the trained K) steps on a new task from the family
    arm = agent.predict()               # greedy action of the adapted policy
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from metarl_jax.training import checkpoint as ckpt
from metarl_jax.deploy import ModeActions, check_single_task
from metarl_jax.experiment import FAMILY_FIELDS, LEARNERS, MAMLExperimentConfig
from metarl_jax.algorithms.inner import adapt
from metarl_jax.algorithms.maml import maml
from metarl_jax.policy_selection import SelectionConfig, select_adapted
from metarl_jax.tasks import (
    FAMILY_NAMES,
    BernoulliBandit,
    GridMaze,
    Navigation2D,
    TabularMDP,
    make_family,
    sample_tasks,
)
from metarl_jax.tasks.base import TaskFamily
from metarl_jax.training.interrupts import TrainingInterrupted
from metarl_jax.training.loop import NonFiniteGradientError, make_optimizer, run_loop
from metarl_jax.validation import check_int, check_real, check_writable_dir

_CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(MAMLExperimentConfig))
#: Config fields the object sets itself (from its own arguments) or that make no sense here.
#: Registry names of the library's family classes (the ``task`` recorded in the config).
_NAMES_BY_CLASS = ((BernoulliBandit, "bandit"), (TabularMDP, "tabular_mdp"), (Navigation2D, "navigation"),
                   (GridMaze, "maze"))
_RESERVED = ("task", "outer_lr", "num_iterations", "out_dir", "run_dir", "name")


class MetaRL:
    """Meta-reinforcement learning (MAML) behind a small object interface.

    Args:
      family_or_name: a task family (a :class:`~metarl_jax.tasks.base.TaskFamily`) or its
        registry name (``metarl_jax.tasks.FAMILY_NAMES``); ``None`` with ``state_size`` and
        ``action_size`` builds random tabular MDPs of that size (:class:`~metarl_jax.tasks.TabularMDP`).
      state_size, action_size: sizes of the tabular MDPs (with a family: optional checks of its
        observation length and number of actions).
      learning_rate: Adam step size of the meta-optimizer (the outer loop).
      learner: inner learner name (``metarl_jax.experiment.LEARNERS``).
      **options: any field of :class:`~metarl_jax.experiment.MAMLExperimentConfig` (``meta_batch``,
        ``num_episodes``, ``horizon``, ``inner_lr``, ``inner_steps``, ``estimator``, ``hidden_sizes``,
        ``seed``, ``iterations_per_call``...); with a family name or sizes, other options go to the
        family's constructor (e.g. ``num_arms=5``). ``horizon`` defaults to the family's own.

    Every value is validated on construction; an invalid one raises ``ValueError`` naming it.
    """

    def __init__(self, family_or_name: TaskFamily | str | None = None, state_size: int | None = None,
                 action_size: int | None = None, learning_rate: float = 3e-3, learner: str = "pg", **options):
        check_real("learning_rate", learning_rate, minimum=0.0, min_open=True)
        for name in options:
            if name in _RESERVED:
                raise ValueError(f"{name}={options[name]!r} is invalid here: MetaRL sets it "
                                 "(from family_or_name, learning_rate and train(num_iterations))")
        config_options = {k: v for k, v in options.items() if k in _CONFIG_FIELDS}
        family_options = {k: v for k, v in options.items() if k not in _CONFIG_FIELDS}
        if "horizon" in config_options:
            family_options["horizon"] = config_options["horizon"]
        for field, (owner, argument) in FAMILY_FIELDS.items():  # config fields that shape the family
            if field not in config_options:
                continue
            if family_or_name != owner:
                raise ValueError(f"{field}={config_options[field]!r} is invalid here: it is an argument of the "
                                 f"{owner!r} family built by name, not of {family_or_name!r}")
            family_options[argument] = config_options[field]

        task_name = "tabular_mdp"
        if family_or_name is None:
            if state_size is None or action_size is None:
                raise ValueError("family_or_name=None is invalid without state_size and action_size: "
                                 f"give a task family, a family name ({', '.join(FAMILY_NAMES)}) or both sizes")
            family = self._make(TabularMDP, family_options, num_states=check_int("state_size", state_size, minimum=1),
                                num_actions=check_int("action_size", action_size, minimum=2))
        elif isinstance(family_or_name, str):
            if family_or_name not in FAMILY_NAMES:
                raise ValueError(f"family_or_name={family_or_name!r} is invalid: names are {list(FAMILY_NAMES)}")
            task_name = family_or_name
            family = self._make(lambda **kw: make_family(family_or_name, **kw), family_options)
        elif isinstance(family_or_name, TaskFamily):
            unknown = sorted(set(family_options) - {"horizon"})
            if unknown:
                raise ValueError(f"{unknown[0]}={options[unknown[0]]!r} is invalid: not a field of "
                                 "MAMLExperimentConfig (family options only apply to a family built by name)")
            family = family_or_name
            task_name = next((n for cls, n in _NAMES_BY_CLASS if type(family) is cls), task_name)
        else:
            raise ValueError(f"family_or_name={family_or_name!r} is invalid: give a TaskFamily, a name or None")
        # train() runs open-ended (each call extends the run): a schedule over num_iterations has no end to aim at.
        config_options.setdefault("lr_schedule", "constant")
        if "horizon" not in config_options and getattr(family, "horizon", None):
            config_options["horizon"] = int(family.horizon)

        self.config = MAMLExperimentConfig(task=task_name, learner=learner, outer_lr=float(learning_rate),
                                           **config_options)
        self.family = family
        self._check_sizes(state_size, action_size)
        self.learner = LEARNERS[self.config.learner](self.config, family)
        self.maml_config = self.config.maml_config()
        self.train_config = self.config.train_config()
        self._optimizer = make_optimizer(self.train_config)
        self._compiled: dict[Any, Any] = {}
        seed = self.config.seed
        self._state = self._algorithm().init(jax.random.PRNGKey(seed))
        self._key = jax.random.fold_in(jax.random.PRNGKey(seed), 1)
        self._adapted = None
        self.task = None
        self.last_selection: dict | None = None
        self.history: list[dict] = []

    # ------------------------------------------------------------------ construction helpers
    @staticmethod
    def _make(constructor, family_options: dict, **fixed) -> TaskFamily:
        try:
            return constructor(**fixed, **family_options)
        except TypeError as err:  # an option the family's constructor does not take
            bad = next((k for k in family_options if f"'{k}'" in str(err)), None)
            if bad is None:
                raise
            raise ValueError(f"{bad}={family_options[bad]!r} is invalid: neither a field of MAMLExperimentConfig "
                             "nor an argument of the task family") from None

    def _check_sizes(self, state_size, action_size) -> None:
        obs_dim = self.family.obs_dim()
        if state_size is not None and check_int("state_size", state_size, minimum=1) != obs_dim:
            raise ValueError(f"state_size={state_size!r} is invalid: the family's observations have length {obs_dim}")
        space = self.family.action_space(self.family.default_params)
        n = int(space.n) if hasattr(space, "n") else int(space.shape[0])
        if action_size is not None and check_int("action_size", action_size, minimum=1) != n:
            raise ValueError(f"action_size={action_size!r} is invalid: the family has {n} actions")

    def _next_key(self) -> jax.Array:
        self._key, key = jax.random.split(self._key)
        return key

    # ------------------------------------------------------------------ state
    @property
    def meta_params(self) -> dict:
        """The meta-learned parameters ``{"policy": theta, ...}``."""
        return self._state.meta_params

    @property
    def params(self):
        """The policy parameters ``predict`` uses: the adapted ones if :meth:`adapt` ran, else ``theta``."""
        return self._adapted if self._adapted is not None else self._state.meta_params["policy"]

    @property
    def iterations(self) -> int:
        """Meta-iterations trained so far."""
        return int(self._state.step)

    # ------------------------------------------------------------------ train / adapt / predict
    def _algorithm(self):
        """MAML over this object's family and learner (:func:`metarl_jax.algorithms.maml.maml`), built once
        (so the training loop compiles its step once)."""
        if "train" not in self._compiled:
            family, batch = self.family, self.train_config.meta_batch
            self._compiled["train"] = maml(
                self.learner, self.maml_config, self._optimizer, lambda key: sample_tasks(family, key, batch),
                skip_nonfinite=self.train_config.on_nonfinite == "skip")
        return self._compiled["train"]

    def train(self, num_iterations: int) -> list[dict]:
        """Run ``num_iterations`` more meta-iterations; returns their metrics (one dict each).

        Each dict has ``iteration``, ``pre_adaptation_return``, ``post_adaptation_return``,
        ``meta_loss``, ``grad_norm``, ``grad_finite``, ``seconds``... Training continues from where
        the previous call (or :meth:`load`) left off; :func:`metarl_jax.training.loop.run_loop` runs it
        (no run directory: :meth:`save` writes checkpoints). Clears the adapted parameters. With
        ``on_nonfinite="stop"`` a non-finite meta-gradient raises
        :class:`~metarl_jax.training.loop.NonFiniteGradientError`; the object keeps the iterations of the
        scan calls that finished before it (the error's ``last_good_state`` and ``history``). So does a
        Ctrl-C (:class:`~metarl_jax.training.interrupts.TrainingInterrupted`, raised after the current call).
        """
        num_iterations = check_int("num_iterations", num_iterations, minimum=1)
        config = dataclasses.replace(self.train_config, num_iterations=self.iterations + num_iterations)
        self._adapted = None
        try:
            self._state, records = run_loop(self._algorithm().step, self._state, config, progress=False)
        except NonFiniteGradientError as err:
            if err.last_good_state is not None:
                self._state = err.last_good_state
                self.history.extend(err.history)
            raise
        except TrainingInterrupted as stop:  # Ctrl-C: keep the iterations that finished, then stop
            self._state = stop.state
            self.history.extend(stop.history)
            raise
        self.history.extend(records)
        return records

    def sample_task(self):
        """A new task drawn from the family (advances the object's PRNG key)."""
        return self.family.sample_params(self._next_key())

    def adapt(self, task=None, steps: int | None = None, select: bool | SelectionConfig = False):
        """Adapt the meta-learned policy to ``task`` (default: a new task from the family).

        ``steps`` inner steps of :func:`metarl_jax.algorithms.maml.adapt` (default: ``inner_steps``, the
        number the meta-objective was trained for), each on a fresh batch of ``num_episodes``
        episodes. Returns the adapted policy parameters and keeps them (and the task) for
        :meth:`predict`.

        ``select``: policy selection (:mod:`metarl_jax.policy_selection`): ``True`` (or a
        :class:`~metarl_jax.policy_selection.SelectionConfig`) builds the candidates ``k = 0..steps``
        at half and full step size, scores each on fresh validation episodes and keeps the best;
        :attr:`last_selection` then reports the chosen ``k``, step-size multiple, every candidate's
        validation return and the episodes spent adapting and validating.
        """
        steps = self.maml_config.inner_steps if steps is None else check_int("steps", steps, minimum=1)
        task = self.sample_task() if task is None else task
        check_single_task(self.family, task)
        if not isinstance(select, (bool, SelectionConfig)):
            raise ValueError(f"select={select!r} is invalid: give True, False or a SelectionConfig")
        if select is not False:
            base = select if isinstance(select, SelectionConfig) else SelectionConfig()
            selection = dataclasses.replace(base, num_steps=steps)
            cache = ("select", selection)
            if cache not in self._compiled:
                self._compiled[cache] = jax.jit(
                    lambda mp, t, k: select_adapted(self.learner, self.maml_config, mp, t, k, selection))
            result = self._compiled[cache](self.meta_params, task, self._next_key())
            self.last_selection = {
                "steps": int(result.steps), "lr_scale": float(result.lr_scale),
                "validation_returns": np.asarray(result.validation_returns).tolist(),
                "adaptation_episodes": int(result.adaptation_episodes),
                "validation_episodes": int(result.validation_episodes)}
            self._adapted = result.params
        else:
            if ("adapt", steps) not in self._compiled:
                cfg = dataclasses.replace(self.maml_config, inner_steps=steps, estimator="first_order")
                self._compiled[("adapt", steps)] = jax.jit(
                    lambda mp, t, k: adapt(self.learner, cfg, mp, t, k)[0])
            self._adapted = self._compiled[("adapt", steps)](self.meta_params, task, self._next_key())
            self.last_selection = None
        self.task = task
        return self._adapted

    def _as_obs(self, state) -> jax.Array:
        obs_dim = self.family.obs_dim()
        if state is None:
            params = self.task if self.task is not None else self.family.default_params
            obs, _ = self.family.reset_env(jax.random.PRNGKey(0), params)
            return jnp.asarray(obs, jnp.float32)
        array = np.asarray(state)
        if np.issubdtype(array.dtype, np.integer) and isinstance(self.family, TabularMDP):
            if array.size and (array.min() < 0 or array.max() >= obs_dim):
                raise ValueError(f"state={state!r} is invalid: state indices must be in [0, {obs_dim})")
            return jax.nn.one_hot(array, obs_dim, dtype=jnp.float32)
        if array.ndim == 0 or array.shape[-1] != obs_dim:
            raise ValueError(f"state has shape {array.shape}: expected [..., {obs_dim}] (the observation)"
                             + (" or an integer state index" if isinstance(self.family, TabularMDP) else ""))
        return jnp.asarray(array, jnp.float32)

    def predict(self, state=None) -> np.ndarray:
        """The mode action of the adapted (else the meta-learned) policy in ``state``.

        ``state``: an observation ``[..., obs_dim]`` (for tabular MDPs also an integer state index
        or array of them); ``None`` is the family's initial observation (bandits have one state).
        Returns a numpy array: ``[...]`` int32 for discrete actions (most likely action),
        ``[..., action_dim]`` float32 for continuous ones (the Gaussian mean).
        """
        obs = self._as_obs(state)
        if "predict" not in self._compiled:
            mode = ModeActions(self.learner)
            self._compiled["predict"] = jax.jit(lambda params, o: mode.sample(jax.random.PRNGKey(0), params, o))
        return np.asarray(self._compiled["predict"](self.params, obs))

    # ------------------------------------------------------------------ persistence
    def _persistent(self) -> dict:
        adapted = self._adapted if self._adapted is not None else self._state.meta_params["policy"]
        return {"state": self._state, "adapted": adapted, "has_adapted": np.asarray(self._adapted is not None),
                "key": self._key}

    def save(self, path: str) -> str:
        """Write everything needed to continue (training state, adapted parameters, key) to directory ``path``.

        One crash-safe checkpoint file per save (the latest is kept). Returns its path.
        """
        check_writable_dir("path", path)  # e.g. a path under a regular file fails before anything is written
        metadata = {"api": "MetaRL", "family": self.family.name, "config": dataclasses.asdict(self.config)}
        return ckpt.save_checkpoint(path, self.iterations, self._persistent(), metadata, keep=1)

    def load(self, path: str) -> "MetaRL":
        """Load what :meth:`save` wrote into this object (built with the same family and options)."""
        if not os.path.isdir(path):
            raise FileNotFoundError(f"path={path!r} is invalid: no such directory")
        try:
            restored = ckpt.restore_latest(path, self._persistent())
        except ValueError as err:
            raise ValueError(f"path={path!r} does not fit this MetaRL (family and options must match): {err}") from None
        if restored is None:
            raise FileNotFoundError(f"path={path!r} is invalid: it holds no checkpoint written by save()")
        _, saved, _ = restored
        self._state, self._key = saved["state"], saved["key"]
        self._adapted = saved["adapted"] if bool(saved["has_adapted"]) else None
        return self

    def __repr__(self) -> str:
        return (f"MetaRL(family={self.family.name}, learner={self.config.learner!r}, "
                f"iterations={self.iterations}, adapted={self._adapted is not None})")
