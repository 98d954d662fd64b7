"""Checkpoints on orbax-checkpoint: bitwise roundtrip, pruning, staging directories, SIGKILL mid-save, damage
detection (our checksums, where orbax has none), two processes, clear errors."""

from __future__ import annotations

import json
import os
import pathlib
import random
import socket
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
    assert path == str(tmp_path / "step_00000007") and os.path.isdir(path)
    assert sorted(os.listdir(tmp_path)) == ["step_00000007"]  # no staging directory left behind
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
    assert sorted(os.listdir(tmp_path)) == ["step_00000001", "step_00000005", "step_00000009"]  # pruned ones gone


def test_relative_directory(tmp_path, monkeypatch):
    """A relative ``directory`` works (orbax itself takes absolute paths only) and names the checkpoint as given."""
    monkeypatch.chdir(tmp_path)
    path = ckpt.save_checkpoint(os.path.join("runs", "ckpts"), 1, {"x": jnp.float32(1.0)})
    assert path == os.path.join("runs", "ckpts", "step_00000001")
    assert ckpt.latest_checkpoint(os.path.join("runs", "ckpts")) == path and _value_at(path) == 1.0


def test_latest_ignores_temporaries_and_other_files(tmp_path):
    ckpt.save_checkpoint(tmp_path, 3, {"x": jnp.float32(3.0)})
    (tmp_path / "step_00000099.tmp").mkdir()  # a leftover temp dir
    (tmp_path / ".tmp-step_00000100-otherhost-1-abc").write_bytes(b"partial")
    (tmp_path / ".tmp-step_00000100-otherhost-1-abc.orbax-checkpoint-tmp-7").mkdir()  # orbax's half-written one
    (tmp_path / "step_00000101").mkdir()  # a directory without orbax's step metadata is no checkpoint
    (tmp_path / "step_00000102").write_bytes(b"old")  # nor is a file (the format before orbax)
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
    # What a killed save leaves now: orbax's temporary directory of a staging directory, a staging directory,
    # a pruned checkpoint renamed away but not yet deleted; and a live process's staging directory (keep).
    stale_dirs = [tmp_path / f".tmp-step_00000006-{host}-{dead_pid}-ab.orbax-checkpoint-tmp-17",
                  tmp_path / f".tmp-step_00000006-{host}-{dead_pid}-cd",
                  tmp_path / f".tmp-step_00000002-{host}-{dead_pid}-ef-pruned"]
    live_dir = tmp_path / f".tmp-step_00000006-{host}-{os.getppid()}-gh"
    for path in stale_dirs + [live_dir]:
        (path / "ocdbt.process_0").mkdir(parents=True)
        (path / "ocdbt.process_0" / "manifest.ocdbt").write_bytes(b"partial")
    for step in (1, 2):
        ckpt.save_checkpoint(tmp_path, step, {"x": jnp.float32(step)})
    ckpt.save_checkpoint(tmp_path, 5, {"x": jnp.float32(5.0)})
    assert not stale.exists() and live.exists()
    assert not any(path.exists() for path in more_stale) and all(path.exists() for path in others)
    assert not any(path.exists() for path in stale_dirs) and live_dir.exists()


def _values(seed: int):
    return {"x": jnp.asarray(np.random.default_rng(seed).standard_normal(4096), jnp.float32)}


_XS = {"x": jnp.zeros(4096, jnp.float32)}


def _data_file(checkpoint) -> pathlib.Path:
    """The largest file of ``checkpoint`` (a directory): the (zstd-compressed) bytes of its 16 KB array."""
    files = [path for path in pathlib.Path(checkpoint).rglob("*") if path.is_file()]
    return max(files, key=lambda path: path.stat().st_size)


def _flip_middle(path: pathlib.Path) -> bytes:
    """Flip one byte in the middle of ``path``, as a failing disk does; returns the original bytes."""
    original = path.read_bytes()
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0xFF
    path.write_bytes(bytes(damaged))
    return original


def _same(tree, seed: int) -> bool:
    return np.array_equal(np.asarray(tree["x"]), np.asarray(_values(seed)["x"]))


def test_corrupt_latest_falls_back_to_previous(tmp_path):
    """A flipped byte in the array data (which orbax reads back without complaint, see
    ``test_what_orbax_alone_cannot_do``) fails our checksum; a truncated data file or a rewritten metadata value
    is caught too; :func:`restore_latest` falls back to the previous checkpoint with a warning."""
    ckpt.save_checkpoint(tmp_path, 1, _values(1))
    path = ckpt.save_checkpoint(tmp_path, 2, _values(2), metadata={"iteration": 2})
    data_file = _data_file(path)
    original = _flip_middle(data_file)
    with pytest.raises(ckpt.CheckpointCorruptError, match=r"checksum of leaf \['x'\]"):
        ckpt.restore_checkpoint(path, _XS)
    data_file.write_bytes(original[:20])  # truncated
    with pytest.raises(ckpt.CheckpointCorruptError, match="damaged"):
        ckpt.restore_checkpoint(path, _XS)
    with pytest.warns(RuntimeWarning, match="skipping unreadable"):
        step, tree, _ = ckpt.restore_latest(tmp_path, _XS)
    assert step == 1 and _same(tree, 1)
    # The metadata lives in orbax's step metadata, as JSON: a changed value that still parses is caught.
    data_file.write_bytes(original)
    assert ckpt.restore_checkpoint(path, _XS)[1] == {"iteration": 2}
    step_metadata = pathlib.Path(path) / ckpt.ORBAX_STEP_METADATA
    record = json.loads(step_metadata.read_text())
    record["custom_metadata"][ckpt.MANIFEST_KEY]["metadata"] = json.dumps({"iteration": 3})
    step_metadata.write_text(json.dumps(record))
    with pytest.raises(ckpt.CheckpointCorruptError, match="checksum of its manifest"):
        ckpt.restore_checkpoint(path, _XS)


def test_torn_newest_checkpoint_is_skipped_with_a_warning_naming_it(tmp_path):
    """A newest checkpoint whose array data file is cut off in the middle (what a non-atomic write killed
    mid-way leaves): :func:`restore_latest` warns once, naming the checkpoint, and returns the previous step."""
    ckpt.save_checkpoint(tmp_path, 1, _values(1))
    path = ckpt.save_checkpoint(tmp_path, 2, _values(2))
    data_file = _data_file(path)
    data_file.write_bytes(data_file.read_bytes()[: data_file.stat().st_size // 2])
    with pytest.warns(RuntimeWarning) as record:
        step, tree, _ = ckpt.restore_latest(tmp_path, _XS)
    assert step == 1 and _same(tree, 1)
    messages = [str(w.message) for w in record if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "skipping unreadable checkpoint" in messages[0], messages
    assert path in messages[0] and "damaged" in messages[0], messages


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax's event loop, on errors
def test_damage_anywhere_is_reported_or_harmless(tmp_path):
    """Bytes flipped at random places of every file of a checkpoint, each file cut in half, each file deleted:
    a restore either raises :class:`CheckpointCorruptError` or returns exactly what was saved, never other
    values and never another exception."""
    tree = {"w": jnp.arange(300, dtype=jnp.float32) * 1.5 + 0.25, "key": jax.random.key(3), "n": 7,
            "mask": np.array([True, False])}
    path = ckpt.save_checkpoint(tmp_path, 1, tree, metadata={"m": 1})
    rng = random.Random(0)
    outcomes = set()

    def outcome():
        try:
            restored, meta = ckpt.restore_checkpoint(path, tree)
        except ckpt.CheckpointCorruptError:
            return "reported"
        _assert_bitwise_equal(restored, tree)
        assert meta == {"m": 1}
        return "harmless"

    files = sorted(p for p in pathlib.Path(path).rglob("*") if p.is_file())
    assert len(files) >= 5, files
    for file in files:
        original = file.read_bytes()
        for at in rng.sample(range(len(original)), min(4, len(original))):
            damaged = bytearray(original)
            damaged[at] ^= 0xFF
            file.write_bytes(bytes(damaged))
            outcomes.add(outcome())
        file.write_bytes(original[: len(original) // 2])
        outcomes.add(outcome())
        file.unlink()
        outcomes.add(outcome())
        file.write_bytes(original)
    assert outcome() == "harmless" and "reported" in outcomes


def test_what_orbax_alone_cannot_do(tmp_path):
    """Why two parts stay our own (module docstring): orbax refuses zero-size arrays and empty trees, and reads
    back a flipped byte of array data without complaint. Our checkpoints store those and catch that."""
    import orbax.checkpoint as ocp

    checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler())
    with pytest.raises(ValueError, match="zero size"):
        checkpointer.save(tmp_path / "zero", args=ocp.args.PyTreeSave({"e": np.zeros((0, 2), np.float32)}))
    with pytest.raises(ValueError, match="empty"):
        checkpointer.save(tmp_path / "empty", args=ocp.args.PyTreeSave({}))
    for tree in ({"e": np.zeros((0, 2), np.float32)}, {}, {"n": None}):
        path = ckpt.save_checkpoint(tmp_path / "ours", 0, tree)
        _assert_bitwise_equal(ckpt.restore_checkpoint(path, tree)[0], tree)

    path = ckpt.save_checkpoint(tmp_path / "flip", 0, _values(2))
    _flip_middle(_data_file(path))
    (key,) = [spec["key"] for spec in json.loads((pathlib.Path(path) / ckpt.ORBAX_STEP_METADATA).read_text())
              ["custom_metadata"][ckpt.MANIFEST_KEY]["leaves"].values()]
    by_orbax = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
        restore_args={key: ocp.RestoreArgs(restore_type=np.ndarray)}))[key]
    assert by_orbax.shape == (4096,) and not np.array_equal(by_orbax, np.asarray(_values(2)["x"]))  # silently wrong
    with pytest.raises(ckpt.CheckpointCorruptError, match="checksum"):
        ckpt.restore_checkpoint(path, _XS)


def test_checkpoint_is_an_orbax_checkpoint(tmp_path):
    """Orbax alone reads a checkpoint: the leaves as ``leaf_<i>`` arrays in flattening order, the manifest (paths,
    specs, checksums, metadata) in its step metadata."""
    import orbax.checkpoint as ocp

    tree = {"b": np.arange(3, dtype=np.int32), "a": {"w": jnp.ones((2, 2)), "key": jax.random.key(5)}}
    path = ckpt.save_checkpoint(tmp_path, 3, tree, metadata={"note": "x"})
    checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler())
    raw = checkpointer.restore(path)
    manifest = checkpointer.metadata(path).custom_metadata[ckpt.MANIFEST_KEY]
    assert manifest["step"] == 3 and json.loads(manifest["metadata"]) == {"note": "x"}
    specs = manifest["leaves"]
    assert list(specs) == ["['a']['key']", "['a']['w']", "['b']"]
    assert [specs[p]["key"] for p in specs] == ["leaf_00000", "leaf_00001", "leaf_00002"] == sorted(raw)
    np.testing.assert_array_equal(np.asarray(raw["leaf_00000"]), np.asarray(jax.random.key_data(tree["a"]["key"])))
    np.testing.assert_array_equal(np.asarray(raw["leaf_00002"]), tree["b"])
    assert specs["['a']['key']"]["kind"] == "key" and specs["['b']"]["sha256"] is not None


# --------------------------------------------------------------------------- atomic writes
#
# The documented protocol: orbax writes a staging directory in the same directory, whose files are
# fsync-ed; then it gets the final name in one step: os.replace for a new step, an atomic exchange of
# the two names for an existing one. A writer that wrote straight to the final name would expose a
# partial checkpoint (or clobber the previous one) whenever the process dies mid-write; these tests
# fail for it.

_X = {"x": jnp.zeros((), jnp.float32)}


def _value_at(path) -> float:
    return float(ckpt.restore_checkpoint(path, _X)[0]["x"])


def _is_staging(path, tmp_path) -> bool:
    return os.path.dirname(path) == str(tmp_path) and os.path.basename(path).startswith(".tmp-step_")


def test_save_publishes_a_complete_staging_directory_with_one_os_replace(tmp_path, monkeypatch):
    """Saving a new step 5: ``os.replace`` is called once, from a ``.tmp-step_`` directory in the same directory
    that already holds the complete new checkpoint, onto ``step_00000005``, which did not exist until then."""
    ckpt.save_checkpoint(tmp_path, 4, {"x": jnp.float32(1.0)})
    calls = []
    real_replace = os.replace

    def spy(src, dst):
        calls.append({"src": os.fspath(src), "dst": os.fspath(dst), "src_value": _value_at(src),
                      "dst_exists": os.path.exists(dst)})
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    final = ckpt.save_checkpoint(tmp_path, 5, {"x": jnp.float32(2.0)}, keep=None)
    assert len(calls) == 1, calls
    (call,) = calls
    assert call["dst"] == final == str(tmp_path / "step_00000005") and _is_staging(call["src"], tmp_path)
    assert call["src_value"] == 2.0 and not call["dst_exists"]  # complete new checkpoint, nothing clobbered
    assert _value_at(final) == 2.0 and not os.path.exists(call["src"])
    assert sorted(os.listdir(tmp_path)) == ["step_00000004", "step_00000005"]


@pytest.mark.skipif(ckpt._renameat2() is None, reason="no renameat2 on this system (the fallback is tested below)")
def test_resave_exchanges_the_complete_staging_directory_with_the_old_checkpoint(tmp_path, monkeypatch):
    """Re-saving step 4: one atomic exchange of a complete ``.tmp-step_`` directory with ``step_00000004``, which
    until then still holds the old checkpoint; no ``os.replace``; the old copy is deleted afterwards."""
    final = ckpt.save_checkpoint(tmp_path, 4, {"x": jnp.float32(1.0)})
    calls = []
    real_exchange = ckpt._exchange

    def spy(a, b):
        calls.append({"a": a, "b": b, "a_value": _value_at(a), "b_value": _value_at(b)})
        done = real_exchange(a, b)
        calls[-1]["after"] = (_value_at(a), _value_at(b))
        return done

    def no_replace(src, dst):
        raise AssertionError(f"os.replace({src}, {dst}) while an exchange is available")

    monkeypatch.setattr(ckpt, "_exchange", spy)
    monkeypatch.setattr(os, "replace", no_replace)
    assert ckpt.save_checkpoint(tmp_path, 4, {"x": jnp.float32(2.0)}) == final
    assert len(calls) == 1, calls
    (call,) = calls
    assert call["b"] == final and _is_staging(call["a"], tmp_path)
    assert call["a_value"] == 2.0 and call["b_value"] == 1.0 and call["after"] == (1.0, 2.0)
    assert _value_at(final) == 2.0 and sorted(os.listdir(tmp_path)) == ["step_00000004"]


def test_resave_without_an_exchange_moves_the_old_one_aside_then_the_new_one_in(tmp_path, monkeypatch):
    """Where the system has no atomic exchange: two renames (old aside to a ``.tmp-step_`` name, new in), the old
    copy deleted; if the second rename fails, the old checkpoint is put back."""
    monkeypatch.setattr(ckpt, "_renameat2", lambda: None)
    final = ckpt.save_checkpoint(tmp_path, 4, {"x": jnp.float32(1.0)})
    calls = []
    real_replace = os.replace

    def spy(src, dst):
        calls.append((os.fspath(src), os.fspath(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    assert ckpt.save_checkpoint(tmp_path, 4, {"x": jnp.float32(2.0)}) == final
    assert len(calls) == 2 and calls[0][0] == final and calls[1][1] == final, calls
    assert _is_staging(calls[0][1], tmp_path) and _is_staging(calls[1][0], tmp_path)
    assert _value_at(final) == 2.0 and sorted(os.listdir(tmp_path)) == ["step_00000004"]

    def second_fails(src, dst):
        calls.append((src, dst))
        if len(calls) % 2 == 0 and os.fspath(dst) == final:
            raise OSError("simulated failure of the second rename")
        return real_replace(src, dst)

    calls.clear()
    monkeypatch.setattr(os, "replace", second_fails)
    with pytest.raises(OSError, match="second rename"):
        ckpt.save_checkpoint(tmp_path, 4, {"x": jnp.float32(3.0)})
    assert _value_at(final) == 2.0 and sorted(os.listdir(tmp_path)) == ["step_00000004"]


def test_exchange_swaps_two_directories(tmp_path):
    """``_exchange`` swaps two names in one step where the system can (Linux), and changes nothing where not."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_text("a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "f").write_text("b")
    swapped = ckpt._exchange(str(tmp_path / "a"), str(tmp_path / "b"))
    assert swapped == (ckpt._renameat2() is not None)
    assert (tmp_path / "a" / "f").read_text() == ("b" if swapped else "a")
    assert (tmp_path / "b" / "f").read_text() == ("a" if swapped else "b")
    if swapped:
        with pytest.raises(FileNotFoundError):
            ckpt._exchange(str(tmp_path / "a"), str(tmp_path / "missing"))


def test_failed_rename_leaves_the_previous_checkpoint_intact_and_no_partial_file(tmp_path, monkeypatch):
    """A save that dies at the rename (``os.replace`` or the exchange raises) changes nothing visible: the old
    step 4 restores, there is no step 5, the staging directory is removed, and ``restore_latest`` finds step 4
    without a warning."""
    ckpt.save_checkpoint(tmp_path, 4, {"x": jnp.float32(1.0)})

    def fail(src, dst):
        raise OSError("simulated crash at the rename")

    monkeypatch.setattr(os, "replace", fail)
    monkeypatch.setattr(ckpt, "_exchange", fail)
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


def test_subtree_restores_one_part_and_ignores_the_rest(tmp_path, monkeypatch):
    """``subtree=".meta_params"`` reads the parameters of a saved state whatever its other leaves are; orbax is
    asked for those arrays only."""
    from metarl_jax.algorithms.maml import MetaTrainState

    params = {"policy": {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}}
    state = MetaTrainState(params, optax.adam(1e-3).init(params), jax.random.PRNGKey(3), jnp.array(7, jnp.int32))
    ckpt.save_checkpoint(tmp_path, 7, state)
    target = jax.tree.map(jnp.zeros_like, params)
    asked = []
    real_checkpointer = ckpt._checkpointer

    class Spy:
        def __init__(self):
            self._real = real_checkpointer()

        def metadata(self, path):
            return self._real.metadata(path)

        def restore(self, path, args):
            asked.append(sorted(args.restore_args))
            return self._real.restore(path, args=args)

    monkeypatch.setattr(ckpt, "_checkpointer", Spy)
    step, restored, _ = ckpt.restore_latest(tmp_path, target, subtree=".meta_params")
    assert step == 7
    _assert_bitwise_equal(restored, params)
    assert asked == [["leaf_00000", "leaf_00001"]]  # of the saved leaves' 7 arrays: the two parameters
    monkeypatch.undo()
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


def test_files_of_the_format_before_orbax_are_reported_not_read(tmp_path):
    """A directory holding only checkpoint files of the earlier single-file format: nothing to restore, with a
    warning saying why; reading such a file names it."""
    (tmp_path / "step_00000003").write_bytes(b"METARL_JAX_CKPT\n" + bytes(40))
    assert ckpt.latest_checkpoint(tmp_path) is None
    with pytest.warns(RuntimeWarning, match="format before orbax"):
        assert ckpt.restore_latest(tmp_path, _X) is None
    with pytest.raises(ckpt.CheckpointCorruptError, match="format before orbax"):
        ckpt.restore_checkpoint(tmp_path / "step_00000003", _X)
    # saving over it replaces the file with a checkpoint directory
    path = ckpt.save_checkpoint(tmp_path, 3, {"x": jnp.float32(3.0)})
    assert os.path.isdir(path) and _value_at(path) == 3.0 and sorted(os.listdir(tmp_path)) == ["step_00000003"]


def test_orbax_is_imported_on_first_use_only(monkeypatch):
    """The module imports without orbax-checkpoint (import time; the GPU image may lack it), and a save without it
    says what to install. The training loop reaches orbax only through this module."""
    import importlib.util

    for name in [n for n in sys.modules if n == "orbax" or n.startswith("orbax.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "orbax", None)  # any import of orbax now fails
    spec = importlib.util.spec_from_file_location("checkpoint_without_orbax", ckpt.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(ImportError, match="pip install 'orbax-checkpoint"):
        module.save_checkpoint(os.devnull + "-never", 0, {"x": jnp.zeros(())})
    loop_source = (REPO / "metarl_jax" / "training" / "loop.py").read_text()
    assert "orbax" not in loop_source and "checkpoint as ckpt" in loop_source


# --------------------------------------------------------------------------- two processes

TWO_PROCESSES = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, {repo!r})
    import jax
    process, port, directory = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    jax.distributed.initialize(coordinator_address=f"localhost:{{port}}", num_processes=2, process_id=process)
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec
    from metarl_jax.training import checkpoint as ckpt

    if process != 0:  # only process 0 touches the directory's names (orbax writes this process's shards)
        def forbidden(*args, **kwargs):
            raise AssertionError("process 1 renamed, pruned or deleted checkpoint files")
        for name in ("_publish", "_discard", "_remove_stale_temporaries", "_fsync_tree"):
            setattr(ckpt, name, forbidden)
    sharding = NamedSharding(jax.make_mesh((2,), ("x",), devices=jax.devices()), PartitionSpec("x"))
    full = np.arange(12, dtype=np.float32).reshape(4, 3)

    def state(scale):
        return {{"global": jax.make_array_from_callback((4, 3), sharding, lambda index: scale * full[index]),
                 "keys": jax.jit(lambda: jax.random.split(jax.random.key(scale), 4), out_shardings=sharding)(),
                 "local": np.full(3, process, np.int32), "step": 5 + process}}

    ckpt.save_checkpoint(directory, 1, state(1), {{"process": process}})
    ckpt.save_checkpoint(directory, 1, state(1), {{"process": process}})  # over an existing step
    ckpt.save_checkpoint(directory, 2, state(1), {{"process": process}}, keep=1)
    assert sorted(os.listdir(directory)) == ["step_00000002"], os.listdir(directory)
    step, restored, meta = ckpt.restore_latest(directory, state(0))
    assert step == 2 and meta == {{"process": 0}}
    assert restored["local"].tolist() == [0, 0, 0] and restored["step"] == 5  # process 0's values
    assert restored["global"].sharding == sharding
    for shard in restored["global"].addressable_shards:  # this process's rows
        np.testing.assert_array_equal(np.asarray(shard.data), full[shard.index])
    np.testing.assert_array_equal(np.asarray(jax.random.key_data(restored["keys"]).addressable_shards[0].data),
                                  np.asarray(jax.random.key_data(state(1)["keys"]).addressable_shards[0].data))
    print("ok", process, flush=True)
    """
)


def test_two_processes_save_one_checkpoint_written_by_process_0(tmp_path):
    """``jax.process_count() == 2`` (two CPU processes): each writes the shards of a sharded array it holds,
    process 0 alone writes the rest (its own process-local values), the metadata and the directory's names."""
    helper = tmp_path / "two.py"
    helper.write_text(TWO_PROCESSES.format(repo=str(REPO)))
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        port = str(probe.getsockname()[1])
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    procs = [subprocess.Popen([sys.executable, str(helper), str(i), port, str(tmp_path / "ckpts")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        outputs = [proc.communicate(timeout=120) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    for i, (proc, (out, err)) in enumerate(zip(procs, outputs)):
        assert proc.returncode == 0 and f"ok {i}" in out, err[-3000:]
