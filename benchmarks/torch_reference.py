"""PyTorch reference: second-order MAML with a REINFORCE inner step on 2D navigation.

This is the comparison baseline for the speed benchmark. It is written the way a
careful PyTorch user writes MAML-RL (pytorch-maml-rl, learn2learn): tasks in a
Python loop, the episodes of one task batched as tensors, the environment a
batched tensor computation stepped in a Python loop over time,
``torch.autograd.grad(create_graph=True)`` for the inner step and a hand-written
functional MLP evaluated at the adapted parameters.

What one meta-iteration computes (Finn et al. 2017, section 5.3 set-up):

* Task: goal ``g ~ U[-0.5, 0.5]^2``. Episode: start at ``s_0 = (0, 0)``; for
  ``t = 0..H-1`` take ``a_t ~ N(mu_theta(s_t), diag(sigma^2))``, move
  ``s_{t+1} = s_t + clip(a_t, -0.1, 0.1)``, reward ``r_t = -||s_{t+1} - g||_2``.
  The observation is the position; no termination; ``H = 100``.
* Policy: ``mu_theta`` = MLP 2 -> 100 -> 100 -> 2 with ReLU, state-independent
  learned ``log sigma`` (2 numbers, initialised to 0). Actions are sampled as
  ``a = mu + sigma * eps`` with ``eps ~ N(0, I)`` drawn up front and no gradient;
  the unclipped action is stored and scored, the environment clips it.
* Advantages: returns-to-go ``G_t = sum_{k>=t} 0.99^(k-t) r_k``; rllab's linear
  feature baseline ``b = X w`` with per-step features
  ``[s, s^2, t/100, (t/100)^2, (t/100)^3, 1]`` and
  ``w = (X^T X + 1e-5 I)^{-1} X^T G`` fitted on the task's batch;
  ``A = G - b`` standardised to mean 0 and (population) std 1 over the batch.
* Surrogate: ``L(params, batch) = -(1/E) sum_e sum_t log pi_params(a_et|s_et) A_et``.
* Per task ``i``: inner batch of ``E = 20`` episodes with ``theta`` (no grad);
  ``phi_i = theta - 0.1 * dL(theta, inner_i)/dtheta`` (kept in the graph for
  second order, a constant for first order); outer batch of 20 episodes with
  ``phi_i`` (no grad); outer loss ``L(phi_i, outer_i)``.
* Meta-gradient ``(1/N) sum_i d L(phi_i(theta), outer_i) / d theta`` with the
  sampled data held fixed, then one Adam step (lr 1e-3) on ``theta``. All
  parameters, ``log sigma`` included, are adapted and meta-learned.

Command line (one JSON object per line)::

    python -m benchmarks.torch_reference --meta-batch 20 --order 2 --iters 5 --warmup 1

torch is an optional dependency (the ``compare`` extra): it is imported inside the
functions, so importing this module works without it and only running it fails,
with a message that says how to install it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import sys
import time
from typing import Any, NamedTuple

from benchmarks.benchmarking import cpu_model  # no jax import: torch-only use stays possible
from metarl_jax.cli import OneLineArgumentParser  # stdlib and numpy only
from metarl_jax.validation import check_int, check_optional_int

IMPL_NAME = "torch-task-loop"
PARAM_NAMES = ("w0", "b0", "w1", "b1", "w2", "b2", "log_std")


def _torch():
    """Import torch, or fail with a message that says how to get it."""
    try:
        import torch
    except ImportError as err:  # pragma: no cover - exercised only without torch
        raise ImportError(
            "benchmarks.torch_reference needs PyTorch, an optional dependency: "
            "install it with `pip install -e .[compare]` (or `pip install torch`)."
        ) from err
    return torch


@dataclasses.dataclass(frozen=True)
class Config:
    """Static configuration of the reference MAML-RL run (defaults = the benchmark)."""

    episodes: int = 20
    horizon: int = 100
    hidden: tuple[int, ...] = (100, 100)
    gamma: float = 0.99
    inner_lr: float = 0.1
    outer_lr: float = 1e-3
    max_speed: float = 0.1
    goal_range: float = 0.5
    baseline_reg: float = 1e-5
    init_log_std: float = 0.0

    def __post_init__(self):
        checks = [
            ("episodes", self.episodes, isinstance(self.episodes, int) and self.episodes >= 1, "an integer >= 1"),
            ("horizon", self.horizon, isinstance(self.horizon, int) and self.horizon >= 1, "an integer >= 1"),
            ("hidden", self.hidden, len(self.hidden) >= 1 and all(int(h) >= 1 for h in self.hidden),
             "a non-empty tuple of integers >= 1"),
            ("gamma", self.gamma, 0.0 <= self.gamma <= 1.0, "[0, 1]"),
            ("inner_lr", self.inner_lr, self.inner_lr >= 0.0, ">= 0"),
            ("outer_lr", self.outer_lr, self.outer_lr > 0.0, "> 0"),
            ("max_speed", self.max_speed, self.max_speed > 0.0, "> 0"),
            ("goal_range", self.goal_range, self.goal_range > 0.0, "> 0"),
            ("baseline_reg", self.baseline_reg, self.baseline_reg >= 0.0, ">= 0"),
        ]
        for name, value, ok, allowed in checks:
            if not ok:
                raise ValueError(f"Config.{name}={value!r} is invalid: must be {allowed}")


class Batch(NamedTuple):
    """Episodes of one task, shapes ``[episodes, horizon, ...]``.

    ``obs`` is the position before each move, ``actions`` the unclipped sampled
    actions, ``rewards`` the rewards after each move and ``advantages`` the
    standardised ``G - baseline`` (all constants: no autograd history).
    """

    obs: Any
    actions: Any
    rewards: Any
    advantages: Any


class MetaGradient(NamedTuple):
    """Result of :func:`meta_gradient`.

    ``loss`` is the mean outer surrogate over the tasks, ``grads`` maps parameter
    names to the meta-gradient, and the batches are the data that were sampled
    (so the loss can be re-evaluated as a function of ``theta`` with them fixed).
    """

    loss: Any
    grads: dict
    inner_batches: list
    outer_batches: list


# ----------------------------------------------------------------------------- policy


def init_policy_params(config: Config = Config(), seed: int = 0, dtype=None, device=None) -> dict:
    """Initial ``theta``: an ordered dict of leaf tensors that require grad (on ``device``, default CPU).

    Weights are stored as ``[out, in]`` (``nn.Linear`` layout) and drawn, like
    ``nn.Linear``'s default, with weights and biases ~ U(-1/sqrt(fan_in),
    1/sqrt(fan_in)); ``log_std`` is ``config.init_log_std`` (log 1 = 0).
    """
    torch = _torch()
    dtype = torch.float32 if dtype is None else dtype
    gen = torch.Generator().manual_seed(int(seed))
    sizes = (2, *map(int, config.hidden), 2)
    params = {}
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        bound = 1.0 / math.sqrt(fan_in)
        w = (torch.rand(fan_out, fan_in, generator=gen, dtype=torch.float64) * 2 - 1) * bound
        b = (torch.rand(fan_out, generator=gen, dtype=torch.float64) * 2 - 1) * bound
        params[f"w{i}"] = w.to(dtype=dtype, device=device).requires_grad_()
        params[f"b{i}"] = b.to(dtype=dtype, device=device).requires_grad_()
    params["log_std"] = torch.full((2,), float(config.init_log_std), dtype=dtype, device=device).requires_grad_()
    return params


def policy_mean(params: dict, obs):
    """Mean of the Gaussian policy: ReLU MLP on ``obs [..., 2]`` -> ``[..., 2]``."""
    torch = _torch()
    n_layers = (len(params) - 1) // 2
    h = obs
    for i in range(n_layers):
        h = torch.nn.functional.linear(h, params[f"w{i}"], params[f"b{i}"])
        if i < n_layers - 1:
            h = torch.relu(h)
    return h


def gaussian_log_prob(params: dict, obs, actions):
    """``log N(actions; policy_mean(obs), diag(exp(2 log_std)))`` summed over the action axis."""
    mean = policy_mean(params, obs)
    log_std = params["log_std"]
    z = (actions - mean) * (-log_std).exp()
    return (-0.5 * z.square() - log_std - 0.5 * math.log(2.0 * math.pi)).sum(-1)


# ------------------------------------------------------------------------ environment


def sample_goals(generator, n_tasks: int, config: Config = Config(), dtype=None):
    """``n_tasks`` goals ~ U[-goal_range, goal_range]^2, shape ``[n_tasks, 2]``."""
    torch = _torch()
    dtype = torch.float32 if dtype is None else dtype
    u = torch.rand(n_tasks, 2, generator=generator, dtype=dtype)
    return (2.0 * u - 1.0) * config.goal_range


def sample_noise(generator, config: Config = Config(), dtype=None):
    """Standard normal action noise for one batch of episodes, ``[episodes, horizon, 2]``."""
    torch = _torch()
    dtype = torch.float32 if dtype is None else dtype
    return torch.randn(config.episodes, config.horizon, 2, generator=generator, dtype=dtype)


def rollout(params: dict, goal, noise, config: Config = Config()):
    """Run ``episodes`` navigation episodes in parallel with ``a_t = mu(s_t) + sigma * eps_t``.

    A Python loop over the ``horizon`` steps, each a batched tensor step over the
    episodes, under ``torch.no_grad()``. Returns ``(obs, actions, rewards)`` of
    shapes ``[E, H, 2]``, ``[E, H, 2]``, ``[E, H]``.
    """
    torch = _torch()
    episodes, horizon = noise.shape[0], noise.shape[1]
    with torch.no_grad():
        std = params["log_std"].exp()
        position = noise.new_zeros(episodes, 2)
        obs, actions, rewards = [], [], []
        for t in range(horizon):
            action = policy_mean(params, position) + std * noise[:, t]
            obs.append(position)
            actions.append(action)
            position = position + action.clamp(-config.max_speed, config.max_speed)
            rewards.append(-torch.linalg.vector_norm(position - goal, dim=-1))
        return torch.stack(obs, 1), torch.stack(actions, 1), torch.stack(rewards, 1)


# -------------------------------------------------------------------------- advantages


def discounted_returns(rewards, gamma: float):
    """Returns-to-go ``G_t = sum_{k>=t} gamma^(k-t) r_k`` of ``rewards [E, H]``."""
    torch = _torch()
    horizon = rewards.shape[1]
    steps = torch.arange(horizon, dtype=rewards.dtype, device=rewards.device)
    lag = steps[:, None] - steps[None, :]  # [k, t] = k - t
    discount = torch.where(lag >= 0, gamma ** lag.clamp(min=0), torch.zeros_like(lag))
    return rewards @ discount


def linear_feature_baseline(obs, returns, reg: float):
    """rllab's ``LinearFeatureBaseline`` fitted on this batch and evaluated on it.

    Features per step ``[s, s^2, t/100, (t/100)^2, (t/100)^3, 1]`` (8 numbers);
    ``w = (X^T X + reg I)^{-1} X^T G`` (solved with ``torch.linalg.lstsq``, which
    copes with the rank-deficient batches of a saturated policy whose clipped
    moves make ``s`` collinear with ``t``; rllab's 10x retry on a non-finite
    solution is kept); returns ``X w`` shaped like ``returns``.
    """
    torch = _torch()
    episodes, horizon = returns.shape
    al = (torch.arange(horizon, dtype=obs.dtype, device=obs.device) / 100.0)[None, :, None].expand(episodes, horizon, 1)
    ones = torch.ones_like(al)
    x = torch.cat([obs, obs.square(), al, al**2, al**3, ones], dim=-1).reshape(-1, 8)
    gram = x.T @ x
    rhs = (x.T @ returns.reshape(-1))[:, None]
    eye = torch.eye(8, dtype=x.dtype, device=x.device)
    for _ in range(5):  # rllab: if the solve fails, retry with 10x the regulariser
        w = torch.linalg.lstsq(gram + reg * eye, rhs).solution
        if bool(torch.isfinite(w).all()):
            break
        reg *= 10.0
    return (x @ w[:, 0]).reshape(episodes, horizon)


def standardized_advantages(obs, rewards, config: Config = Config()):
    """``A = G - baseline``, then ``(A - mean) / (std + 1e-8)`` over the whole batch."""
    returns = discounted_returns(rewards, config.gamma)
    adv = returns - linear_feature_baseline(obs, returns, config.baseline_reg)
    mean = adv.mean()
    std = (adv - mean).square().mean().sqrt()
    return (adv - mean) / (std + 1e-8)


def collect_batch(params: dict, goal, noise, config: Config = Config()) -> Batch:
    """Roll out with ``params`` on the task ``goal`` using ``noise``, and compute advantages."""
    torch = _torch()
    obs, actions, rewards = rollout(params, goal, noise, config)
    with torch.no_grad():
        advantages = standardized_advantages(obs, rewards, config)
    return Batch(obs, actions, rewards, advantages)


# ------------------------------------------------------------------------------- MAML


def surrogate_loss(params: dict, batch: Batch):
    """REINFORCE surrogate ``-(1/E) sum_e sum_t log pi(a_et | s_et) A_et`` (one batched forward)."""
    logp = gaussian_log_prob(params, batch.obs, batch.actions)
    return -(logp * batch.advantages).sum(1).mean()


def adapt(theta: dict, batch: Batch, config: Config = Config(), order: int = 2) -> dict:
    """One inner step ``phi = theta - inner_lr * dL(theta, batch)/dtheta``.

    ``order=2`` keeps the gradient in the graph (``create_graph=True``) so the
    outer gradient includes the Hessian term; ``order=1`` treats the inner
    gradient as a constant (first-order MAML: ``dphi/dtheta = I``).
    """
    torch = _torch()
    if order not in (1, 2):
        raise ValueError(f"order={order!r} is invalid: must be 1 or 2")
    names = list(theta)
    loss = surrogate_loss(theta, batch)
    grads = torch.autograd.grad(loss, [theta[n] for n in names], create_graph=(order == 2))
    return {n: theta[n] - config.inner_lr * g for n, g in zip(names, grads)}


def meta_objective_fixed_data(theta: dict, inner_batches, outer_batches, config: Config = Config(),
                              order: int = 2):
    """``(1/N) sum_i L(phi_i(theta), outer_i)`` with all sampled data held fixed.

    This is the function whose gradient :func:`meta_gradient` returns (for
    ``order=2``); the tests compare it with finite differences.
    """
    total = 0.0
    for inner, outer in zip(inner_batches, outer_batches):
        total = total + surrogate_loss(adapt(theta, inner, config, order), outer)
    return total / len(inner_batches)


def meta_gradient(theta: dict, goals, generator_or_seed, order: int = 2, config: Config = Config()) -> MetaGradient:
    """Sample the data of every task, adapt, and return the meta-gradient.

    For each task (a Python loop): inner noise -> inner batch with ``theta`` ->
    ``phi`` (:func:`adapt`) -> outer noise -> outer batch with ``phi`` -> outer
    loss ``L(phi, outer) / N`` -> its gradient w.r.t. ``theta``, accumulated over
    tasks (each task's graph is freed after its backward pass). Noise comes from
    ``generator_or_seed`` (a CPU ``torch.Generator`` or an int seed) in the order
    inner_0, outer_0, inner_1, ...; its dtype and device are those of ``theta`` (drawn
    on the CPU and copied, so a GPU run samples exactly the numbers of a CPU run).
    """
    torch = _torch()
    gen = generator_or_seed
    if not isinstance(gen, torch.Generator):
        gen = torch.Generator().manual_seed(int(generator_or_seed))
    names = list(theta)
    dtype, device = theta[names[0]].dtype, theta[names[0]].device
    noise = lambda: sample_noise(gen, config, dtype).to(device)
    goals = goals.to(device)
    n_tasks = goals.shape[0]
    grads = [torch.zeros_like(theta[n]) for n in names]
    total = 0.0
    inner_batches, outer_batches = [], []
    for i in range(n_tasks):
        goal = goals[i]
        inner = collect_batch(theta, goal, noise(), config)
        phi = adapt(theta, inner, config, order)
        outer = collect_batch(phi, goal, noise(), config)
        loss = surrogate_loss(phi, outer) / n_tasks
        task_grads = torch.autograd.grad(loss, [theta[n] for n in names])
        for acc, g in zip(grads, task_grads):
            acc.add_(g)
        total += loss.item()
        inner_batches.append(inner)
        outer_batches.append(outer)
    return MetaGradient(total, dict(zip(names, grads)), inner_batches, outer_batches)


class MetaLearner:
    """``theta`` + Adam + a sampling generator: :meth:`step` is one meta-iteration.

    ``theta`` is initialised from ``seed`` on ``device`` (``"cpu"``, ``"cuda"``...); goals and
    action noise come from a CPU ``torch.Generator`` seeded with ``seed + 1`` (no global RNG
    is touched) and are copied to ``device``.
    """

    def __init__(self, config: Config = Config(), seed: int = 0, order: int = 2, dtype=None, device=None):
        torch = _torch()
        if order not in (1, 2):
            raise ValueError(f"order={order!r} is invalid: must be 1 or 2")
        self.config = config
        self.order = order
        self.theta = init_policy_params(config, seed, dtype, device)
        self.optimizer = torch.optim.Adam(list(self.theta.values()), lr=config.outer_lr)
        self.generator = torch.Generator().manual_seed(int(seed) + 1)

    def step(self, meta_batch: int) -> float:
        """Sample ``meta_batch`` goals, compute the meta-gradient, take one Adam step; return the loss."""
        dtype = self.theta["w0"].dtype
        goals = sample_goals(self.generator, meta_batch, self.config, dtype)
        result = meta_gradient(self.theta, goals, self.generator, self.order, self.config)
        for name, p in self.theta.items():
            p.grad = result.grads[name]
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return result.loss


# -------------------------------------------------------------------------- benchmark


def torch_device_of(torch, device: str):
    """``torch.device(device)``, or ``ValueError`` naming ``device`` when torch cannot use it."""
    try:
        torch_device = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device={device!r} is invalid: {err}") from None
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} is invalid: torch {torch.__version__} sees no CUDA device")
    return torch_device


def run_benchmark(meta_batch: int, order: int, iters: int, warmup: int, seed: int,
                  threads: int | None = None, config: Config = Config(), device: str = "cpu") -> dict:
    """Time ``warmup + iters`` meta-iterations; return the benchmark record.

    ``compile_s`` is the wall time of the first iteration (there is nothing to
    compile in eager PyTorch; it is the warm-up cost). ``median_s_per_iter`` and
    ``min_s_per_iter`` are over the ``iters`` iterations after ``warmup``;
    ``env_steps_per_s = meta_batch * 2 * episodes * horizon / median``.
    ``threads`` sets ``torch.set_num_threads`` for the call and is restored after.
    ``device`` is a torch device string (``"cpu"``, ``"cuda"``, ``"cuda:1"``); on a GPU each
    timed iteration ends with ``torch.cuda.synchronize``.
    """
    torch = _torch()
    for name, value, lo in (("meta_batch", meta_batch, 1), ("order", order, 1), ("iters", iters, 1),
                            ("warmup", warmup, 0)):
        if int(value) < lo:
            raise ValueError(f"{name}={value!r} is invalid: must be an integer >= {lo}")
    if order not in (1, 2):
        raise ValueError(f"order={order!r} is invalid: must be 1 or 2")
    torch_device = torch_device_of(torch, device)
    sync = torch.cuda.synchronize if torch_device.type == "cuda" else (lambda: None)
    previous_threads = torch.get_num_threads()
    if threads is not None:
        if int(threads) < 1:
            raise ValueError(f"threads={threads!r} is invalid: must be an integer >= 1")
        torch.set_num_threads(int(threads))
    try:
        learner = MetaLearner(config, seed, order, device=torch_device)
        times = []
        for _ in range(warmup + iters):
            sync()
            start = time.perf_counter()
            loss = learner.step(meta_batch)
            sync()
            times.append(time.perf_counter() - start)
        if not math.isfinite(loss):
            raise FloatingPointError(f"meta-loss is not finite: {loss}")
        n_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(previous_threads)
    timed = times[warmup:]
    median = statistics.median(timed)
    return {
        "impl": IMPL_NAME,
        "task": "navigation",
        "learner": "pg",
        "meta_batch": int(meta_batch),
        "order": int(order),
        "episodes": config.episodes,
        "horizon": config.horizon,
        "compile_s": times[0],
        "median_s_per_iter": median,
        "min_s_per_iter": min(timed),
        "env_steps_per_s": meta_batch * 2 * config.episodes * config.horizon / median,
        "device": (f"{torch.cuda.get_device_name(torch_device)} (cuda); host {cpu_model()}"
                   if torch_device.type == "cuda" else f"{cpu_model()}, {n_threads} threads"),
        "torch_version": torch.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    """Command line: run the benchmark and print its record as one JSON line.

    Every value is checked before torch is imported; a bad one, a device torch cannot use or a
    missing torch prints one line, ``error: ...``, and exits with status 2.
    """
    parser = OneLineArgumentParser(prog="python -m benchmarks.torch_reference", description=__doc__.split("\n")[0])
    parser.add_argument("--meta-batch", type=int, default=20, help="tasks per meta-iteration")
    parser.add_argument("--order", type=int, choices=(1, 2), default=2, help="2 = second-order MAML, 1 = first-order")
    parser.add_argument("--iters", type=int, default=5, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations first")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--episodes", type=int, default=Config.episodes, help="episodes per batch")
    parser.add_argument("--horizon", type=int, default=Config.horizon, help="steps per episode")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, ...")
    args = parser.parse_args(argv)
    try:
        for name, minimum in (("meta_batch", 1), ("iters", 1), ("warmup", 0), ("seed", 0)):
            check_int(name, getattr(args, name), minimum=minimum)
        check_optional_int("threads", args.threads, minimum=1)
        config = Config(episodes=check_int("episodes", args.episodes, minimum=1),
                        horizon=check_int("horizon", args.horizon, minimum=1))
    except ValueError as err:
        parser.error(str(err))
    try:
        torch_device_of(_torch(), args.device)
    except (ImportError, ValueError) as err:
        parser.error(str(err))
    record = run_benchmark(args.meta_batch, args.order, args.iters, args.warmup, args.seed, args.threads, config,
                           args.device)
    print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
