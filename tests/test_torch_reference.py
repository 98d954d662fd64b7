"""Checks of the PyTorch reference MAML-RL (benchmarks/torch_reference.py).

Skipped as a whole when torch (the optional ``compare`` extra) is absent.
"""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")

from benchmarks import torch_reference as tr  # noqa: E402

TINY = tr.Config(episodes=4, horizon=5)
N_TASKS = 2


@pytest.fixture(scope="module")
def tiny_setup():
    """float64 theta, two goals, and the second- and first-order meta-gradients on the same seed."""
    theta = tr.init_policy_params(TINY, seed=3, dtype=torch.float64)
    goals = tr.sample_goals(torch.Generator().manual_seed(4), N_TASKS, TINY, torch.float64)
    second = tr.meta_gradient(theta, goals, 5, order=2, config=TINY)
    first = tr.meta_gradient(theta, goals, 5, order=1, config=TINY)
    return theta, goals, second, first


def _flat(tensors: dict):
    return torch.cat([t.detach().reshape(-1) for t in tensors.values()])


def _objective(theta, result, order, flat_delta=None):
    """Meta-objective at ``theta + flat_delta`` with the sampled data of ``result`` held fixed."""
    if flat_delta is not None:
        shifted, offset = {}, 0
        for name, p in theta.items():
            n = p.numel()
            shifted[name] = (p.detach() + flat_delta[offset:offset + n].reshape(p.shape)).requires_grad_()
            offset += n
        theta = shifted
    return tr.meta_objective_fixed_data(theta, result.inner_batches, result.outer_batches, TINY, order).item()


def test_rollout_is_a_deterministic_function_of_the_noise(tiny_setup):
    """Re-running the rollout from the same noise reproduces actions = mean + std * eps and the env."""
    theta, goals, second, _ = tiny_setup
    gen = torch.Generator().manual_seed(5)  # the same stream meta_gradient drew from
    noise = tr.sample_noise(gen, TINY, torch.float64)
    batch = second.inner_batches[0]
    obs, actions, rewards = tr.rollout(theta, goals[0], noise, TINY)
    torch.testing.assert_close(actions, batch.actions, rtol=0, atol=0)
    with torch.no_grad():
        mean = tr.policy_mean(theta, obs)
        torch.testing.assert_close(actions, mean + theta["log_std"].exp() * noise)
    # Environment: start at the origin, move by the clipped action, reward = -distance after the move.
    positions = torch.cumsum(actions.clamp(-0.1, 0.1), dim=1)
    torch.testing.assert_close(obs[:, 0], torch.zeros(TINY.episodes, 2, dtype=torch.float64))
    torch.testing.assert_close(obs[:, 1:], positions[:, :-1])
    torch.testing.assert_close(rewards, -torch.linalg.vector_norm(positions - goals[0], dim=-1))
    adv = batch.advantages
    assert abs(adv.mean().item()) < 1e-12
    assert abs((adv - adv.mean()).square().mean().sqrt().item() - 1.0) < 1e-6


def test_second_order_meta_gradient_matches_finite_differences(tiny_setup):
    """d/dtheta of (1/N) sum_i L(theta - a dL(theta, inner_i), outer_i), data fixed, vs central differences."""
    theta, _, second, _ = tiny_setup
    assert _objective(theta, second, 2) == pytest.approx(second.loss, rel=1e-12)
    grad = _flat(second.grads)
    gen = torch.Generator().manual_seed(11)
    h = 1e-6
    directions = [torch.randn(grad.numel(), generator=gen, dtype=torch.float64) for _ in range(4)]
    # One direction confined to each parameter tensor, so no block can hide behind the others.
    offset = 0
    for p in theta.values():
        d = torch.zeros(grad.numel(), dtype=torch.float64)
        d[offset:offset + p.numel()] = torch.randn(p.numel(), generator=gen, dtype=torch.float64)
        directions.append(d)
        offset += p.numel()
    for d in directions:
        d = d / d.norm()
        fd = (_objective(theta, second, 2, h * d) - _objective(theta, second, 2, -h * d)) / (2 * h)
        analytic = torch.dot(grad, d).item()
        assert analytic == pytest.approx(fd, rel=1e-5, abs=1e-7), (analytic, fd)


def test_first_order_differs_from_second_order(tiny_setup):
    """Same data, same phi; first order drops the Hessian term, so the gradients differ."""
    theta, _, second, first = tiny_setup
    for a, b in zip(second.inner_batches + second.outer_batches, first.inner_batches + first.outer_batches):
        torch.testing.assert_close(a.actions, b.actions)
    assert first.loss == pytest.approx(second.loss, rel=1e-10)
    g1, g2 = _flat(first.grads), _flat(second.grads)
    assert ((g1 - g2).norm() / g2.norm()).item() > 1e-3
    # First order = the outer gradient at phi, taken as the gradient w.r.t. theta.
    expected = torch.zeros_like(g1)
    for inner, outer in zip(first.inner_batches, first.outer_batches):
        phi = {k: v.detach().requires_grad_() for k, v in tr.adapt(theta, inner, TINY, order=1).items()}
        loss = tr.surrogate_loss(phi, outer) / N_TASKS
        expected += torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(phi.values()))])
    torch.testing.assert_close(g1, expected)


def test_cli_prints_one_json_record(capsys):
    """The CLI (``main``, what ``python -m benchmarks.torch_reference`` runs) with ``--iters 1``
    prints one JSON line with the documented keys.

    Run in-process (a subprocess would spend seconds re-importing torch); a tiny
    batch (4 episodes x 5 steps) keeps it fast; the defaults (20 x 100) are the benchmark's.
    """
    threads_before = torch.get_num_threads()
    argv = ["--meta-batch", "1", "--order", "2", "--iters", "1", "--warmup", "1", "--threads", "1",
            "--seed", "0", "--episodes", "4", "--horizon", "5"]
    assert tr.main(argv) == 0
    assert torch.get_num_threads() == threads_before  # --threads is restored afterwards
    out = capsys.readouterr()
    lines = [line for line in out.out.splitlines() if line.strip()]
    assert len(lines) == 1, out.out
    record = json.loads(lines[0])
    expected_keys = {"impl", "task", "learner", "meta_batch", "order", "episodes", "horizon", "compile_s",
                     "median_s_per_iter", "min_s_per_iter", "env_steps_per_s", "device", "torch_version"}
    assert set(record) == expected_keys
    assert (record["impl"], record["task"], record["learner"]) == ("torch-task-loop", "navigation", "pg")
    assert (record["meta_batch"], record["order"], record["episodes"], record["horizon"]) == (1, 2, 4, 5)
    assert record["median_s_per_iter"] > 0 and math.isfinite(record["env_steps_per_s"])
    assert record["env_steps_per_s"] == pytest.approx(1 * 2 * 4 * 5 / record["median_s_per_iter"])
    assert "1 threads" in record["device"] and record["torch_version"] == torch.__version__


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="horizon"):
        tr.Config(horizon=0)
    with pytest.raises(ValueError, match="order"):
        tr.run_benchmark(meta_batch=1, order=3, iters=1, warmup=0, seed=0)
    with pytest.raises(ValueError, match="device='warp9'"):
        tr.run_benchmark(meta_batch=1, order=2, iters=1, warmup=0, seed=0, device="warp9")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device='cuda' is invalid: .* no CUDA device"):
            tr.run_benchmark(meta_batch=1, order=2, iters=1, warmup=0, seed=0, device="cuda")


def test_module_entry_point_and_lazy_torch_import():
    """``python -m benchmarks.torch_reference --help`` works, and importing the module does not import torch."""
    import os
    import subprocess
    import sys

    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-m", "benchmarks.torch_reference", "--help"], cwd=repo_root,
                         capture_output=True, text=True, timeout=60, check=True)
    assert "--meta-batch" in out.stdout and "--order" in out.stdout
    code = "import sys, benchmarks.torch_reference; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=repo_root, timeout=60, check=True)
