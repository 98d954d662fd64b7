"""Checkpoints: bitwise roundtrip, pruning, temp-file handling, SIGKILL mid-save, clear errors."""

from __future__ import annotations

import os
import pathlib
import random
import subprocess
import sys
import stat
import textwrap
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metarl_jax.training import checkpoint as ckpt

REPO = pathlib.Path(__file__).resolve().parents[1]


def _tree(seed: int = 0):
    k = jax.random.key(seed)
    params = {
        "dense": {"w": jax.random.normal(k, (4, 3), jnp.float32), "b": jnp.arange(3, dtype=jnp.float32)},
        "table": jnp.array([[1, -2], [3, 2**31 - 1]], jnp.int32),
    }
    opt = optax.adam(1e-3)
    opt_state = opt.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    _, opt_state = opt.update(grads, opt_state, params)  # non-trivial mu / nu / count
    return {
        "params": params,
        "opt_state": opt_state,
        "mask": jnp.array([True, False, True]),
        "raw_key": jax.random.PRNGKey(seed + 7),  # uint32[2]
        "typed_keys": jax.random.split(jax.random.key(seed + 3), 5),  # key<fry>[5]
        "scores": np.array([0.5, np.nan, -np.inf], np.float32),  # numpy stays numpy
        "step": 12345,  # Python int stays Python int
        "lr": 0.25,
        "empty": jnp.zeros((0, 2), jnp.float32),
        "nothing": None,
        "tuple": (jnp.float32(1.5), np.int64(2**40)),
    }


def _assert_bitwise_equal(a, b):
    leaves_a, tree_a = jax.tree_util.tree_flatten(a)
    leaves_b, tree_b = jax.tree_util.tree_flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b):
        assert type(x) is type(y) or (isinstance(x, jax.Array) and isinstance(y, jax.Array))
        if isinstance(x, (int, float)):
            assert x == y
            continue
        assert x.dtype == y.dtype and x.shape == y.shape
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            assert str(jax.random.key_impl(x)) == str(jax.random.key_impl(y))
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()


def test_roundtrip_is_bitwise(tmp_path):
    tree = _tree(0)
    meta = {"config": {"lr": 1e-3, "name": "adam"}, "metrics": [1.0, 2.5], "nan": None}
    path = ckpt.save_checkpoint(tmp_path, 7, tree, metadata=meta)
    assert path == str(tmp_path / "step_00000007") and os.path.isfile(path)
    restored, restored_meta = ckpt.restore_checkpoint(path, _tree(1))  # a different-valued target
    _assert_bitwise_equal(restored, tree)
    assert restored_meta == meta
    # the restored optimizer state is usable
    opt = optax.adam(1e-3)
    updates, _ = opt.update(jax.tree.map(jnp.ones_like, restored["params"]), restored["opt_state"])
    assert jax.tree.structure(updates) == jax.tree.structure(tree["params"])
    # the restored typed keys still draw the same numbers
    np.testing.assert_array_equal(
        np.asarray(jax.random.normal(restored["typed_keys"][2], (3,))),
        np.asarray(jax.random.normal(tree["typed_keys"][2], (3,))),
    )


def test_restore_into_shape_dtype_structs(tmp_path):
    tree = {"w": jnp.ones((2, 3), jnp.float32), "key": jax.random.key(0)}
    ckpt.save_checkpoint(tmp_path, 0, tree)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
    step, restored, meta = ckpt.restore_latest(tmp_path, abstract)
    assert step == 0 and meta == {}
    _assert_bitwise_equal(restored, tree)


def test_keep_n_pruning_and_latest(tmp_path):
    assert ckpt.latest_checkpoint(tmp_path / "missing") is None
    assert ckpt.restore_latest(tmp_path / "missing", {"x": jnp.zeros(())}) is None
    for step in range(6):
        ckpt.save_checkpoint(tmp_path, step, {"x": jnp.float32(step)}, keep=3)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [3, 4, 5]
    assert ckpt.latest_checkpoint(tmp_path) == str(tmp_path / "step_00000005")
    # re-saving an existing step replaces it atomically
    ckpt.save_checkpoint(tmp_path, 5, {"x": jnp.float32(50.0)}, metadata={"again": True}, keep=3)
    step, tree, meta = ckpt.restore_latest(tmp_path, {"x": jnp.zeros((), jnp.float32)})
    assert step == 5 and float(tree["x"]) == 50.0 and meta == {"again": True}
    # saving an older step never deletes the file it just wrote
    ckpt.save_checkpoint(tmp_path, 1, {"x": jnp.float32(1.0)}, keep=1)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [1, 5]
    ckpt.save_checkpoint(tmp_path, 9, {"x": jnp.float32(9.0)}, keep=None)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [1, 5, 9]


def test_latest_ignores_temporaries_and_other_files(tmp_path):
    ckpt.save_checkpoint(tmp_path, 3, {"x": jnp.float32(3.0)})
    (tmp_path / "step_00000099.tmp").mkdir()  # a leftover temp dir
    (tmp_path / ".tmp-step_00000100-otherhost-1-abc").write_bytes(b"partial")
    (tmp_path / "step_00000101").mkdir()  # a directory is never a checkpoint of ours
    (tmp_path / "notes.txt").write_text("hi")
    assert ckpt.latest_checkpoint(tmp_path) == str(tmp_path / "step_00000003")
    step, tree, _ = ckpt.restore_latest(tmp_path, {"x": jnp.zeros((), jnp.float32)})
    assert step == 3 and float(tree["x"]) == 3.0


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    host = ckpt._host_tag()
    stale = tmp_path / f".tmp-step_00000004-{host}-{dead_pid}-xyz"
    live = tmp_path / f".tmp-step_00000004-{host}-{os.getppid()}-xyz"  # a live process: keep
    stale.write_bytes(b"partial")
    live.write_bytes(b"partial")
    # More names of both kinds, in whatever order the directory lists them: every stale temporary goes, even
    # after names that are not this host's temporaries (another host's, finished checkpoints, other files).
    more_stale = [tmp_path / f".tmp-step_0000000{i}-{host}-{dead_pid}-s{i}" for i in range(1, 4)]
    others = [tmp_path / f".tmp-step_00000004-otherhost-{dead_pid}-xyz", tmp_path / "notes.txt",
              tmp_path / ".tmp-unrelated"]
    for path in more_stale + others:
        path.write_bytes(b"partial")
    for step in (1, 2):
        ckpt.save_checkpoint(tmp_path, step, {"x": jnp.float32(step)})
    ckpt.save_checkpoint(tmp_path, 5, {"x": jnp.float32(5.0)})
    assert not stale.exists() and live.exists()
    assert not any(path.exists() for path in more_stale) and all(path.exists() for path in others)


def test_corrupt_latest_falls_back_to_previous(tmp_path):
    ckpt.save_checkpoint(tmp_path, 1, {"x": jnp.float32(1.0)})
    path = ckpt.save_checkpoint(tmp_path, 2, {"x": jnp.float32(2.0)})
    data = bytearray(pathlib.Path(path).read_bytes())
    data[-3] ^= 0xFF  # a flipped byte, as from a failing disk
    pathlib.Path(path).write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointCorruptError, match="checksum"):
        ckpt.restore_checkpoint(path, {"x": jnp.zeros((), jnp.float32)})
    pathlib.Path(path).write_bytes(bytes(data[:20]))  # truncated
    with pytest.raises(ckpt.CheckpointCorruptError):
        ckpt.restore_checkpoint(path, {"x": jnp.zeros((), jnp.float32)})
    with pytest.warns(RuntimeWarning, match="skipping unreadable"):
        step, tree, _ = ckpt.restore_latest(tmp_path, {"x": jnp.zeros((), jnp.float32)})
    assert step == 1 and float(tree["x"]) == 1.0


def test_torn_newest_checkpoint_is_skipped_with_a_warning_naming_it(tmp_path):
    """A newest file cut off in the middle of its body (what a non-atomic write killed mid-way leaves):
    :func:`restore_latest` warns once, naming the file and the checksum, and returns the previous step."""
    ckpt.save_checkpoint(tmp_path, 1, {"x": jnp.float32(1.0)})
    path = pathlib.Path(ckpt.save_checkpoint(tmp_path, 2, {"x": jnp.float32(2.0)}))
    data = path.read_bytes()
    path.write_bytes(data[: len(ckpt.MAGIC) + 32 + (len(data) - len(ckpt.MAGIC) - 32) // 2])  # header intact
    with pytest.warns(RuntimeWarning) as record:
        step, tree, _ = ckpt.restore_latest(tmp_path, {"x": jnp.zeros((), jnp.float32)})
    assert step == 1 and float(tree["x"]) == 1.0
    messages = [str(w.message) for w in record if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "skipping unreadable checkpoint" in messages[0], messages
    assert str(path) in messages[0] and "checksum" in messages[0], messages


# --------------------------------------------------------------------------- atomic writes
#
# The documented protocol: the bytes go to a temporary file in the same directory, which is
# fsync-ed and then renamed onto the final name with os.replace. A writer that wrote straight
# to the final name would expose a partial file (or clobber the previous one) whenever the
# process dies mid-write; these tests fail for it.

_X = {"x": jnp.zeros((), jnp.float32)}


def _value_at(path) -> float:
    return float(ckpt.restore_checkpoint(path, _X)[0]["x"])


def test_save_writes_a_complete_temporary_file_then_os_replace_onto_the_final_name(tmp_path, monkeypatch):
    """Re-saving step 4: ``os.replace`` is called once, from a ``.tmp-step_`` file in the same directory that
    already holds the complete new checkpoint, onto ``step_00000004``, which until then still holds the old one."""
    final = ckpt.save_checkpoint(tmp_path, 4, {"x": jnp.float32(1.0)})
    calls = []
    real_replace = os.replace

    def spy(src, dst):
        calls.append({"src": os.fspath(src), "dst": os.fspath(dst), "src_value": _value_at(src),
                      "dst_value": _value_at(dst)})
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    assert ckpt.save_checkpoint(tmp_path, 4, {"x": jnp.float32(2.0)}) == final
    assert len(calls) == 1, calls
    (call,) = calls
    assert call["dst"] == final
    assert os.path.dirname(call["src"]) == str(tmp_path) and os.path.basename(call["src"]).startswith(".tmp-step_")
    assert call["src_value"] == 2.0 and call["dst_value"] == 1.0  # complete new file; old one untouched until then
    assert _value_at(final) == 2.0 and not os.path.exists(call["src"])
    assert sorted(os.listdir(tmp_path)) == ["step_00000004"]


def test_failed_rename_leaves_the_previous_checkpoint_intact_and_no_partial_file(tmp_path, monkeypatch):
    """A save that dies at the rename (``os.replace`` raises) changes nothing visible: the old step 4 restores,
    there is no step 5, the temporary file is removed, and ``restore_latest`` finds step 4 without a warning."""
    ckpt.save_checkpoint(tmp_path, 4, {"x": jnp.float32(1.0)})

    def fail(src, dst):
        raise OSError("simulated crash at the rename")

    monkeypatch.setattr(os, "replace", fail)
    for step in (4, 5):  # over an existing checkpoint, and a new step
        with pytest.raises(OSError, match="simulated crash"):
            ckpt.save_checkpoint(tmp_path, step, {"x": jnp.float32(2.0)})
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["step_00000004"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        step, tree, _ = ckpt.restore_latest(tmp_path, _X)
    assert step == 4 and float(tree["x"]) == 1.0


def test_crash_mid_write_never_exposes_a_partial_file_under_the_final_name(tmp_path, monkeypatch):
    """A save killed while its bytes are being made durable (the file's ``fsync`` raises): at that moment the
    final name still holds the previous checkpoint (step 4) or does not exist (step 5), and afterwards too."""
    ckpt.save_checkpoint(tmp_path, 4, {"x": jnp.float32(1.0)})
    seen = []
    real_fsync = os.fsync

    def crash(fd):
        if stat.S_ISREG(os.fstat(fd).st_mode):  # the checkpoint's bytes, not the directory
            names = sorted(n for n in os.listdir(tmp_path) if n.startswith("step_"))
            seen.append((names, _value_at(tmp_path / "step_00000004")))
            raise OSError("simulated crash during the write")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", crash)
    for step in (4, 5):
        with pytest.raises(OSError, match="simulated crash"):
            ckpt.save_checkpoint(tmp_path, step, {"x": jnp.float32(2.0)})
    monkeypatch.undo()
    assert seen == [(["step_00000004"], 1.0)] * 2, seen
    assert sorted(os.listdir(tmp_path)) == ["step_00000004"] and _value_at(tmp_path / "step_00000004") == 1.0


def test_mismatch_errors_name_the_leaf_and_both_shapes(tmp_path):
    path = ckpt.save_checkpoint(tmp_path, 0, {"params": {"w": jnp.zeros((4, 3)), "b": jnp.zeros(3)}})
    with pytest.raises(ValueError) as err:
        ckpt.restore_checkpoint(path, {"params": {"w": jnp.zeros((4, 5)), "b": jnp.zeros(3)}})
    assert "['params']['w']" in str(err.value) and "(4, 3)" in str(err.value) and "(4, 5)" in str(err.value)
    with pytest.raises(ValueError) as err:
        ckpt.restore_checkpoint(path, {"params": {"w": jnp.zeros((4, 3), jnp.int32), "b": jnp.zeros(3)}})
    assert "['params']['w']" in str(err.value) and "float32" in str(err.value) and "int32" in str(err.value)
    with pytest.raises(ValueError) as err:
        ckpt.restore_checkpoint(path, {"params": {"w": jnp.zeros((4, 3)), "c": jnp.zeros(3)}})
    assert "['params']['c']" in str(err.value) and "['params']['b']" in str(err.value)
    with pytest.raises(ValueError, match="raw_key"):
        p2 = ckpt.save_checkpoint(tmp_path / "keys", 0, {"raw_key": jax.random.PRNGKey(0)})
        ckpt.restore_checkpoint(p2, {"raw_key": jax.random.key(0)})  # raw uint32 into a typed key


def test_subtree_restores_one_part_and_ignores_the_rest(tmp_path):
    """``subtree=".meta_params"`` reads the parameters of a saved state whatever its other leaves are."""
    from metarl_jax.algorithms.maml import MetaTrainState

    params = {"policy": {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}}
    state = MetaTrainState(params, optax.adam(1e-3).init(params), jax.random.PRNGKey(3), jnp.array(7, jnp.int32))
    ckpt.save_checkpoint(tmp_path, 7, state)
    target = jax.tree.map(jnp.zeros_like, params)
    step, restored, _ = ckpt.restore_latest(tmp_path, target, subtree=".meta_params")
    assert step == 7
    _assert_bitwise_equal(restored, params)
    restored2, _ = ckpt.restore_checkpoint(ckpt.list_checkpoints(tmp_path)[-1][1], target, subtree=".meta_params")
    _assert_bitwise_equal(restored2, params)
    with pytest.raises(ValueError, match="subtree='.params' is invalid"):
        ckpt.restore_latest(tmp_path, target, subtree=".params")
    with pytest.raises(ValueError, match="does not match the target's structure"):  # a part with other leaves
        ckpt.restore_latest(tmp_path, {"policy": {"w": jnp.zeros((2, 3))}}, subtree=".meta_params")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"step": -1}, "step=-1"),
        ({"step": 1.5}, "step=1.5"),
        ({"keep": 0}, "keep=0"),
        ({"metadata": {"x": object()}}, "metadata is invalid"),
        ({"metadata": [1]}, "metadata=[1]"),
    ],
)
def test_save_validation(tmp_path, kwargs, message):
    args = {"directory": tmp_path, "step": 0, "pytree": {"x": jnp.zeros(())}, **kwargs}
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ckpt.save_checkpoint(**args)
    assert ckpt.latest_checkpoint(tmp_path) is None
    with pytest.raises(TypeError, match=r"\['s'\]"):
        ckpt.save_checkpoint(tmp_path, 0, {"s": "a string"})


# --------------------------------------------------------------------------- SIGKILL mid-save

N_FLOATS = 2_000_000  # 8 MB per checkpoint, so a kill often lands inside a save

HELPER = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, {repo!r})
    import numpy as np
    import jax
    from metarl_jax.training import checkpoint as ckpt

    directory, mode = sys.argv[1], sys.argv[2]
    N = {n}

    def tree(s):
        return {{"w": np.full(N, s, np.float32), "b": np.full(1000, -s, np.int32),
                 "key": jax.random.key(s), "step": s}}

    if mode == "hang_before_rename":  # a save that stalls after fsync, before os.replace
        real_replace = os.replace
        def slow_replace(src, dst):
            print("renaming", flush=True)
            time.sleep(60)
            real_replace(src, dst)
        os.replace = slow_replace

    found = ckpt.restore_latest(directory, tree(0))
    start = 0 if found is None else found[0] + 1
    for s in range(start, start + 10_000):
        ckpt.save_checkpoint(directory, s, tree(s), metadata={{"step": s}}, keep=2)
        print("saved", s, flush=True)
    """
)


def _check_complete(directory) -> int:
    target = {"w": np.zeros(N_FLOATS, np.float32), "b": np.zeros(1000, np.int32), "key": jax.random.key(0), "step": 0}
    with warnings.catch_warnings():  # atomic saves never leave a torn step_* file to skip
        warnings.simplefilter("error", RuntimeWarning)
        found = ckpt.restore_latest(directory, target)
    assert found is not None
    step, tree, meta = found
    assert meta == {"step": step} and tree["step"] == step
    assert np.all(tree["w"] == step) and np.all(tree["b"] == -step)
    np.testing.assert_array_equal(np.asarray(jax.random.key_data(tree["key"])), np.asarray(jax.random.key_data(jax.random.key(step))))
    return step


def test_sigkill_mid_save_never_breaks_latest(tmp_path):
    """A saver SIGKILLed at random moments (and once stalled before its rename): the newest checkpoint
    always restores completely, never goes back a step, and ``restore_latest`` never has to skip a torn
    file (its RuntimeWarning is an error here: a non-atomic writer trips it)."""
    helper = tmp_path / "saver.py"
    helper.write_text(HELPER.format(repo=str(REPO), n=N_FLOATS))
    directory = tmp_path / "ckpts"
    rng = random.Random(0)
    last_step = -1
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    for round_ in range(5):
        mode = "hang_before_rename" if round_ == 2 else "loop"
        proc = subprocess.Popen(
            [sys.executable, str(helper), str(directory), mode], stdout=subprocess.PIPE, text=True, env=env
        )
        try:
            first = proc.stdout.readline()
            assert first.startswith(("saved", "renaming")), first
            if mode == "loop":
                time.sleep(rng.uniform(0.0, 0.4))  # kill at a random point of a later save
        finally:
            proc.kill()  # SIGKILL
            proc.wait(timeout=30)
        step = _check_complete(directory)
        assert step >= last_step  # never goes back: the last good checkpoint survives
        if mode == "hang_before_rename":
            # the fully written but unrenamed file is a temporary: latest is the previous step
            assert step == last_step
            assert any(p.name.startswith(".tmp-step_") for p in directory.iterdir())
        last_step = step
        assert len(ckpt.list_checkpoints(directory)) <= 3
    assert last_step >= 3


def test_liveness_probe_sends_signal_zero_only(monkeypatch):
    """``_pid_alive`` asks the kernel with signal 0 (a probe that delivers nothing, never a real signal to
    another process); no such process -> dead, someone else's process (no permission) -> alive."""
    calls = []

    def fake_kill(pid, sig):
        calls.append((pid, sig))
        if pid == 1:
            raise PermissionError
        if pid == 2:
            raise ProcessLookupError

    monkeypatch.setattr(ckpt.os, "kill", fake_kill)
    assert ckpt._pid_alive(1) is True and ckpt._pid_alive(2) is False and ckpt._pid_alive(3) is True
    assert calls == [(1, 0), (2, 0), (3, 0)]
