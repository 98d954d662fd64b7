"""Actor-critic inner learner: second-order meta-gradients through the actor *and* the critic update.

* Finite differences. A tabular MDP with a categorical policy makes the sampled
  data piecewise constant in ``theta``, so the whole meta-loss (``K = 3`` inner
  actor-critic steps with GAE advantages and lambda-return targets from the
  critic, standardised advantages, entropy, scaled critic step, outer policy
  and critic loss) is a smooth function of ``(theta_a, theta_c)`` with the data
  held fixed; its autodiff gradient must equal central differences in float64.
  The same procedure with the advantages and targets wrapped in a plain
  ``stop_gradient`` (same forward values) gives a different, wrong gradient.
* Exact oracle. On a Bernoulli bandit (horizon 1, ``M`` pulls per inner step,
  ``K = 2`` inner steps, tabular softmax actor, one scalar critic value ``v``) the
  inner step of the library is, in closed form,

      theta' = theta + alpha [ 1/M sum_i (r_i - v) (e_{a_i} - pi_theta) + c_H grad H(pi_theta) ]
      v'     = v - alpha s c_v (v - mean_i r_i)

  and ``J(theta, v) = E[pi_{theta_K} . p]`` is a finite sum over every inner
  outcome. Its exact gradient (sampling term included) is compared with the
  Monte-Carlo mean of the library's DiCE meta-gradient in units of its standard error.
* A short meta-training run improves the post-adaptation return.
"""

import dataclasses
import itertools

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metarl_jax.learners.actor_critic import ACConfig, ActorCriticLearner
from metarl_jax.algorithms.maml import (
    MAMLConfig,
    init_meta_params,
    maml,
    make_meta_gradient,
    make_meta_loss,
)
from metarl_jax.networks import (
    CategoricalPolicy,
    GaussianPolicy,
    MLPCritic,
    SharedActorCritic,
    TabularCritic,
    TabularPolicy,
)
from metarl_jax.tasks.bandit import BanditParams, BernoulliBandit
from metarl_jax.tasks import make_family
from metarl_jax.tasks.base import sample_tasks
from metarl_jax.tasks.tabular_mdp import TabularMDP

# Tests compile with XLA's backend optimisations off: 5-8x faster compiles of these
# small programs on a loaded 2-core CPU, same semantics.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def fast_jit(fn, *example_args):
    return jax.jit(fn).lower(*example_args).compile(compiler_options=FAST_COMPILE)


@dataclasses.dataclass(frozen=True)
class StoppedTargets:
    """The same procedure with a plain ``stop_gradient`` on the critic's advantages and targets.

    ``inner_grad`` differentiates ``inner_loss`` (which stop-gradients them) and scales
    the critic block like the real hook, so the forward values (adapted parameters,
    losses) are identical; only the derivative of the update with respect to the
    critic's influence on the advantages is lost.
    """

    base: ActorCriticLearner

    def inner_grad(self, params, data, estimator):
        loss, grads = jax.value_and_grad(self.base.inner_loss)(params, data, estimator)
        return loss, self.base.model.scale_critic_grads(grads, self.base.config.critic_scale)

    def inner_grad_and_log_prob(self, params, data, estimator):
        """``"dice"``'s inner step: the stopped gradient above, with the base's score term."""
        loss, grads = self.inner_grad(params, data, estimator)
        return loss, grads, self.base.log_prob_of_data(params, data)

    def __getattr__(self, name):
        return getattr(self.base, name)


def _critic_part(tree, architecture):
    """The critic block of a params-like pytree (``"shared"``: the value head)."""
    if architecture == "shared":
        return tree["params"]["value_head"]
    return tree["critic"]


# ----------------------------------------------------------------------------- finite differences

MDP = TabularMDP(num_states=3, num_actions=2, horizon=4)
FD_CONFIG = dict(
    num_inner_episodes=4, num_outer_episodes=4, horizon=4, gamma=0.95, gae_lambda=0.9, value_coef=0.5,
    entropy_coef=0.05, critic_lr_scale=2.0, standardize_advantages=True, outer_critic_coef=0.5,
    # The outer surrogate's value must be the function its gradient differentiates: no
    # critic baseline there (a baseline changes the estimate, not the value) and MC targets.
    outer_baseline="none", outer_gae_lambda=1.0,
)
FD_MAML = MAMLConfig(inner_steps=3, inner_lr=0.5, estimator="naive")
NUM_DIRECTIONS = 6
EPS = 1e-5


def _random_init(key, tree, scale=0.5):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [scale * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])


@pytest.fixture(scope="module", params=["separate", "shared"])
def fd_result(request):
    architecture = request.param
    with jax.enable_x64(True):
        learner = ActorCriticLearner(
            MDP, CategoricalPolicy(num_actions=2, hidden_sizes=(8,), activation="tanh"),
            ACConfig(architecture=architecture, **FD_CONFIG), critic_hidden_sizes=(8,),
        )
        stopped = StoppedTargets(learner)

        def setup():  # one compiled program instead of dozens of eager ops
            meta_params = _random_init(jax.random.PRNGKey(3), init_meta_params(jax.random.PRNGKey(0), learner, FD_MAML))
            meta_params = jax.tree.map(lambda x: x.astype(jnp.float64), meta_params)
            return meta_params, sample_tasks(MDP, jax.random.PRNGKey(1), 2)

        meta_params, tasks = fast_jit(setup)()
        key = jax.random.PRNGKey(2)
        _, unravel = jax.flatten_util.ravel_pytree(meta_params)
        ravel = lambda tree: np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])
        flat = ravel(meta_params)
        # Random directions over all parameters, and over the critic block only.
        is_critic = jax.tree.map(np.zeros_like, meta_params["policy"])
        if architecture == "shared":
            is_critic["params"]["value_head"] = jax.tree.map(np.ones_like, is_critic["params"]["value_head"])
        else:
            is_critic["critic"] = jax.tree.map(np.ones_like, is_critic["critic"])
        critic_mask = ravel({"policy": is_critic})
        directions = np.random.default_rng(4).normal(size=(NUM_DIRECTIONS, flat.shape[0]))
        directions[NUM_DIRECTIONS // 2:] *= critic_mask

        def loss_of(lrn):
            return lambda x: make_meta_loss(lrn, FD_MAML)(unravel(x), tasks, key)[0]

        # Two programs, each compiled once and called repeatedly (the finite differences
        # reuse value_and_grad: vmapping the rollouts over directions, or compiling a
        # separate forward pass, costs more compile time than these calls take to run).
        value_and_grad = fast_jit(jax.value_and_grad(loss_of(learner)), flat)
        stopped_jvp = fast_jit(lambda x, d: jax.jvp(loss_of(stopped), (x,), (d,)), flat, directions[0])
        loss = lambda x: value_and_grad(x)[0]
        fd = [(loss(flat + EPS * d) - loss(flat - EPS * d)) / (2 * EPS) for d in directions]
        value, grad = value_and_grad(flat)
        stopped_out = [stopped_jvp(flat, d) for d in directions]
        out = jax.tree.map(np.asarray, (value, grad, fd, stopped_out))
    value, grad, fd, stopped_out = out
    return {
        "architecture": architecture, "loss": value, "grad": grad, "fd": np.asarray(fd),
        "loss_stopped": np.asarray([v for v, _ in stopped_out]),
        "stopped_directional": np.asarray([t for _, t in stopped_out]),
        "directions": np.asarray(directions), "critic_mask": np.asarray(critic_mask, bool),
    }


def test_meta_gradient_through_actor_and_critic_matches_finite_differences(fd_result):
    analytic = fd_result["directions"] @ fd_result["grad"]
    rel = np.abs(fd_result["fd"] - analytic) / np.abs(analytic).max()
    print(f"\n{fd_result['architecture']}: FD relative errors {rel}")
    np.testing.assert_allclose(fd_result["fd"], analytic, rtol=1e-6, atol=1e-9 * np.abs(analytic).max())
    # The critic-only directions are not negligible: the check covers the critic's meta-gradient.
    critic_dirs = np.abs(analytic[NUM_DIRECTIONS // 2:])
    assert critic_dirs.min() > 1e-3 * np.abs(analytic).max(), analytic


def test_critic_meta_gradient_needs_the_dependence_of_the_advantages_on_the_critic(fd_result):
    grad, mask = fd_result["grad"], fd_result["critic_mask"]
    analytic = fd_result["directions"] @ grad
    stopped = fd_result["stopped_directional"]
    # Same procedure forward ...
    np.testing.assert_allclose(fd_result["loss_stopped"], fd_result["loss"], rtol=1e-12)
    # ... a non-zero critic meta-gradient ...
    critic_norm = np.linalg.norm(grad[mask])
    assert critic_norm > 1e-3 * np.linalg.norm(grad), (critic_norm, np.linalg.norm(grad))
    # ... which the stop_gradient version gets wrong along the critic-only directions.
    critic = slice(NUM_DIRECTIONS // 2, None)
    gap = np.abs(stopped[critic] - analytic[critic])
    print(f"\n{fd_result['architecture']}: critic directions: right {analytic[critic]}, "
          f"stop_gradient {stopped[critic]}")
    assert gap.max() > 0.1 * np.abs(analytic[critic]).max(), (analytic[critic], stopped[critic])
    # Finite differences side with the hook, not with the stop_gradient version.
    assert np.abs(fd_result["fd"] - stopped).max() > 1e3 * np.abs(fd_result["fd"] - analytic).max()


# ----------------------------------------------------------------------------- exact oracle (bandit)

PROBS = np.array([0.9, 0.15, 0.1])
THETA = np.array([0.3, -0.2, 0.1])
V0 = -0.5
NUM_ARMS = 3
INNER_PULLS = 2  # M
INNER_STEPS = 2  # K
OUTER_PULLS = 8
ALPHA = 2.0
VALUE_COEF = 1.0
ENTROPY_COEF = 0.1
CRITIC_SCALE = 1.5
NUM_KEYS = 20_000
TASKS_PER_KEY = 4


def _outcomes(num_arms, pulls):
    """Every outcome of one inner step: actions [n, M], rewards [n, M]."""
    acts, rews = [], []
    for a in itertools.product(range(num_arms), repeat=pulls):
        for r in itertools.product((0.0, 1.0), repeat=pulls):
            acts.append(a)
            rews.append(r)
    return jnp.asarray(np.array(acts)), jnp.asarray(np.array(rews))


def _entropy(theta):
    log_pi = jax.nn.log_softmax(theta)
    return -jnp.sum(jnp.exp(log_pi) * log_pi)


def _exact_step(theta, v, actions, rewards):
    """One inner actor-critic step in closed form (module docstring)."""
    pi = jax.nn.softmax(theta)
    scores = jax.nn.one_hot(actions, theta.shape[0], dtype=theta.dtype) - pi
    adv = rewards - v
    theta_new = theta + ALPHA * (jnp.mean(adv[:, None] * scores, axis=0) + ENTROPY_COEF * jax.grad(_entropy)(theta))
    v_new = v - ALPHA * CRITIC_SCALE * VALUE_COEF * (v - jnp.mean(rewards))
    return theta_new, v_new


def _outcome_prob(theta, actions, rewards, probs):
    pi = jax.nn.softmax(theta)
    p = probs[actions]
    return jnp.prod(pi[actions] * jnp.where(rewards > 0, p, 1.0 - p))


def exact_objective(theta, v, probs):
    """``J(theta, v) = sum_{o_1..o_K} prod_k P(o_k; theta_{k-1}) * pi_{theta_K} . p`` (K = 2)."""
    acts, rews = _outcomes(NUM_ARMS, INNER_PULLS)

    def after_first(a1, r1):
        theta1, v1 = _exact_step(theta, v, a1, r1)

        def after_second(a2, r2):
            theta2, _ = _exact_step(theta1, v1, a2, r2)
            return _outcome_prob(theta1, a2, r2, probs) * jnp.dot(jax.nn.softmax(theta2), probs)

        return _outcome_prob(theta, a1, r1, probs) * jnp.sum(jax.vmap(after_second)(acts, rews))

    return jnp.sum(jax.vmap(after_first)(acts, rews))


@pytest.fixture(scope="module")
def oracle():
    """Exact gradient of ``J`` w.r.t. (3 logits, critic value), and central differences of ``J``."""
    with jax.enable_x64(True):
        x0 = jnp.append(jnp.asarray(THETA), V0)  # (theta, v) as one vector
        probs = jnp.asarray(PROBS)
        objective = lambda x: exact_objective(x[:3], x[3], probs)
        eps = 1e-6
        points = jnp.concatenate([x0 + eps * jnp.eye(4), x0 - eps * jnp.eye(4)])

        def grad_and_fd(x, points):
            values = jax.vmap(objective)(points)
            return jax.grad(objective)(x), (values[:4] - values[4:]) / (2 * eps)

        grad, fd = fast_jit(grad_and_fd, x0, points)(x0, points)
        return {"grad": np.asarray(grad), "fd": np.asarray(fd)}


def _bandit_learner(outer_critic_coef=0.0):
    config = ACConfig(
        num_inner_episodes=INNER_PULLS, num_outer_episodes=OUTER_PULLS, horizon=1, gamma=1.0, gae_lambda=1.0,
        value_coef=VALUE_COEF, entropy_coef=ENTROPY_COEF, critic_lr_scale=CRITIC_SCALE,
        standardize_advantages=False, outer_critic_coef=outer_critic_coef,
    )
    return ActorCriticLearner(BernoulliBandit(num_arms=NUM_ARMS, horizon=1), TabularPolicy(1, NUM_ARMS), config,
                              critic=TabularCritic(1))


def _bandit_setup():
    meta_params = {"policy": {"actor": {"logits": jnp.asarray(THETA, jnp.float32)[None, :]},
                              "critic": {"values": jnp.asarray([V0], jnp.float32)}}}
    probs = jnp.tile(jnp.asarray(PROBS, jnp.float32), (TASKS_PER_KEY, 1))
    tasks = jax.vmap(lambda p: BanditParams(probs=p, max_steps_in_episode=1))(probs)
    return meta_params, tasks


@pytest.fixture(scope="module")
def dice_samples():
    """Per-key DiCE meta-gradients of the objective, ``[NUM_KEYS, 4]`` = (3 logits, critic value)."""
    learner = _bandit_learner()
    meta_gradient = make_meta_gradient(learner, MAMLConfig(inner_steps=INNER_STEPS, inner_lr=ALPHA, estimator="dice"))
    meta_params, tasks = _bandit_setup()

    def one(key):
        grads = meta_gradient(meta_params, tasks, key)[1]["policy"]
        return jnp.concatenate([grads["actor"]["logits"][0], grads["critic"]["values"]])

    keys = jax.random.split(jax.random.PRNGKey(0), NUM_KEYS)
    batch = fast_jit(jax.vmap(one), keys)
    # The meta-loss is minimised: the gradient of the objective is minus its gradient.
    return -np.asarray(batch(keys), np.float64)


def test_oracle_is_a_real_gradient_with_a_critic_component(oracle):
    np.testing.assert_allclose(oracle["fd"], oracle["grad"], rtol=1e-6, atol=1e-9)
    # The critic value moves the objective (through the advantages of both actor steps
    # and through the critic step that feeds the second one).
    assert abs(oracle["grad"][3]) > 0.1 * np.abs(oracle["grad"][:3]).max(), oracle["grad"]


def test_actor_critic_dice_is_unbiased(oracle, dice_samples):
    mean = dice_samples.mean(axis=0)
    stderr = dice_samples.std(axis=0, ddof=1) / np.sqrt(NUM_KEYS)
    z = (mean - oracle["grad"]) / stderr
    print(f"\ndice mean {mean}\nexact     {oracle['grad']}\nz = {z}")
    assert np.all(np.abs(z) < 4.0), f"dice mean {mean} vs exact {oracle['grad']}: z = {z}"
    # Resolution: dropping the critic's influence on the advantages would give a critic
    # component of exactly 0 here (outer_critic_coef = 0), many standard errors away.
    assert abs(oracle["grad"][3]) > 10.0 * stderr[3], (oracle["grad"][3], stderr[3])


def test_stop_gradient_version_gives_the_critic_no_meta_gradient():
    meta_params, tasks = _bandit_setup()
    config = MAMLConfig(inner_steps=INNER_STEPS, inner_lr=ALPHA, estimator="dice")
    fn = lambda mp, k: make_meta_gradient(StoppedTargets(_bandit_learner()), config)(mp, tasks, k)[1]
    key = jax.random.PRNGKey(1)
    grads = fast_jit(fn, meta_params, key)(meta_params, key)
    assert float(jnp.abs(grads["policy"]["actor"]["logits"]).max()) > 0.0
    assert float(jnp.abs(grads["policy"]["critic"]["values"]).max()) == 0.0


# ----------------------------------------------------------------------------- meta-training


def test_meta_training_improves_post_adaptation_return():
    """Randomised-physics CartPole (horizon 50): 60 meta-iterations lift the post-adaptation return."""
    env = make_family("cartpole", horizon=50)
    learner = ActorCriticLearner(
        env, CategoricalPolicy(num_actions=2, hidden_sizes=(16,), activation="tanh"),
        ACConfig(num_inner_episodes=8, num_outer_episodes=8, horizon=50, gamma=0.99, gae_lambda=0.95,
                 outer_critic_coef=0.5),
        critic_hidden_sizes=(16,),
    )
    # ProMP's LVC estimator: with 4 tasks per batch, DiCE's score term is too noisy for a short run.
    config = MAMLConfig(inner_steps=1, inner_lr=0.1, estimator="lvc")
    optimizer = optax.adam(1e-2)
    algorithm = maml(learner, config, optimizer, lambda k: sample_tasks(env, k, 4))
    state = fast_jit(lambda: algorithm.init(jax.random.PRNGKey(0)))()
    step = fast_jit(algorithm.step, state)

    def post_adaptation_return(meta_params):
        """Mean over 10 fresh 4-task batches, reusing the compiled step's metrics (taken before its update)."""
        keys = jax.random.split(jax.random.PRNGKey(99), 10)
        return float(np.mean([step(state._replace(meta_params=meta_params, key=k))[1]["post_adaptation_return"]
                              for k in keys]))

    before = post_adaptation_return(state.meta_params)
    for _ in range(60):
        state, metrics = step(state)
    after = post_adaptation_return(state.meta_params)
    print(f"\npost-adaptation return: random init {before:.1f} -> meta-trained {after:.1f} (max 50)")
    assert bool(metrics["grad_finite"])
    assert after > before + 8.0, (before, after)
    assert after > 40.0, (before, after)


def test_config_validation_names_the_field():
    cases = [
        (dict(architecture="tied"), "architecture='tied'"),
        (dict(gae_lambda=1.5), "gae_lambda=1.5"),
        (dict(horizon=0), "horizon=0"),
        (dict(num_inner_episodes=2.5), "num_inner_episodes=2.5"),
        (dict(gamma=0.0), "gamma=0.0"),
        (dict(value_coef=-1.0), "value_coef=-1.0"),
        (dict(entropy_coef=float("nan")), "entropy_coef=nan"),
        (dict(critic_lr_scale=0.0), "critic_lr_scale=0.0"),
        (dict(outer_critic_coef=-0.1), "outer_critic_coef=-0.1"),
        (dict(normalize="batch"), "normalize='batch'"),
        (dict(outer_baseline="mean"), "outer_baseline='mean'"),
        (dict(outer_gae_lambda=-0.1), "outer_gae_lambda=-0.1"),
        (dict(standardize_advantages=1), "standardize_advantages=1"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
            ACConfig(**kwargs)
    # The message names the allowed values too.
    with pytest.raises(ValueError, match="must be one of 'separate', 'shared'"):
        ACConfig(architecture="tied")
    assert ACConfig(critic_lr_scale=None).critic_scale == 1.0
    # Learner-level checks.
    with pytest.raises(ValueError, match="critic="):
        ActorCriticLearner(BernoulliBandit(2), CategoricalPolicy(2), ACConfig(architecture="shared"),
                           critic=TabularCritic(1))
    with pytest.raises(ValueError, match="policy="):
        ActorCriticLearner(BernoulliBandit(2), TabularPolicy(1, 2), ACConfig(architecture="shared"))
    with pytest.raises(ValueError, match="hidden_sizes"):
        ActorCriticLearner(BernoulliBandit(2), CategoricalPolicy(2), ACConfig(), critic_hidden_sizes=(0,))
    with pytest.raises(ValueError, match="num_states=0"):
        TabularCritic(0)


def test_shared_network_is_a_policy_with_a_value_head():
    """Discrete and continuous shared-torso models: shapes, normalised log-probs, critic-block scaling."""
    obs = jax.random.normal(jax.random.PRNGKey(0), (5, 3))
    discrete = SharedActorCritic.from_policy(CategoricalPolicy(num_actions=4, hidden_sizes=(8,)))
    continuous = SharedActorCritic.from_policy(GaussianPolicy(action_dim=2, hidden_sizes=(8,), init_log_std=-0.5))

    def check(obs):
        out = {}
        params = discrete.init(jax.random.PRNGKey(1), 3)
        all_actions = jnp.arange(4)[:, None] * jnp.ones((1, 5), jnp.int32)
        out["total_prob"] = jnp.sum(jnp.exp(jax.vmap(lambda a: discrete.log_prob(params, obs, a))(all_actions)), 0)
        out["d_sample"] = discrete.sample(jax.random.PRNGKey(2), params, obs)
        out["d_value"], out["d_entropy"] = discrete.value(params, obs), discrete.entropy(params, obs)
        params = continuous.init(jax.random.PRNGKey(3), 3)
        out["c_sample"] = continuous.sample(jax.random.PRNGKey(4), params, obs)
        out["c_log_prob"] = continuous.log_prob(params, obs, out["c_sample"])
        out["c_entropy"] = continuous.entropy(params, obs)
        out["params"], out["scaled"] = params, continuous.scale_critic_grads(params, 3.0)
        return out

    out = fast_jit(check, obs)(obs)
    np.testing.assert_allclose(out["total_prob"], 1.0, rtol=1e-5)
    assert out["d_sample"].shape == out["d_value"].shape == out["d_entropy"].shape == (5,)
    assert out["c_sample"].shape == (5, 2) and out["c_log_prob"].shape == (5,)
    np.testing.assert_allclose(out["c_entropy"], 2 * (0.5 * (1 + np.log(2 * np.pi)) - 0.5), rtol=1e-5)
    params, scaled = out["params"]["params"], out["scaled"]["params"]
    np.testing.assert_allclose(scaled["value_head"]["kernel"], 3.0 * params["value_head"]["kernel"], rtol=1e-6)
    np.testing.assert_array_equal(scaled["torso_0"]["kernel"], params["torso_0"]["kernel"])
    np.testing.assert_array_equal(scaled["log_std"], params["log_std"])
    assert isinstance(ActorCriticLearner(BernoulliBandit(2), CategoricalPolicy(2), ACConfig()).model.critic, MLPCritic)


def test_objective_estimate_carries_the_outer_surrogate_scale():
    """``c = (E / #steps) / std(G - V)`` for step normalisation and standardised critic-baseline advantages."""
    learner = ActorCriticLearner(
        BernoulliBandit(num_arms=2, horizon=3), TabularPolicy(1, 2),
        ACConfig(num_inner_episodes=2, num_outer_episodes=6, horizon=3, gamma=0.9, normalize="step",
                 standardize_advantages=True), critic=TabularCritic(1),
    )
    params = {"actor": {"logits": jnp.asarray([[0.2, -0.1]])}, "critic": {"values": jnp.asarray([0.3])}}
    task = BanditParams(probs=jnp.asarray([0.7, 0.4]), max_steps_in_episode=3)
    key = jax.random.PRNGKey(5)
    batch, estimate, scale = fast_jit(lambda p, k: (lambda b: (b, learner.objective_estimate(b),
                                                             learner.outer_surrogate_scale(p, b.traj)))(
        learner.collect_outer(k, p, task)), params, key)(params, key)
    reward = np.asarray(batch.traj.reward, np.float64)  # [6, 3], every step valid
    discounts = 0.9 ** np.arange(3)
    to_go = np.stack([np.sum(reward[:, t:] * discounts[: 3 - t], axis=1) for t in range(3)], axis=1)
    expected = np.mean(reward @ discounts) * (6 / 18) / np.std(to_go - 0.3)
    np.testing.assert_allclose(float(estimate), expected, rtol=1e-4)
    np.testing.assert_allclose(float(scale), (6 / 18) / np.std(to_go - 0.3), rtol=1e-4)


@pytest.mark.parametrize("bootstrap", [False, True])
def test_bootstrap_at_horizon_adds_the_discounted_value_of_the_last_next_state(bootstrap):
    """``ACConfig.bootstrap_at_horizon``: advantages and lambda-return targets against numpy.

    Tabular MDP (3 states, horizon 4, never terminates), tabular critic ``V = (0.5, -1.0, 2.0)``,
    gamma 0.9. ``lambda = 1``: the target is the return of the 4 rolled-out steps,
    ``y_t = sum_{u=t}^{3} gamma^(u-t) r_u``, plus ``gamma^(4-t) V(s_4)`` with the bootstrap, where
    ``s_4`` is the state after the last step (``next_obs[:, -1]``, not ``obs[:, -1]``); ``A = y - V(s_t)``.
    ``lambda = 0.7``: GAE by the backward recursion with ``V(s_4)`` or 0 after the last step.
    """
    gamma, horizon = 0.9, 4
    critic_values = np.array([0.5, -1.0, 2.0], np.float32)
    learner = ActorCriticLearner(
        MDP, TabularPolicy(3, 2),
        ACConfig(num_inner_episodes=6, num_outer_episodes=6, horizon=horizon, gamma=gamma,
                 bootstrap_at_horizon=bootstrap), critic=TabularCritic(3))
    params = {"actor": {"logits": jnp.zeros((3, 2))}, "critic": {"values": jnp.asarray(critic_values)}}
    task = jax.tree.map(lambda x: x[0], sample_tasks(MDP, jax.random.PRNGKey(1), 1))

    @jax.jit
    def run(params, key):
        traj = learner.collect(key, params, task)
        return traj, learner.advantages_and_targets(params, traj, 1.0), learner.advantages_and_targets(params, traj, 0.7)

    traj, (adv1, y1), (adv07, y07) = run(params, jax.random.PRNGKey(2))
    states = np.asarray(traj.obs).argmax(-1)  # one-hot observations [6, 4]
    last = np.asarray(traj.next_obs)[:, -1].argmax(-1)
    reward = np.asarray(traj.reward, np.float64)
    v, v_last = critic_values[states].astype(np.float64), critic_values[last].astype(np.float64)
    v_end = v_last if bootstrap else np.zeros(6)
    assert np.all(np.asarray(traj.mask) == 1.0) and np.any(last != states[:, -1])

    to_go = np.stack([reward[:, t:] @ gamma ** np.arange(horizon - t) for t in range(horizon)], axis=1)
    y_expected = to_go + gamma ** (horizon - np.arange(horizon))[None] * v_end[:, None]
    np.testing.assert_allclose(np.asarray(y1), y_expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(adv1), y_expected - v, rtol=1e-5, atol=1e-5)

    next_v = np.concatenate([v[:, 1:], v_end[:, None]], axis=1)
    adv, running = np.zeros((6, horizon)), np.zeros(6)
    for t in reversed(range(horizon)):
        running = reward[:, t] + gamma * next_v[:, t] - v[:, t] + gamma * 0.7 * running
        adv[:, t] = running
    np.testing.assert_allclose(np.asarray(adv07), adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(y07), adv + v, rtol=1e-5, atol=1e-5)
