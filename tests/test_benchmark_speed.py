"""``maml.auto_task_chunk`` (the ``--task-chunk auto`` rule), ``benchmark_speed``'s command line (tiny run)."""

import json

import numpy as np
import pytest

from experiments import benchmark_speed as bs
from metarl_jax.algorithms.maml import AUTO_TASKS_PER_CHUNK, TASK_CHUNK_UNROLL_LIMIT, auto_task_chunk


@pytest.mark.parametrize("meta_batch, expected", [(1, None), (4, None), (5, 3), (8, 4), (20, 4), (100, 13),
                                                  (4096, 512)])
def test_auto_task_chunk_on_cpu(meta_batch, expected):
    chunk = bs.resolve_task_chunk("auto", meta_batch, "cpu")
    assert chunk == expected == auto_task_chunk(meta_batch, "cpu")
    if chunk is not None:  # never more chunks than map_tasks unrolls, and every task in one
        assert -(-meta_batch // chunk) <= TASK_CHUNK_UNROLL_LIMIT


def test_task_chunk_spec_values_and_errors():
    assert bs.resolve_task_chunk("auto", 1000, "gpu") is None
    assert bs.resolve_task_chunk("none", 1000, "cpu") is None
    assert bs.resolve_task_chunk("7", 20, "cpu") == 7
    assert bs.resolve_task_chunk("auto", 1000, "gpu", accumulate=True) == AUTO_TASKS_PER_CHUNK
    assert bs.resolve_task_chunk("auto", 4, "cpu", accumulate=True) is None
    assert auto_task_chunk(20, "gpu") is None and auto_task_chunk(20, "cuda") is None
    assert auto_task_chunk(np.int64(20), "cpu") == 4
    for bad in (0, "20", 2.0, True):
        with pytest.raises(ValueError, match=f"meta_batch={bad!r} is invalid: must be an integer >= 1"):
            auto_task_chunk(bad, "cpu")
    with pytest.raises(ValueError, match="--task-chunk='0' is invalid"):
        bs.resolve_task_chunk("0", 20, "cpu")
    with pytest.raises(ValueError, match="--task-chunk='some' is invalid: allowed are 'auto', 'none'"):
        bs.resolve_task_chunk("some", 20, "cpu")


def test_cli_prints_a_record_with_the_resolved_chunk(capsys, monkeypatch):
    monkeypatch.setattr(bs, "EPISODES", 2)
    monkeypatch.setattr(bs, "HORIZON", 3)
    monkeypatch.setitem(bs.TASKS, "navigation", {"horizon": 3})
    assert bs.main(["--meta-batch", "6", "--order", "2", "--iters", "1", "--warmup", "0", "--no-flops"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    (record,) = [r for r in lines if r.get("impl") == "metarl_jax"]
    assert (record["meta_batch"], record["order"], record["task_chunk"], record["task_chunk_spec"]) == (6, 2, 3, "auto")
    assert record["horizon"] == 3 and record["median_s_per_iter"] > 0
