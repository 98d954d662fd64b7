"""Experiment plumbing shared by the ``python -m experiments.*`` entry points.

An experiment is a frozen config (:class:`MAMLExperimentConfig`), validated on
construction, that :func:`build` turns into library objects and :func:`run`
executes: meta-train (resumable), evaluate adaptation on held-out tasks
against a random initialisation and the exact optimum, print a table, and
write ``runs/<name>/<timestamp>/`` with ``config.json``, ``metrics.jsonl``,
``summary.json``, PNG figures and ``checkpoints/``. No algorithm lives here.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import os
import shlex
import signal
import sys
from typing import Any, Callable, ClassVar, Literal, NamedTuple

import jax
import numpy as np
from tqdm.auto import tqdm

from metarl_jax import cli, evaluation, plotting, resources
from metarl_jax.learners.pg import ESTIMATORS, PLAIN_LOSS_ESTIMATORS, PGConfig, PolicyGradientLearner
from metarl_jax.algorithms.base import MetaAlgorithm
from metarl_jax.algorithms.maml import MAMLConfig, auto_task_chunk, init_meta_params, maml
from metarl_jax.algorithms.multitask import multitask
from metarl_jax.algorithms.outer import ProMPConfig, TRPOConfig, promp, trpo
from metarl_jax.networks import make_policy_for
from metarl_jax.records import finite_json, json_line, write_json  # noqa: F401  (finite_json re-exported)
from metarl_jax.rollout import rollout
from metarl_jax.tasks import FAMILY_NAMES, make_family, sample_tasks
from metarl_jax.training import checkpoint as ckpt
from metarl_jax.training import distributed
from metarl_jax.training.interrupts import InterruptRequest, TrainingInterrupted, deferred_interrupts
from metarl_jax.training.loop import TrainConfig, make_optimizer
from metarl_jax.training.loop import run as training_run
from metarl_jax.validation import check_bool, check_choice, check_int, check_int_sequence, check_optional_int, check_optional_real, check_real, check_writable_dir, is_int, require


#: Inner step sizes by ``(task, learner)`` under the config's surrogate defaults (``normalize="step"``,
#: standardised advantages): what one inner step needs to change the behaviour of a small softmax
#: policy (logit changes of order 1) or a Gaussian one (navigation: 0.1, Finn et al. 2017). Any
#: other pair: 0.1. Measured in ``docs/benchmarks.md`` ("Inner step sizes").
DEFAULT_INNER_LR: dict[tuple[str, str], float] = {
    ("bandit", "pg"): 3.0,
    ("cartpole_target", "pg"): 1.0,
    ("cartpole_target", "ac"): 1.0,
    ("acrobot_target", "pg"): 1.0,
}


@dataclasses.dataclass(frozen=True)
class MAMLExperimentConfig:
    """A MAML meta-training run: task family, learner, adaptation and training settings."""

    task: str = "navigation"
    """task family (one of metarl_jax.tasks.FAMILY_NAMES)"""
    learner: str = "pg"
    """inner learner"""
    seed: int = 0
    num_iterations: int = 100
    meta_batch: int = 20
    """tasks per meta-iteration"""
    num_episodes: int = 20
    """episodes per inner step and for the outer loss"""
    horizon: int = 100
    gamma: float = 0.99
    baseline: str = "linear"
    standardize_advantages: bool = True
    normalize: str = "step"
    """surrogate normalisation: 'episode' (sum over time) or 'step' (mean over steps)"""
    inner_lr: float | None = None
    """inner SGD step size; None: the default for the task and learner (metarl_jax.experiment.DEFAULT_INNER_LR)"""
    inner_steps: int = 3
    """inner steps K the meta-objective differentiates through (the adaptation it trains for)"""
    learn_inner_lr: bool = False
    init_entropy_coef: float = 0.0
    """entropy bonus on the meta-learned initial policy (keeps a softmax from saturating; 0: plain MAML)"""
    estimator: str = "dice"
    outer_lr: float = 3e-3
    lr_schedule: str = "cosine"
    """outer step size over the run: 'cosine' (decays to 10% of outer_lr by num_iterations) or 'constant'"""
    lr_decay_iterations: int | None = None
    """iterations the cosine schedule decays over (None: num_iterations; a run extended on resume keeps its original schedule and continues at the final step size)"""
    max_grad_norm: float | None = 10.0
    hidden_sizes: tuple[int, ...] = (100, 100)
    tabular_policy: bool = False
    """softmax logit-table policy (one-hot observations only)"""
    init_log_std: float = -0.7
    """initial log standard deviation of Gaussian policies"""
    task_chunk: int | Literal["auto"] | None = "auto"
    """tasks differentiated at once (execution only, same results): 'auto' (chunks of about 4 on a CPU, one vmap on a GPU), an integer, or None (one vmap)"""
    gae_lambda: float = 0.95
    """actor-critic: GAE lambda"""
    value_coef: float = 0.5
    """actor-critic: weight of the value loss in the inner loss"""
    entropy_coef: float = 0.0
    """actor-critic: weight of the entropy bonus"""
    architecture: str = "separate"
    """actor-critic: 'separate' networks or a 'shared' torso"""
    behaviour: str = "boltzmann"
    """Q-learning: behaviour policy ('epsilon_greedy', 'boltzmann', 'uniform')"""
    epsilon: float = 0.1
    temperature: float = 1.0
    double_q: bool = False
    q_outer: str = "td"
    """Q-learning: outer objective ('td' loss of the adapted Q, or 'return' of its Boltzmann policy)"""
    maze_size: int = 5
    """maze: side length of the open grid"""
    num_arms: int = 2
    """bandit: number of arms"""
    eval_tasks: int = 100
    """held-out tasks for the adaptation curve"""
    eval_steps: int | None = None
    """inner steps of the adaptation curve (returns after k = 0..eval_steps); None: the trained inner_steps"""
    iterations_per_call: int = 5
    checkpoint_every: int = 25
    on_nonfinite: str = "stop"
    out_dir: str = "runs"
    run_dir: str | None = None
    """a run directory: resume the run it holds (its saved config; other flags only to extend --num-iterations), or start a new run in it when new or empty"""
    restart: bool = False
    """with run_dir: start its run over from iteration 0 when it holds no restorable checkpoint (old records are kept aside)"""
    name: str = "maml"
    algorithm: str = "maml"
    """outer algorithm: 'maml' (Adam on the meta-gradient through the adaptation), 'trpo' (the MAML paper's outer rule: a natural-gradient step in a KL trust region of size max_kl), 'promp' (ProMP: num_outer_steps Adam steps at outer_lr on a clipped surrogate per sampled batch; ProMP proper uses --estimator lvc), 'multitask' (the baseline: trains the start without adaptation)"""
    max_kl: float = 0.01
    """trpo: trust region, the mean KL between the old and new adapted policies"""
    cg_iters: int = 10
    """trpo: conjugate-gradient iterations"""
    cg_damping: float = 0.01
    """trpo: damping added to the KL Hessian"""
    clip_eps: float = 0.3
    """promp: clip range of the likelihood ratio"""
    kl_coef: float = 0.0005
    """promp: weight of the pre-adaptation KL penalty"""
    num_outer_steps: int = 5
    """promp: optimizer steps on each sampled meta-batch"""

    devices: int | None = None
    """devices the meta-batch is split over: None (every device, every host's) or the first n (execution only)"""
    coordinator_address: str | None = None
    """several hosts: process 0's 'host:port', the same on every host (else $JAX_COORDINATOR_ADDRESS)"""
    num_processes: int | None = None
    """several hosts: number of processes, one per host (else $JAX_NUM_PROCESSES)"""
    process_id: int | None = None
    """several hosts: this host's process, 0 .. num_processes - 1; process 0 writes the files (else $JAX_PROCESS_ID)"""

    #: The families ``task`` may name (an experiment with families of its own widens it).
    TASK_CHOICES: ClassVar[tuple[str, ...]] = FAMILY_NAMES
    #: The phases :meth:`report` adds after the adaptation curve (for the progress bar).
    REPORT_PHASES: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self):
        check_choice("algorithm", self.algorithm, tuple(ALGORITHMS))
        require(self.algorithm not in ("trpo", "promp") or self.learner != "q", "algorithm", self.algorithm,
                "TRPO and ProMP need a policy-gradient outer objective; with learner='q' use 'maml' or 'multitask'")
        check_choice("task", self.task, self.TASK_CHOICES)
        check_choice("learner", self.learner, tuple(LEARNERS))
        check_choice("estimator", self.estimator, ESTIMATORS)
        require(self.learner != "q" or self.estimator in PLAIN_LOSS_ESTIMATORS, "estimator", self.estimator,
                f"the Q-learning inner step supports {PLAIN_LOSS_ESTIMATORS} (it has no LVC form)")
        check_int("eval_tasks", self.eval_tasks, minimum=2)
        check_optional_int("eval_steps", self.eval_steps, minimum=1)
        check_int("num_episodes", self.num_episodes, minimum=1)
        check_int("num_arms", self.num_arms, minimum=2)
        check_int("maze_size", self.maze_size, minimum=2)
        require(self.task_chunk is None or self.task_chunk == "auto" or (is_int(self.task_chunk) and self.task_chunk >= 1),
                "task_chunk", self.task_chunk, "allowed values are 'auto', None or an integer >= 1")
        # A tuple (a list from JSON or Python is accepted), so the config stays hashable.
        object.__setattr__(self, "hidden_sizes", check_int_sequence("hidden_sizes", self.hidden_sizes))
        check_bool("tabular_policy", self.tabular_policy)
        check_bool("restart", self.restart)
        require(self.run_dir is None or (isinstance(self.run_dir, str) and self.run_dir != ""), "run_dir", self.run_dir,
                "must be None or a directory path")
        require(isinstance(self.out_dir, str) and self.out_dir != "", "out_dir", self.out_dir, "must be a directory path")
        check_real("init_log_std", self.init_log_std)
        check_optional_real("inner_lr", self.inner_lr, minimum=0.0, min_open=True)
        for name in ("gae_lambda", "value_coef", "entropy_coef", "epsilon", "temperature"):
            check_real(name, getattr(self, name))  # finite; the ranges are checked by the learner's own config
        distributed.resolve(self.coordinator_address, self.num_processes, self.process_id)
        # Building the sub-configs validates every remaining field with its own message.
        self.pg_config()
        if self.learner == "ac":
            self.ac_config()
        if self.learner == "q":
            self.q_config()
        self.maml_config()
        self.train_config()
        self.trpo_config()  # the options of every algorithm are checked, whichever runs
        self.promp_config()

    def pg_config(self) -> PGConfig:
        return PGConfig(num_inner_episodes=self.num_episodes, num_outer_episodes=self.num_episodes,
                        horizon=self.horizon, gamma=self.gamma, baseline=self.baseline,
                        standardize_advantages=self.standardize_advantages, normalize=self.normalize)

    def ac_config(self):
        from metarl_jax.learners.actor_critic import ACConfig

        return ACConfig(num_inner_episodes=self.num_episodes, num_outer_episodes=self.num_episodes,
                        horizon=self.horizon, gamma=self.gamma, gae_lambda=self.gae_lambda,
                        value_coef=self.value_coef, entropy_coef=self.entropy_coef,
                        standardize_advantages=self.standardize_advantages, architecture=self.architecture,
                        normalize=self.normalize)

    def q_config(self):
        from metarl_jax.learners.q_learning import QConfig

        return QConfig(num_inner_episodes=self.num_episodes, num_outer_episodes=self.num_episodes,
                       horizon=self.horizon, gamma=self.gamma, behaviour=self.behaviour, epsilon=self.epsilon,
                       temperature=self.temperature, double_q=self.double_q, outer=self.q_outer,
                       normalize=self.normalize)

    @property
    def resolved_inner_lr(self) -> float:
        """``inner_lr``, or the default for ``(task, learner)`` from :data:`DEFAULT_INNER_LR` (else 0.1)."""
        if self.inner_lr is not None:
            return float(self.inner_lr)
        return DEFAULT_INNER_LR.get((self.task, self.learner), 0.1)

    @property
    def evaluated_steps(self) -> int:
        """Inner steps of the adaptation curve: ``eval_steps``, by default the trained ``inner_steps``."""
        return int(self.inner_steps if self.eval_steps is None else self.eval_steps)

    def resolved_task_chunk(self) -> int | None:
        """``task_chunk`` with ``"auto"`` resolved for ``meta_batch`` on JAX's default backend."""
        if self.task_chunk == "auto":
            return auto_task_chunk(self.meta_batch)
        return self.task_chunk

    def make_family(self, split: str = "train"):
        """The task family of ``split``: ``"train"`` (meta-training) or ``"test"`` (the held-out tasks of
        the evaluation). Here both are ``make_family(task, ...)``, held-out tasks being new draws; a
        config whose tasks are periods of time (finance) returns disjoint periods."""
        check_choice("split", split, ("train", "test"))
        return make_family(self.task, **family_kwargs(self))

    def report(self, context: "ReportContext") -> dict:
        """Evaluation beyond the adaptation curve, run after it (files in ``context.run_dir``); returns
        entries for ``summary.json`` (a ``"report_text"`` entry is printed after the adaptation table
        instead). None here: an experiment adds its own, naming its phases in :data:`REPORT_PHASES`."""
        del context
        return {}

    def maml_config(self) -> MAMLConfig:
        return MAMLConfig(inner_steps=self.inner_steps, inner_lr=self.resolved_inner_lr, learn_inner_lr=self.learn_inner_lr,
                          estimator=self.estimator, task_chunk=self.resolved_task_chunk(),
                          init_entropy_coef=self.init_entropy_coef)

    def trpo_config(self) -> TRPOConfig:
        return TRPOConfig(max_kl=self.max_kl, cg_iters=self.cg_iters, cg_damping=self.cg_damping)

    def promp_config(self) -> ProMPConfig:
        return ProMPConfig(clip_eps=self.clip_eps, kl_coef=self.kl_coef, num_outer_steps=self.num_outer_steps,
                           outer_lr=self.outer_lr)

    def train_config(self) -> TrainConfig:
        return TrainConfig(num_iterations=self.num_iterations, meta_batch=self.meta_batch, outer_lr=self.outer_lr,
                           seed=self.seed, iterations_per_call=self.iterations_per_call,
                           checkpoint_every=self.checkpoint_every, on_nonfinite=self.on_nonfinite,
                           max_grad_norm=self.max_grad_norm, lr_schedule=self.lr_schedule, devices=self.devices,
                           decay_iterations=self.lr_decay_iterations)


def _build_pg(config: MAMLExperimentConfig, family):
    kwargs = {}
    space = family.action_space(family.default_params)
    if hasattr(space, "shape") and len(space.shape) == 1 and not config.tabular_policy:
        kwargs["init_log_std"] = config.init_log_std
    policy = make_policy_for(family, hidden_sizes=config.hidden_sizes, tabular=config.tabular_policy, **kwargs)
    return PolicyGradientLearner(family, policy, config.pg_config())


def _build_ac(config: MAMLExperimentConfig, family):
    from metarl_jax.learners.actor_critic import ActorCriticLearner

    kwargs = {}
    space = family.action_space(family.default_params)
    if hasattr(space, "shape") and len(space.shape) == 1:
        kwargs["init_log_std"] = config.init_log_std
    policy = make_policy_for(family, hidden_sizes=config.hidden_sizes, **kwargs)
    return ActorCriticLearner(family, policy, config.ac_config(), critic_hidden_sizes=config.hidden_sizes)


def _build_q(config: MAMLExperimentConfig, family):
    from metarl_jax.learners.q_learning import QLearner, q_network_for

    network = q_network_for(family, hidden_sizes=config.hidden_sizes, tabular=config.tabular_policy)
    return QLearner(family, network, config.q_config())


#: Inner learners by name: ``builder(config, family) -> learner``.
LEARNERS: dict[str, Callable[[MAMLExperimentConfig, Any], Any]] = {"pg": _build_pg, "ac": _build_ac, "q": _build_q}


def _maml(config: MAMLExperimentConfig, learner, outer_tx, sample, skip_nonfinite: bool) -> MetaAlgorithm:
    return maml(learner, config.maml_config(), outer_tx, sample, skip_nonfinite=skip_nonfinite)


def _trpo(config: MAMLExperimentConfig, learner, outer_tx, sample, skip_nonfinite: bool) -> MetaAlgorithm:
    del outer_tx, skip_nonfinite  # TRPO's step is set by max_kl; its line search never takes a non-finite step
    return trpo(learner, config.maml_config(), config.trpo_config(), sample)


def _promp(config: MAMLExperimentConfig, learner, outer_tx, sample, skip_nonfinite: bool) -> MetaAlgorithm:
    return promp(learner, config.maml_config(), config.promp_config(), sample, outer_tx, skip_nonfinite)


def _multitask(config: MAMLExperimentConfig, learner, outer_tx, sample, skip_nonfinite: bool) -> MetaAlgorithm:
    return multitask(learner, config.maml_config(), outer_tx, sample, skip_nonfinite)


#: Outer algorithms by name: ``builder(config, learner, outer_tx, sample_tasks, skip_nonfinite) -> MetaAlgorithm``.
ALGORITHMS: dict[str, Callable[..., MetaAlgorithm]] = {"maml": _maml, "trpo": _trpo, "promp": _promp,
                                                        "multitask": _multitask}


#: Config fields that are arguments of a family's constructor: ``{field: (family name, argument)}``.
FAMILY_FIELDS = {"num_arms": ("bandit", "num_arms"), "maze_size": ("maze", "size")}


def family_kwargs(config: MAMLExperimentConfig) -> dict:
    """Constructor arguments of ``config.task``'s family that the config holds: ``horizon`` and its
    :data:`FAMILY_FIELDS` (``num_arms`` for a bandit, ``maze_size`` as ``size`` for a maze)."""
    own = {arg: getattr(config, field) for field, (owner, arg) in FAMILY_FIELDS.items() if owner == config.task}
    return {"horizon": config.horizon, **own}


def build(config: MAMLExperimentConfig):
    """``(family, learner, maml_config, train_config)`` for an experiment config."""
    family = config.make_family("train")
    learner = LEARNERS[config.learner](config, family)
    return family, learner, config.maml_config(), config.train_config()


#: Fields that do not change the compiled meta-iteration (where the run goes, how it is evaluated).
_RUN_ONLY_FIELDS = ("seed", "out_dir", "run_dir", "restart", "name", "eval_tasks", "eval_steps", "checkpoint_every")


@functools.lru_cache(maxsize=8)
def _cached_algorithm(config: MAMLExperimentConfig):
    family, learner, _, train_config = build(config)
    sample = lambda key: sample_tasks(family, key, train_config.meta_batch)
    return ALGORITHMS[config.algorithm](config, learner, make_optimizer(train_config), sample,
                                        train_config.on_nonfinite == "skip")


def build_algorithm(config: MAMLExperimentConfig) -> MetaAlgorithm:
    """The :class:`~metarl_jax.algorithms.base.MetaAlgorithm` an experiment config trains.

    ``config.algorithm`` picks the outer rule (:data:`ALGORITHMS`); tasks are drawn from the
    config's family, ``meta_batch`` per iteration; the outer optimizer is
    :func:`metarl_jax.training.loop.make_optimizer`'s. Configs that differ only in where the run
    goes, its seed or its evaluation return the same object, so their runs share one compilation.
    """
    defaults = MAMLExperimentConfig()
    key = dataclasses.replace(config, **{f: getattr(defaults, f) for f in _RUN_ONLY_FIELDS})
    return _cached_algorithm(key)


def new_timestamped_dir(parent: str) -> str:
    """Create and return a new directory ``parent/<YYYYmmdd-HHMMSS>`` (``-2``, ``-3``... when one of
    that name exists): every call gets its own, so nothing written earlier is overwritten."""
    base = os.path.join(parent, datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    path, n = base, 1
    while True:  # never share a directory with one made in the same second
        try:
            os.makedirs(path)
            return path
        except FileExistsError:
            n += 1
            path = f"{base}-{n}"


def new_run_dir(config: MAMLExperimentConfig) -> str:
    """``config.run_dir``, or a new directory ``out_dir/name/<timestamp>`` (created)."""
    if config.run_dir is not None:
        return config.run_dir
    return new_timestamped_dir(os.path.join(config.out_dir, config.name))


class RunRefused(ValueError):
    """A run that must not start, refused before any work and before any directory is made: a
    config that conflicts with the run directory it names, a run directory that cannot be resumed,
    an output directory that cannot be written, a config far beyond the machine's memory.
    The message is one line, ``field=value is invalid: ...``."""


#: Fields a resume may change: where and how the run executes, not what it computes (results equal
#: up to float rounding). Any other field given with ``run_dir`` must equal the saved config's.
EXECUTION_FIELDS = ("run_dir", "restart", "devices", "coordinator_address", "num_processes", "process_id",
                    "task_chunk", "iterations_per_call", "checkpoint_every")

#: A run directory's record of its starts, resumes and extensions: one JSON line per invocation.
RUN_HISTORY = "history.jsonl"


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """What :func:`run` will do: train ``config`` (the effective config) in ``run_dir``.

    ``new``: a new run (``run_dir`` is made and ``config.json`` written once); otherwise a resume
    from the checkpoint at ``from_iteration`` (``None``: none, a restart). ``event``: the line
    appended to the run's ``history.jsonl``.
    """

    config: MAMLExperimentConfig
    run_dir: str | None
    new: bool
    from_iteration: int | None
    event: dict


def read_run(run_dir: str) -> tuple[dict, list[dict]] | None:
    """``(saved config fields, history lines)`` of the run in ``run_dir``; ``None`` if it holds no ``config.json``."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise RunRefused(f"run_dir={run_dir!r} is invalid: its config.json cannot be read ({err})") from None
    history_path = os.path.join(run_dir, RUN_HISTORY)
    history = []
    if os.path.isfile(history_path):
        with open(history_path) as f:
            history = [json.loads(line) for line in f if line.strip()]
    return saved, history


def saved_config(config_cls, run_dir: str, saved: dict, history: list[dict]) -> MAMLExperimentConfig:
    """The config the run in ``run_dir`` trains: ``config.json`` with the iteration count (and
    schedule) of its latest recorded extension, as ``config_cls``."""
    fields = {f.name for f in dataclasses.fields(config_cls) if f.init}
    unknown = sorted(set(saved) - fields - {"nonfinite_values"})
    if unknown:
        raise RunRefused(f"run_dir={run_dir!r} is invalid: its config.json has fields this version does not know: "
                         f"{', '.join(unknown)}")
    values = {k: v for k, v in saved.items() if k in fields}
    extension = [h for h in history if "num_iterations" in h and "lr_decay_iterations" in h]
    if extension:
        values.update(num_iterations=extension[-1]["num_iterations"],
                      lr_decay_iterations=extension[-1]["lr_decay_iterations"])
    try:
        return config_cls(**values)
    except ValueError as err:
        raise RunRefused(f"run_dir={run_dir!r} is invalid: its config.json is not a valid config ({err})") from None


def _show(value) -> str:
    return repr(tuple(value) if isinstance(value, list) else value)


def plan_run(config: MAMLExperimentConfig, command: str | None = None) -> RunPlan:
    """Decide, before any work, what ``run(config)`` does; :class:`RunRefused` when it must not.

    - ``run_dir`` is ``None``: a new run in a new ``out_dir/name/<timestamp>``.
    - ``run_dir`` new or an empty directory: a new run there.
    - ``run_dir`` holds a run (``config.json``): resume exactly that run. Every field of ``config``
      outside :data:`EXECUTION_FIELDS` must equal the saved config's, except ``num_iterations``:
      the saved count, or a larger one, which extends the run (recorded in ``history.jsonl``; the
      cosine schedule keeps its original length, so nothing the run computed changes). A run with
      no checkpoint is refused unless ``restart``, which then starts it over from iteration 0;
      ``restart`` with a checkpoint is refused (resume instead).
    - ``run_dir`` holds files but no ``config.json``: refused (not a run directory).
    """
    now = datetime.datetime.now().isoformat(timespec="seconds")
    base_event = {"time": now, "command": command} if command else {"time": now}
    run_dir = config.run_dir
    if run_dir is None or not os.path.exists(run_dir) or (os.path.isdir(run_dir) and not os.listdir(run_dir)):
        _check_output_dir(config.out_dir if run_dir is None else run_dir, "out_dir" if run_dir is None else "run_dir")
        if config.restart:
            raise RunRefused(f"restart=True is invalid: run_dir={run_dir!r} holds no run to start over")
        return RunPlan(config, run_dir, True, None,
                       {"event": "start", **base_event, "num_iterations": config.num_iterations})
    if not os.path.isdir(run_dir):
        raise RunRefused(f"run_dir={run_dir!r} is invalid: it is not a directory")
    found = read_run(run_dir)
    if found is None:
        raise RunRefused(f"run_dir={run_dir!r} is invalid: it holds files but no config.json, so it is not a run "
                         "directory; give a new or empty directory to start a run there")
    _check_output_dir(run_dir, "run_dir")
    saved = saved_config(type(config), run_dir, *found)
    first = found[0]
    differences = [f"{f.name}={_show(getattr(config, f.name))} (saved {_show(getattr(saved, f.name))})"
                   for f in dataclasses.fields(config)
                   if f.init and f.name not in EXECUTION_FIELDS + ("num_iterations",)
                   and getattr(config, f.name) != getattr(saved, f.name)
                   and not (f.name == "lr_decay_iterations" and config.lr_decay_iterations is None)]
    if differences:
        raise RunRefused(f"run_dir={run_dir!r} is invalid: given with flags that differ from the run's saved config: "
                         f"{'; '.join(differences)}. Resume with --run-dir alone (the iteration count may grow), "
                         "or start a new run without --run-dir")
    original = int(first["num_iterations"])
    target = int(saved.num_iterations)
    wanted = int(config.num_iterations)
    if wanted not in (original, target) and wanted < target:
        raise RunRefused(f"num_iterations={wanted} is invalid: the run in {run_dir!r} trains to {target} iterations; "
                         "a resume may extend it (a larger number), never shorten it")
    effective = dataclasses.replace(saved, **{f: getattr(config, f) for f in EXECUTION_FIELDS})
    event = {**base_event}
    if wanted > target:
        decay = saved.lr_decay_iterations if saved.lr_decay_iterations is not None else original
        effective = dataclasses.replace(effective, num_iterations=wanted, lr_decay_iterations=decay)
        event.update(event="extend", num_iterations_before=target, num_iterations=wanted, lr_decay_iterations=decay)
    changed = {f: [getattr(saved, f), getattr(config, f)] for f in EXECUTION_FIELDS
               if f not in ("run_dir", "restart") and getattr(saved, f) != getattr(config, f)}
    if changed:
        event["execution_changes"] = changed
    steps = [step for step, _ in ckpt.list_checkpoints(os.path.join(run_dir, "checkpoints"))]
    if not steps:
        if not config.restart:
            raise RunRefused(f"run_dir={run_dir!r} is invalid: it holds no checkpoint to resume from; pass --restart "
                             "(restart=True) to start this run over from iteration 0 (recorded metrics are kept aside)")
        event.setdefault("event", "restart")
        return RunPlan(effective, run_dir, False, None, event)
    if config.restart:
        raise RunRefused(f"restart=True is invalid: run_dir={run_dir!r} has a checkpoint at iteration {steps[-1]}; "
                         "resume it with --run-dir alone")
    event.setdefault("event", "resume")
    event["from_iteration"] = steps[-1]
    return RunPlan(effective, run_dir, False, steps[-1], event)


def _check_output_dir(path: str, field: str) -> None:
    """:class:`RunRefused` unless ``path`` is, or can be made as, a writable directory."""
    try:
        check_writable_dir(field, path)
    except ValueError as err:
        raise RunRefused(str(err)) from None


def _append_history(run_dir: str, event: dict) -> None:
    with open(os.path.join(run_dir, RUN_HISTORY), "a") as f:
        f.write(json_line(event))
        f.flush()
        os.fsync(f.fileno())


def format_table(rows: list[tuple[str, ...]]) -> str:
    """Left-aligned columns, a rule under the header row."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


class ReportContext(NamedTuple):
    """What :meth:`MAMLExperimentConfig.report` may use: the trained run and where to write."""

    run_dir: str
    learner: Any
    maml_config: MAMLConfig
    train_config: TrainConfig
    state: Any
    interrupt: InterruptRequest | None
    progress: bool


def evaluate(config: MAMLExperimentConfig, family, learner, maml_config, meta_params) -> dict:
    """Adaptation curves on ``eval_tasks`` held-out tasks of ``family`` (``config.make_family("test")``
    in :func:`run`): meta-learned vs random init vs optimum."""
    key = jax.random.PRNGKey(config.seed + 1_000_003)
    key_tasks, key_eval, key_random = jax.random.split(key, 3)
    tasks = sample_tasks(family, key_tasks, config.eval_tasks)
    random_params = init_meta_params(key_random, learner, maml_config)
    steps = config.evaluated_steps
    curve_fn = jax.jit(lambda mp: evaluation.adaptation_returns(learner, maml_config, mp, tasks, key_eval, steps))
    curves = {
        "meta-learned": evaluation.summarize_curve(np.asarray(curve_fn(meta_params))),
        "random init": evaluation.summarize_curve(np.asarray(curve_fn(random_params))),
    }
    optimum = evaluation.optimal_returns(family, tasks, config.horizon)
    result = {"curves": curves, "eval_tasks": config.eval_tasks, "eval_steps": steps,
              "trained_inner_steps": int(maml_config.inner_steps),
              "metric": "mean undiscounted episode return after k inner steps, held-out tasks"}
    if optimum is not None:
        mean, half = evaluation.mean_and_ci95(np.asarray(optimum))
        result["optimum"] = {"mean": float(mean), "ci95": float(half)}
    return result


def result_table(result: dict) -> str:
    """The adaptation table: one row per initialisation, one column per k = 0..K, the trained K marked."""
    trained = result.get("trained_inner_steps")
    steps = len(next(iter(result["curves"].values()))["mean"])
    def header(k):
        if k == 0:
            return "k=0 (before)"
        return f"k={k} (trained K)" if k == trained else f"k={k}"
    rows = [("policy",) + tuple(header(k) for k in range(steps))]
    fmt = lambda s, k: f"{s['mean'][k]:.2f} ± {s['ci95'][k]:.2f}"
    for name, summary in result["curves"].items():
        rows.append((name,) + tuple(fmt(summary, k) for k in range(steps)))
    if "optimum" in result:
        opt = f"{result['optimum']['mean']:.2f} ± {result['optimum']['ci95']:.2f}"
        rows.append(("exact optimum",) + (opt,) * steps)
    title = (f"{result.get('metric', 'mean episode return after k inner steps')} "
             f"({result.get('eval_tasks', '?')} tasks, mean ± 95% CI); meta-trained with K={trained} inner steps")
    return title + "\n" + format_table(rows)


def navigation_paths(family, learner, maml_config, meta_params, seed: int, num_tasks: int = 4,
                     num_steps: int | None = None):
    """Goals and mean-action paths before and after ``num_steps`` (default: the trained K) inner steps."""
    key_tasks, key_adapt = jax.random.split(jax.random.PRNGKey(seed + 2_000_003))
    tasks = sample_tasks(family, key_tasks, num_tasks)
    steps = int(maml_config.inner_steps if num_steps is None else num_steps)
    phis = evaluation.adapted_params(learner, maml_config, meta_params, tasks, key_adapt, steps)
    mode = evaluation.ModePolicy(getattr(learner, "model", None) or learner.policy)
    path = lambda params, task: rollout(jax.random.PRNGKey(0), family, mode, params, task, 1,
                                        learner.config.horizon).next_obs[0]
    pre = jax.vmap(path, in_axes=(None, 0))(meta_params["policy"], tasks)
    post = jax.vmap(path)(phis, tasks)
    return np.asarray(tasks.goal), np.asarray(pre), np.asarray(post)


def _phases(progress: bool, total: int):
    """A progress bar over the phases after training (evaluation, plots)."""
    return tqdm(total=total, desc="evaluation and plots", disable=not progress, dynamic_ncols=True,
                bar_format="{desc}: {n}/{total} phases [{elapsed}]{postfix}")


def run(config: MAMLExperimentConfig, progress: bool = True, *, interrupt: InterruptRequest | None = None,
        command: str | None = None) -> dict:
    """Meta-train, evaluate, print the table and write every artefact. Returns the summary.

    First :func:`plan_run` decides, before any work, whether this is a new run or the resume of
    ``config.run_dir`` (:class:`RunRefused` when it must not start; nothing is created then);
    :mod:`metarl_jax.resources` checks the config against the machine's memory. A new run writes
    ``config.json`` once; every start, resume and extension appends a line to ``history.jsonl``
    (``command``: the command line, recorded there). Each checkpoint's metadata holds the config.
    Training stops cleanly at SIGINT / SIGTERM (``interrupt``: a request the caller listens with;
    :class:`~metarl_jax.training.interrupts.TrainingInterrupted` is raised after a checkpoint),
    also between the phases after training. The summary counts ``skipped_updates`` (non-finite
    meta-gradients skipped under ``on_nonfinite="skip"``).

    Several hosts (``coordinator_address``, ``num_processes``, ``process_id``, or their
    environment variables; :mod:`metarl_jax.training.distributed`, which must start before
    the library is imported: ``python -m experiments.*`` does so): every process trains;
    process 0 alone evaluates and writes files, the others return ``{"iterations", "process_index"}``.
    """
    plan = plan_run(config, command)
    config = plan.config
    distributed.initialize(config.coordinator_address, config.num_processes, config.process_id)
    try:  # a family and learner that do not fit together (Q-learning on continuous actions ...) are refused here
        family, learner, maml_config, train_config = build(config)
    except ValueError as err:
        raise RunRefused(f"learner={config.learner!r} is invalid with task={config.task!r}: {err}") from None
    try:  # a config far beyond the machine's memory fails here, in one line, not in XLA minutes later
        resources.check_experiment_memory(config)
    except ValueError as err:
        raise RunRefused(str(err)) from None
    algorithm = build_algorithm(config)
    metadata = {"algorithm": config.algorithm, "config": dataclasses.asdict(config)}
    if jax.process_index() != 0:
        state, _ = training_run(algorithm, train_config, None, progress=False, interrupt=interrupt, metadata=metadata)
        return {"iterations": int(state.step), "process_index": jax.process_index()}
    run_dir = new_run_dir(config)
    if plan.new:
        os.makedirs(run_dir, exist_ok=True)
        write_json(os.path.join(run_dir, "config.json"), dataclasses.asdict(config))
    _append_history(run_dir, plan.event)
    resume = (f"resuming from iteration {plan.from_iteration}" if plan.from_iteration != config.num_iterations
              else f"complete at {plan.from_iteration} iterations: evaluating again")
    what = {"start": "new run", "resume": resume,
            "extend": f"extending to {config.num_iterations} iterations", "restart": "starting over"}[plan.event["event"]]
    print(f"run directory: {run_dir}  ({what}; jax {jax.__version__} on {jax.devices()[0].platform})", flush=True)
    state, history = training_run(algorithm, train_config, run_dir, progress=progress, interrupt=interrupt,
                                  restart=config.restart, desc=f"meta-iterations ({config.algorithm})",
                                  metadata=metadata)
    iterations = int(state.step)
    navigation = config.task == "navigation" and config.learner in ("pg", "ac")
    bar = _phases(progress, 4 + navigation + len(config.REPORT_PHASES))
    started = []

    def phase(name: str | None) -> None:
        """Mark the running phase done and start ``name`` (``None``: the end)."""
        if interrupt is not None and interrupt.requested:  # stop between phases; training is checkpointed
            bar.close()
            raise TrainingInterrupted(interrupt.signum, iterations,
                                      ckpt.latest_checkpoint(os.path.join(run_dir, "checkpoints")), state, history)
        if started:
            bar.update(1)
        started.append(name)
        if name is not None:
            bar.set_postfix_str(name, refresh=True)

    phase(f"adaptation curves on {config.eval_tasks} held-out tasks, k = 0..{config.evaluated_steps}")
    result = evaluate(config, config.make_family("test"), learner, maml_config, state.meta_params)
    result["run_dir"] = run_dir
    result["iterations"] = iterations
    result["skipped_updates"] = sum(1 for h in history if h.get("grad_finite") is False)
    result["seconds_per_iteration_median"] = float(np.median([h["seconds"] for h in history[1:] if "seconds" in h] or [0.0]))
    phase("learning curve")
    plotting.plot_learning_curve(history, os.path.join(run_dir, "learning_curve.png"),
                                 title=f"{config.name}: {config.task}, {config.learner}, {config.estimator}")
    phase("adaptation curve")
    optimum = result.get("optimum", {}).get("mean")
    plotting.plot_adaptation_curves(result["curves"], os.path.join(run_dir, "adaptation_curve.png"), optimum,
                                    trained_steps=maml_config.inner_steps)
    if navigation:
        phase("navigation paths")
        goals, pre, post = navigation_paths(family, learner, maml_config, state.meta_params, config.seed)
        plotting.plot_navigation_paths(goals, pre, post, os.path.join(run_dir, "paths.png"), family.goal_range,
                                       num_steps=maml_config.inner_steps)
    if config.REPORT_PHASES:
        phase(", ".join(config.REPORT_PHASES))
        extra = config.report(ReportContext(run_dir, learner, maml_config, train_config, state, interrupt, progress))
        report_text = extra.pop("report_text", None)
        result.update(extra)
        bar.update(len(config.REPORT_PHASES) - 1)
    phase("summary")
    write_json(os.path.join(run_dir, "summary.json"), result)
    phase(None)
    bar.close()
    print(result_table(result))
    if config.REPORT_PHASES and report_text:
        print(report_text)
    if result["skipped_updates"]:
        print(f"warning: {result['skipped_updates']} of {len(history)} meta-updates were skipped (non-finite "
              "meta-gradient, on_nonfinite='skip'); see 'grad_finite' and 'nonfinite' in metrics.jsonl", file=sys.stderr)
    print(f"wrote {run_dir}/{{config.json, history.jsonl, metrics.jsonl, timings.jsonl, summary.json, *.png, checkpoints/}}")
    return result


def parse_cli(config_cls, argv=None, description: str | None = None, defaults: dict | None = None):
    """A config dataclass from the command line (:func:`metarl_jax.cli.parse_dataclass`), validated.

    A rejected value, or a command line that cannot be parsed, prints one line, ``error: ...`` (e.g.
    ``error: <field>=<value> is invalid: <allowed>``), on stderr and exits with status 2, without a
    traceback. ``defaults`` replace the class defaults (e.g. a saved ``config.json``). The config's
    output directory (``run_dir`` when set, else ``out_dir``, where the config has one) is checked
    before anything runs (:func:`metarl_jax.validation.check_writable_dir`).
    """
    config = cli.parse_dataclass(config_cls, argv, description, defaults)
    field = "run_dir" if getattr(config, "run_dir", None) is not None else "out_dir"
    if getattr(config, field, None) is not None:
        try:
            check_writable_dir(field, getattr(config, field))
        except ValueError as err:
            cli.fail(str(err))
    return config


#: Exit statuses of the experiment command lines (besides 0, and 1 for an unexpected error with its traceback).
EXIT_REFUSED = 2
EXIT_SKIPPED_UPDATES = 3


def invocation(argv0: str | None = None) -> str:
    """How the running command line was invoked, to repeat it: ``python -m experiments.maml_navigation``
    for a module under the current directory, else the program's name (a console script)."""
    argv0 = sys.argv[0] if argv0 is None else argv0
    if argv0.endswith(".py"):
        path = os.path.abspath(argv0)
        rel = os.path.relpath(path, os.getcwd())
        if not rel.startswith(".."):
            return f"python -m {rel[:-3].replace(os.sep, '.')}"
        return f"python {path}"
    return os.path.basename(argv0) or "python -m experiments.maml"


def _run_dir_in(argv: list[str]) -> str | None:
    """The value of ``--run-dir`` (or ``--run_dir``) in ``argv``, if given."""
    for i, arg in enumerate(argv):
        for flag in ("--run-dir", "--run_dir"):
            if arg == flag and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(flag + "="):
                return arg[len(flag) + 1:]
    return None


def _resume_defaults(config_cls, argv: list[str]) -> dict | None:
    """The saved config of the run ``--run-dir`` names (flags not given take its values), if it holds one."""
    run_dir = _run_dir_in(argv)
    if run_dir is None or not os.path.isdir(run_dir):
        return None
    try:
        found = read_run(run_dir)
        if found is None:
            return None
        return {f.name: getattr(c, f.name) for c in [saved_config(config_cls, run_dir, *found)]
                for f in dataclasses.fields(c) if f.init}
    except RunRefused as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_REFUSED) from None


def cli_main(config_cls, argv=None, description: str | None = None) -> int:
    """Parse a config dataclass from the command line (:func:`parse_cli`), run it; the exit status.

    ``--run-dir DIR`` of a saved run resumes it: the run's saved config supplies every flag not
    given (:func:`plan_run` refuses flags that differ from it, except a larger ``--num-iterations``).
    Exit statuses: 0; 2 (:data:`EXIT_REFUSED`, as ``SystemExit(2)``) for a rejected value or a refused
    start, one line ``error: <field>=<value> is invalid: <allowed>`` and no traceback, nothing created;
    3 (:data:`EXIT_SKIPPED_UPDATES`) when the run finished but skipped non-finite updates;
    130 / 143 after SIGINT / SIGTERM (a checkpoint is written and the resume command printed);
    1 with a traceback for an unexpected internal error.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    with deferred_interrupts() as request:
        config = parse_cli(config_cls, argv, description, defaults=_resume_defaults(config_cls, argv))
        try:
            result = run(config, interrupt=request, command=" ".join([invocation(), *argv]))
        except RunRefused as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(EXIT_REFUSED) from None
        except TrainingInterrupted as stop:
            run_dir = os.path.dirname(os.path.dirname(stop.checkpoint)) if stop.checkpoint else config.run_dir
            print(f"{signal.Signals(stop.signum).name}: stopped after iteration {stop.iteration}"
                  + (f"; checkpoint {stop.checkpoint}" if stop.checkpoint else "")
                  + (f"\nresume with: {invocation()} --run-dir {shlex.quote(run_dir)}" if run_dir else ""),
                  file=sys.stderr, flush=True)
            return stop.exit_status
        except KeyboardInterrupt:  # a second Ctrl-C: stop at once (checkpoints on disk are crash-safe)
            print("interrupted (a second Ctrl-C): stopped at once; the latest checkpoint on disk is intact",
                  file=sys.stderr, flush=True)
            return 130
    if isinstance(result, dict) and result.get("skipped_updates"):
        return EXIT_SKIPPED_UPDATES
    return 0
