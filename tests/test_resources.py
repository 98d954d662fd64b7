"""``metarl_jax.resources``: the memory estimate is a lower bound of XLA's, linear in the sizes, and
refuses a config far beyond the machine in one line that names both numbers."""

import dataclasses
import json
import re
import time

import jax
import pytest

from experiments import benchmark_memory
from metarl_jax import experiment, resources
from metarl_jax.algorithms.maml import init_meta_params, make_meta_gradient
from metarl_jax.tasks import sample_tasks

TINY = {"horizon": 8, "num_episodes": 3, "meta_batch": 3, "hidden_sizes": (16, 16), "task_chunk": None}


def _built(**fields):
    config = experiment.MAMLExperimentConfig(**{**TINY, **fields})
    family, learner, maml_config, _ = experiment.build(config)
    return config, family, learner, maml_config


def _xla_bytes(family, learner, maml_config, meta_batch) -> int:
    """Temporary + argument bytes of the compiled second-order meta-gradient (benchmark_memory's figure)."""
    meta_params = init_meta_params(jax.random.PRNGKey(0), learner, maml_config)
    tasks = sample_tasks(family, jax.random.PRNGKey(1), meta_batch)
    compiled = jax.jit(make_meta_gradient(learner, maml_config)).lower(meta_params, tasks, jax.random.PRNGKey(2)).compile()
    memory = compiled.memory_analysis()
    return int(memory.temp_size_in_bytes + memory.argument_size_in_bytes)


@pytest.mark.parametrize("fields", [  # navigation/pg: test_check_estimate_command...
    {"task": "cartpole_target", "learner": "ac", "inner_steps": 1},
    {"task": "maze", "learner": "q", "inner_steps": 2},
], ids=lambda f: f"{f['task']}-{f['learner']}-K{f['inner_steps']}")
def test_estimate_is_below_what_xla_allocates_by_a_small_factor(fields):
    config, family, learner, maml_config = _built(**fields)
    estimate = resources.estimate_meta_iteration_bytes(learner, maml_config, config.meta_batch)
    xla = _xla_bytes(family, learner, maml_config, config.meta_batch)
    assert 0 < estimate <= xla <= 4 * estimate  # a lower bound that bites (measured: 1.9x and 2.8x here)


def test_estimate_is_linear_in_horizon_and_meta_batch():
    _, _, learner, maml_config = _built(task="navigation", learner="pg", inner_steps=3)
    params = resources.tree_bytes(jax.eval_shape(learner.init, jax.random.PRNGKey(0)))
    by_batch = [resources.estimate_meta_iteration_bytes(learner, maml_config, n) for n in (1, 2, 7)]
    per_task = by_batch[0] - params
    assert per_task > 0 and by_batch == [params + n * per_task for n in (1, 2, 7)]
    by_horizon = [resources.estimate_meta_iteration_bytes(_built(task="navigation", learner="pg", inner_steps=3,
                                                                 horizon=h)[2], maml_config, 5) for h in (10, 20, 50)]
    per_step = (by_horizon[1] - by_horizon[0]) / 10
    assert per_step > 0 and by_horizon[2] == by_horizon[0] + 40 * per_step
    # one chunk's residuals with accumulate_chunks; the meta-batch split over devices
    accumulate = dataclasses.replace(maml_config, task_chunk=2, accumulate_chunks=True)
    assert resources.estimate_meta_iteration_bytes(learner, accumulate, 7) == by_batch[1]
    assert resources.estimate_meta_iteration_bytes(learner, maml_config, 7, num_devices=4) == by_batch[1]


def test_huge_horizon_is_refused_in_one_line_with_both_numbers():
    start = time.perf_counter()
    with pytest.raises(ValueError) as err:
        resources.check_experiment_memory(experiment.MAMLExperimentConfig(horizon=10_000_000))
    seconds = time.perf_counter() - start
    message = str(err.value)
    assert "\n" not in message and seconds < 5.0
    assert message.startswith("memory=") and " TiB is invalid: meta_batch=20, num_episodes=20, horizon=10000000, " \
                                              "inner_steps=3" in message
    need, have = re.search(r"needs at least ([\d,.]+) GiB but the machine has ([\d,.]+) GiB available", message).groups()
    assert float(need.replace(",", "")) > float(have.replace(",", "")) > 0
    assert message.endswith("reduce meta_batch, num_episodes, horizon or task_chunk")


def test_default_navigation_config_passes():
    need = resources.check_experiment_memory(experiment.MAMLExperimentConfig())
    assert 10 * 2**20 < need < resources.available_memory_bytes()


def test_check_memory_fits_message_and_unknown_machine():
    resources.check_memory_fits(2**40, None, "anything")  # nothing known: no check
    resources.check_memory_fits(2**30, 2**30, "anything")
    with pytest.raises(ValueError) as err:
        resources.check_memory_fits(3 * 2**40, 8 * 2**30, "meta_batch=1, horizon=5")
    assert str(err.value) == ("memory=3.0 TiB is invalid: meta_batch=1, horizon=5 needs at least 3,072 GiB but the "
                              "machine has 8.0 GiB available; reduce meta_batch, num_episodes, horizon or task_chunk")
    assert resources.format_bytes(512) == "512 B" and resources.format_bytes(3.5 * 2**20) == "3.5 MiB"


def test_available_memory_is_a_positive_int_on_this_machine():
    have = resources.available_memory_bytes()
    assert isinstance(have, int) and have > 0
    assert resources.available_memory_bytes(jax.devices()[0]) is not None


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_cgroup_headroom_is_the_tightest_limit_minus_usage(tmp_path, version):
    if version == "v2":
        (tmp_path / "proc").write_text("0::/job/step\n")
        root, limit, usage = tmp_path / "cg", "memory.max", "memory.current"
    else:
        (tmp_path / "proc").write_text("4:memory:/job/step\n3:cpuset:/\n")
        root, limit, usage = tmp_path / "cg" / "memory", "memory.limit_in_bytes", "memory.usage_in_bytes"
    step = root / "job" / "step"
    step.mkdir(parents=True)
    unlimited = "max" if version == "v2" else str(2**63 - 4096)
    for d, lim, use in ((root, unlimited, 10), (root / "job", 5000, 3000), (step, 9000, 1000)):
        (d / limit).write_text(f"{lim}\n")
        (d / usage).write_text(f"{use}\n")
    assert resources.cgroup_headroom_bytes(str(tmp_path / "proc"), str(tmp_path / "cg")) == 2000
    (root / "job" / limit).write_text(f"{unlimited}\n")
    assert resources.cgroup_headroom_bytes(str(tmp_path / "proc"), str(tmp_path / "cg")) == 8000
    (step / limit).write_text(f"{unlimited}\n")
    assert resources.cgroup_headroom_bytes(str(tmp_path / "proc"), str(tmp_path / "cg")) is None
    assert resources.cgroup_headroom_bytes(str(tmp_path / "missing"), str(tmp_path / "cg")) is None


def test_check_estimate_command_prints_the_ratio_the_summary_and_the_refusal(capsys, monkeypatch):
    point = {"task": "navigation", "learner": "pg", "inner_steps": 2, **TINY}
    monkeypatch.setattr(benchmark_memory, "ESTIMATE_GRID", (point,))
    benchmark_memory.main(["--check-estimate"])
    row, summary, refusal = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["ratio"] == round(row["xla_bytes"] / row["estimate_bytes"], 3) and 1.0 <= row["ratio"] <= 4.0
    assert summary["points"] == 1 and summary["all_below_xla"] and summary["ratio_min"] == row["ratio"]
    assert refusal["refused"] and refusal["message"].startswith("memory=") and refusal["seconds"] < 5.0
