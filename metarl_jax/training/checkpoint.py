"""Crash-safe checkpoints of arbitrary pytrees plus a JSON metadata dict, stored with orbax-checkpoint.

A checkpoint is one directory, ``directory/step_{step:08d}``, written by
``orbax.checkpoint`` (``Checkpointer`` + ``PyTreeCheckpointHandler``; arrays in
tensorstore OCDBT files). It holds every leaf of a pytree (params, optax state,
PRNG keys, sampler state, counters: anything ``jax.tree_util`` can flatten) and a
JSON-able metadata dict.

Layout. The leaves are saved as one flat dict ``{"leaf_00000": array, ...}``
(in ``jax.tree_util`` flattening order); orbax's step metadata
(``_CHECKPOINT_METADATA``, its ``custom_metadata``) holds our *manifest*::

    {"metarl_jax": {"format_version": 2, "step": int, "metadata": "<json>",
                    "leaves": {leaf_path: {kind, shape, dtype, impl, key, sha256}},
                    "sha256": <digest of the manifest itself>}}

``leaf_path`` is ``jax.tree_util.keystr`` of the leaf's path, ``key`` the
name of its array in the orbax tree. Arrays keep their dtype and shape bit for
bit. New-style typed PRNG keys (``jax.random.key``) are stored as their raw
``uint32`` data (``jax.random.key_data``) plus the implementation name and are
re-wrapped on restore; raw ``uint32`` keys (``jax.random.PRNGKey``) are plain
arrays; Python scalars are 0-d arrays restored as the target's Python type.

Two parts stay our own because orbax does not do them:

* *Checksums.* Orbax does not checksum array bytes (tensorstore's OCDBT checks
  its b-tree nodes, not the data files: a flipped byte in an array's data reads
  back as a wrong value without an error, as a test shows), so the manifest holds
  the ``sha256`` of every leaf's bytes (and of itself); a restore verifies the leaves
  it reads and raises :class:`CheckpointCorruptError` on a mismatch, as it does
  when orbax cannot read a damaged directory at all. :func:`restore_latest`
  then falls back to the next-newest checkpoint with a warning naming the
  skipped one.
* *Empty arrays.* Orbax refuses to save zero-size arrays (``ValueError: Cannot
  save arrays with zero size``) and empty trees (``Found empty item``);
  ``tests/test_checkpoint.py`` keeps a test that shows both. So a leaf with a zero
  in its shape is stored by its manifest entry alone (``key`` is ``null``): shape
  and dtype are all there is to it; a pytree with no other leaf gets a one-byte
  placeholder array ``no_arrays`` that is never read.

Crash safety. Orbax writes into a temporary directory and renames it when
complete; we point it at a staging name ``.tmp-step_{step:08d}-<host>-<pid>-<random>``
in the same directory, ``fsync`` every file and directory in it once orbax is
done (orbax leaves that to the OS), and only then move it to its final name: with
``os.replace`` for a new step, with an atomic exchange of the two names
(Linux ``renameat2(RENAME_EXCHANGE)``) when the step already exists, after which
the old copy is deleted. Then the directory is ``fsync``-ed and old checkpoints are
pruned (renamed away first, then deleted). A name ``step_*`` therefore only ever
points to a complete checkpoint, and a crash or SIGKILL at any moment leaves at
worst an orphaned staging directory, which :func:`latest_checkpoint` ignores and
the next :func:`save_checkpoint` on the same host deletes once the process that
wrote it is gone. Where the exchange is unavailable (other systems, some network
filesystems), re-saving an existing step moves the old copy aside and the new one in
with two renames: for that instant the step is absent and the next-newest is latest.

Multi-host (``jax.process_count() > 1``). Every process calls
:func:`save_checkpoint` with the same arguments (orbax synchronises them). Leaves
that are ``jax.Array`` s spanning several processes are handed to orbax as they
are: each process writes the shards it holds (orbax writes replica 0 of each
shard once). Every other leaf is converted to numpy and written by process 0 only
(orbax's numpy handler), as are the manifest and step metadata; the staging name
is chosen by process 0 and broadcast, and the final rename, ``fsync``, pruning and
removal of stale temporaries run on process 0 only, with a barrier before any
process returns. Such cross-process leaves carry no checksum (it would need the
whole array on one host): they are restored with the target's sharding.

Restoring needs a *target* pytree that gives the structure (e.g. freshly
initialised params and optimizer state, or ``jax.ShapeDtypeStruct`` leaves):
leaves are matched by path, and any difference in paths, shapes or dtypes is a
``ValueError`` that names the leaf. Restored ``jax.Array`` leaves get the
target leaf's sharding; numpy leaves stay numpy; Python scalars stay Python
scalars. Saves are synchronous: when :func:`save_checkpoint` returns, the
checkpoint is complete, durable and listed.

``orbax.checkpoint`` is imported on the first save or restore, not with this
module, so importing the training loop neither pays its import time nor needs it
installed. Checkpoint files written before the move to orbax (one regular file per
step) are not read; :func:`restore_latest` warns when it finds only those.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import itertools
import json
import os
import re
import secrets
import shutil
import socket
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from metarl_jax.validation import check_int, require

__all__ = [
    "CheckpointCorruptError",
    "checkpoint_path",
    "latest_checkpoint",
    "list_checkpoints",
    "restore_checkpoint",
    "restore_latest",
    "save_checkpoint",
]

FORMAT_VERSION = 2
MANIFEST_KEY = "metarl_jax"  # our entry in orbax's custom_metadata
ORBAX_STEP_METADATA = "_CHECKPOINT_METADATA"  # the file orbax writes into every checkpoint directory
_CHECKPOINT_RE = re.compile(r"^step_(\d{8,})$")
_TEMP_PREFIX = ".tmp-step_"
_TEMP_RE = re.compile(r"^\.tmp-step_\d+-(?P<host>[A-Za-z0-9_.]*)-(?P<pid>\d+)-")
_PLACEHOLDER = "no_arrays"  # the orbax tree of a pytree without a non-empty array
_NAME_BYTES = 256  # room for a staging name broadcast between processes
_barrier_ids = itertools.count()


class CheckpointCorruptError(ValueError):
    """A checkpoint is truncated, damaged or not a checkpoint of this format."""


def _ocp():
    """``orbax.checkpoint``, imported on first use (see the module docstring)."""
    try:
        import orbax.checkpoint as ocp
    except ImportError as err:
        raise ImportError(
            "checkpoints need orbax-checkpoint, which is not installed: pip install 'orbax-checkpoint>=0.11.25,<0.13'"
        ) from err
    return ocp


def _checkpointer():
    ocp = _ocp()
    return ocp.Checkpointer(ocp.PyTreeCheckpointHandler())


# --------------------------------------------------------------------------- paths


def checkpoint_path(directory: str | os.PathLike, step: int) -> str:
    """Path of the checkpoint of ``step`` in ``directory``: ``directory/step_{step:08d}``."""
    return os.path.join(os.fspath(directory), f"step_{step:08d}")


def list_checkpoints(directory: str | os.PathLike) -> list[tuple[int, str]]:
    """Complete checkpoints in ``directory`` as ``(step, path)``, oldest step first.

    Only directories named ``step_<digits>`` that hold orbax's step metadata count:
    staging directories of saves in progress (or killed) and anything else are ignored.
    """
    directory = os.fspath(directory)
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        match = _CHECKPOINT_RE.match(name)
        path = os.path.join(directory, name)
        if match and os.path.isfile(os.path.join(path, ORBAX_STEP_METADATA)):
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(directory: str | os.PathLike) -> str | None:
    """Path of the complete checkpoint with the highest step, or ``None`` if there is none."""
    found = list_checkpoints(directory)
    return found[-1][1] if found else None


# --------------------------------------------------------------------------- encoding


def _is_key_dtype(dtype) -> bool:
    return jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _spans_processes(leaf: Any) -> bool:
    """Whether ``leaf`` (an array or a target) lives on devices of several processes."""
    sharding = getattr(leaf, "sharding", None)
    return sharding is not None and not sharding.is_fully_addressable


def _digest(data: np.ndarray) -> str:
    """sha256 (hex) of the bytes of ``data`` in C order."""
    return hashlib.sha256(np.ascontiguousarray(data).reshape(-1).view(np.uint8)).hexdigest()


def _encode_leaf(path: str, leaf: Any) -> tuple[Any, dict[str, Any]]:
    """``(data to store, spec)`` of one leaf: data is numpy, or a ``jax.Array`` that spans processes."""
    if isinstance(leaf, (bool, int, float, complex, np.generic)) and not isinstance(leaf, np.ndarray):
        data = np.asarray(leaf)
        kind = "scalar" if not isinstance(leaf, np.generic) else "array"
        return data, {"kind": kind, "shape": [], "dtype": str(data.dtype), "impl": ""}
    if isinstance(leaf, (jax.Array, np.ndarray)):
        if _is_key_dtype(leaf.dtype):
            raw = jax.random.key_data(leaf)
            data = raw if _spans_processes(raw) else np.asarray(jax.device_get(raw))
            impl = str(jax.random.key_impl(leaf))
            return data, {"kind": "key", "shape": list(leaf.shape), "dtype": str(leaf.dtype), "impl": impl}
        data = leaf if _spans_processes(leaf) else np.asarray(jax.device_get(leaf))
        if np.dtype(data.dtype).kind not in "biufc":
            raise TypeError(
                f"leaf {path} has dtype {data.dtype}, which a checkpoint cannot store: "
                "only bool, integer, float, complex arrays and PRNG keys (put other data in metadata)"
            )
        return data, {"kind": "array", "shape": list(data.shape), "dtype": str(data.dtype), "impl": ""}
    raise TypeError(
        f"leaf {path} has type {type(leaf).__name__}, which a checkpoint cannot store: "
        "only arrays, PRNG keys and Python/numpy scalars (put other data in metadata)"
    )


def _manifest_digest(manifest: dict[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _encode(step: int, pytree: Any, metadata_json: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(arrays for orbax by key, manifest)`` of ``pytree``."""
    arrays, specs = {}, {}
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(pytree)[0]:
        path = jax.tree_util.keystr(key_path)
        if path in specs:
            raise ValueError(f"two leaves share the path {path}: cannot tell them apart on restore")
        data, spec = _encode_leaf(path, leaf)
        spec["key"] = spec["sha256"] = None
        if data.size:  # orbax cannot store zero-size arrays: their spec says all there is
            spec["key"] = f"leaf_{len(arrays):05d}"
            arrays[spec["key"]] = data
            if isinstance(data, np.ndarray):
                spec["sha256"] = _digest(data)
        specs[path] = spec
    if not arrays:  # orbax refuses an empty tree ("Found empty item"): one placeholder byte, never read
        arrays[_PLACEHOLDER] = np.zeros((), np.uint8)
    manifest = {"format_version": FORMAT_VERSION, "step": int(step), "metadata": metadata_json, "leaves": specs}
    manifest["sha256"] = _manifest_digest(manifest)
    return arrays, manifest


# --------------------------------------------------------------------------- multi-host


def _is_primary() -> bool:
    return jax.process_index() == 0


def _barrier(name: str) -> None:
    """Wait for every process (no-op with one process). Names are made unique per call."""
    if jax.process_count() > 1:
        _ocp().multihost.sync_global_processes(f"metarl_jax_checkpoint_{name}_{next(_barrier_ids)}")


def _agree_on(name: str) -> str:
    """``name`` as chosen by process 0, on every process."""
    if jax.process_count() == 1:
        return name
    from jax.experimental import multihost_utils

    raw = name.encode()
    if len(raw) > _NAME_BYTES:
        raise ValueError(f"staging name {name!r} is longer than {_NAME_BYTES} bytes")
    buffer = np.zeros(_NAME_BYTES, np.uint8)
    buffer[: len(raw)] = np.frombuffer(raw, np.uint8)
    agreed = np.asarray(multihost_utils.broadcast_one_to_all(buffer))
    return bytes(agreed.astype(np.uint8)).rstrip(b"\0").decode()


# --------------------------------------------------------------------------- saving


def _fsync_directory(directory: str) -> None:
    with contextlib.suppress(OSError):  # not every platform / filesystem allows it
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_tree(root: str) -> None:
    """``fsync`` every file under ``root``, then every directory (orbax does not make its writes durable)."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for dirpath, _, _ in os.walk(root, topdown=False):
        _fsync_directory(dirpath)


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: str) -> None:
    """Delete a file or a directory tree; missing is fine."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def _remove_stale_temporaries(directory: str) -> None:
    """Delete staging files and directories left by dead processes of this host (a killed save)."""
    host = _host_tag()
    for name in os.listdir(directory):
        match = _TEMP_RE.match(name)
        if not match or match.group("host") != host:
            continue
        pid = int(match.group("pid"))
        if pid != os.getpid() and not _pid_alive(pid):
            _remove(os.path.join(directory, name))


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _renameat2():
    """libc's ``renameat2`` (Linux, glibc >= 2.28), or ``None``."""
    with contextlib.suppress(OSError, AttributeError):
        function = ctypes.CDLL(None, use_errno=True).renameat2
        function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        return function
    return None


def _exchange(a: str, b: str) -> bool:
    """Atomically swap the names ``a`` and ``b``; ``False`` (nothing changed) where the system cannot."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), a, None, b)


def _publish(staging: str, final: str) -> None:
    """Give the complete checkpoint ``staging`` the name ``final`` in one step; the old ``final`` is deleted."""
    if not os.path.lexists(final):
        os.replace(staging, final)
        return
    if not _exchange(staging, final):  # no atomic exchange here: move the old one aside, then the new one in
        aside = staging + "-old"
        os.replace(final, aside)
        try:
            os.replace(staging, final)
        except BaseException:
            os.replace(aside, final)  # put the old one back
            raise
        staging = aside
    _remove(staging)  # now the old checkpoint


def _discard(path: str, directory: str) -> None:
    """Delete checkpoint ``path``: first renamed to a temporary name (so it vanishes at once), then removed."""
    digits = os.path.basename(path)[len("step_"):]
    doomed = os.path.join(directory, f"{_TEMP_PREFIX}{digits}-{_host_tag()}-{os.getpid()}-{secrets.token_hex(4)}-pruned")
    try:
        os.replace(path, doomed)
    except FileNotFoundError:
        return
    _remove(doomed)


def save_checkpoint(
    directory: str | os.PathLike,
    step: int,
    pytree: Any,
    metadata: dict[str, Any] | None = None,
    keep: int | None = 3,
) -> str:
    """Atomically write ``pytree`` and ``metadata`` as the directory ``directory/step_{step:08d}``.

    Every process calls it when ``jax.process_count() > 1`` (see the module docstring).

    Args:
      directory: where checkpoints live (created if missing).
      step: non-negative integer; names the checkpoint and orders them.
      pytree: any pytree of arrays, PRNG keys and Python / numpy scalars.
      metadata: a JSON-serialisable dict (config, metrics, ...).
      keep: after the save, keep the ``keep`` checkpoints with the highest steps
        (the one just written is always kept); ``None`` keeps all.

    Returns:
      The path of the written checkpoint.
    """
    check_int("step", step, minimum=0)
    if keep is not None:
        check_int("keep", keep, minimum=1)
    metadata = {} if metadata is None else metadata
    require(isinstance(metadata, dict), "metadata", metadata, "must be a dict (JSON-serialisable) or None")
    try:
        metadata_json = json.dumps(metadata)
    except (TypeError, ValueError) as err:
        raise ValueError(f"metadata is invalid: must be JSON-serialisable ({err})") from err

    step = int(step)
    arrays, manifest = _encode(step, pytree, metadata_json)
    ocp = _ocp()
    directory = os.fspath(directory)
    primary = _is_primary()
    if primary:
        os.makedirs(directory, exist_ok=True)
        _remove_stale_temporaries(directory)
    final = checkpoint_path(directory, step)
    staging = os.path.join(directory, _agree_on(
        f"{_TEMP_PREFIX}{step:08d}-{_host_tag()}-{os.getpid()}-{secrets.token_hex(4)}"))
    try:
        _checkpointer().save(os.path.abspath(staging), args=ocp.args.PyTreeSave(arrays), custom_metadata={MANIFEST_KEY: manifest})
        if primary:
            _fsync_tree(staging)
            _publish(staging, final)
            _fsync_directory(directory)
    except BaseException:
        if primary:  # the staging directory, orbax's temporary one beside it, a half-done exchange's leftover
            prefix = os.path.basename(staging)
            for name in os.listdir(directory):
                if name.startswith(prefix):
                    _remove(os.path.join(directory, name))
        raise

    if primary and keep is not None:
        for _, path in list_checkpoints(directory)[:-keep]:
            if path != final:
                _discard(path, directory)
    _barrier(f"saved_{step}")
    return final


# --------------------------------------------------------------------------- restoring


def _read_manifest(path: str) -> dict[str, Any]:
    """The verified manifest of checkpoint directory ``path``."""
    if not os.path.isdir(path):
        if os.path.isfile(path):
            raise CheckpointCorruptError(
                f"{path} is a checkpoint file of the format before orbax-checkpoint, which this version does not "
                "read (checkpoints are now directories)"
            )
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        custom = _checkpointer().metadata(os.path.abspath(path)).custom_metadata
    except Exception as err:  # noqa: BLE001 - any failure to read orbax's metadata means a bad checkpoint
        raise CheckpointCorruptError(f"{path} is damaged: its metadata could not be read ({err})") from err
    manifest = (custom or {}).get(MANIFEST_KEY)
    if not isinstance(manifest, dict):
        raise CheckpointCorruptError(f"{path} is not a metarl_jax checkpoint (no {MANIFEST_KEY!r} in its metadata)")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointCorruptError(
            f"{path} has format_version={manifest.get('format_version')!r}, expected {FORMAT_VERSION}"
        )
    if manifest.get("sha256") != _manifest_digest(manifest):
        raise CheckpointCorruptError(f"{path} is damaged: the sha256 checksum of its manifest does not match")
    return manifest


def _target_spec(leaf: Any) -> tuple[tuple[int, ...], str]:
    if isinstance(leaf, (bool, int, float, complex)):
        return (), type(leaf).__name__
    return tuple(leaf.shape), str(leaf.dtype)


def _check_leaf(path: str, spec: dict[str, Any], target: Any) -> None:
    """``ValueError`` naming the leaf when the stored leaf does not fit ``target``."""
    stored_shape = tuple(spec["shape"])
    target_shape, target_dtype = _target_spec(target)
    if stored_shape != target_shape:
        raise ValueError(
            f"leaf {path}: checkpoint has shape {stored_shape}, target has shape {target_shape}"
        )
    if isinstance(target, (bool, int, float, complex)):  # Python scalars: type from the target
        return
    if spec["kind"] == "key" or _is_key_dtype(target.dtype):
        if spec["kind"] != "key" or not _is_key_dtype(target.dtype) or spec["dtype"] != target_dtype:
            raise ValueError(
                f"leaf {path}: checkpoint has dtype {spec['dtype']}, target has dtype {target_dtype}"
            )
    elif spec["dtype"] != target_dtype:
        raise ValueError(
            f"leaf {path}: checkpoint has dtype {spec['dtype']}, target has dtype {target_dtype}"
        )


def _stored_shape_dtype(spec: dict[str, Any]) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of the array orbax holds for a leaf (a key's raw ``uint32`` data for keys)."""
    if spec["kind"] == "key":
        one = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0, impl=spec["impl"])))
        return tuple(spec["shape"]) + tuple(one.shape), np.dtype(one.dtype)
    return tuple(spec["shape"]), np.dtype(spec["dtype"])


def _read_arrays(path: str, wanted: dict[str, tuple[dict[str, Any], Any]]) -> dict[str, Any]:
    """The arrays of the leaves in ``wanted`` (``{leaf_path: (spec, target)}``), read by orbax and verified."""
    ocp = _ocp()
    item, restore_args = {}, {}  # only these arrays are read (orbax's partial restore)
    for spec, target in wanted.values():
        if spec["key"] is None:
            continue
        shape, dtype = _stored_shape_dtype(spec)
        item[spec["key"]] = jax.ShapeDtypeStruct(shape, dtype)
        if _spans_processes(target):  # each process reads the shards of its devices
            restore_args[spec["key"]] = ocp.ArrayRestoreArgs(sharding=target.sharding, global_shape=shape, dtype=dtype)
        else:
            restore_args[spec["key"]] = ocp.RestoreArgs(restore_type=np.ndarray)
    read = {}
    if restore_args:
        try:
            read = _checkpointer().restore(  # orbax takes absolute paths only
                os.path.abspath(path), args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True))
        except Exception as err:  # noqa: BLE001 - any failure to read present arrays means a bad checkpoint
            raise CheckpointCorruptError(
                f"{path} is damaged: orbax could not read its arrays ({type(err).__name__}: {err})") from err
    arrays = {}
    for leaf_path, (spec, _) in wanted.items():
        shape, dtype = _stored_shape_dtype(spec)
        if spec["key"] is None:
            arrays[leaf_path] = np.zeros(shape, dtype)
            continue
        data = read.get(spec["key"]) if isinstance(read, dict) else None
        if data is None or tuple(data.shape) != shape or np.dtype(data.dtype) != dtype:
            raise CheckpointCorruptError(
                f"{path} is damaged: leaf {leaf_path} reads back as "
                f"{None if data is None else (tuple(data.shape), str(data.dtype))}, its manifest says "
                f"{(shape, str(dtype))}"
            )
        if spec["sha256"] is not None and _digest(np.asarray(data)) != spec["sha256"]:
            raise CheckpointCorruptError(f"{path} is damaged: the sha256 checksum of leaf {leaf_path} does not match")
        arrays[leaf_path] = data
    return arrays


def _decode_leaf(data: Any, spec: dict[str, Any], target: Any) -> Any:
    """Rebuild one leaf from its stored data, with the type and placement of ``target``."""
    if isinstance(target, (bool, int, float, complex)):  # Python scalars: type from the target
        return type(target)(np.asarray(data).item())
    if spec["kind"] == "key":
        value = jax.random.wrap_key_data(data if isinstance(data, jax.Array) else jnp.asarray(data),
                                         impl=spec["impl"])
    else:
        if isinstance(target, (np.ndarray, np.generic)):
            return data if isinstance(target, np.ndarray) else data[()]
        value = data
    sharding = getattr(target, "sharding", None)
    if isinstance(value, jax.Array) and _spans_processes(value):  # already placed by orbax
        return value
    return jax.device_put(value, sharding) if sharding is not None else jnp.asarray(value)


def _rebuild(manifest: dict[str, Any], target: Any, source: str, subtree: str | None = None) -> Any:
    flat, treedef = jax.tree_util.tree_flatten_with_path(target)
    specs = manifest["leaves"]
    if subtree is not None:  # restore only the leaves under ``subtree``, renamed to the target's paths
        if not any(p.startswith(subtree) for p in specs):
            raise ValueError(f"subtree={subtree!r} is invalid for {source}: no leaf path starts with it "
                             f"(its leaves start with {sorted({p[:40] for p in specs})[:5]})")
        specs = {p[len(subtree):]: v for p, v in specs.items() if p.startswith(subtree)}
    paths = [jax.tree_util.keystr(key_path) for key_path, _ in flat]
    missing = [p for p in paths if p not in specs]
    unexpected = [p for p in specs if p not in set(paths)]
    if missing or unexpected:
        raise ValueError(
            f"{source} does not match the target's structure: "
            f"leaves missing from the checkpoint: {missing[:10]}{' ...' if len(missing) > 10 else ''}; "
            f"leaves in the checkpoint but not the target: "
            f"{unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}"
        )
    for p, (_, leaf) in zip(paths, flat):
        _check_leaf(p, specs[p], leaf)
    arrays = _read_arrays(source, {p: (specs[p], leaf) for p, (_, leaf) in zip(paths, flat)})
    restored = [_decode_leaf(arrays[p], specs[p], leaf) for p, (_, leaf) in zip(paths, flat)]
    return jax.tree_util.tree_unflatten(treedef, restored)


def restore_checkpoint(path: str | os.PathLike, target: Any, subtree: str | None = None) -> tuple[Any, dict[str, Any]]:
    """Load the checkpoint at ``path`` into the structure of ``target``.

    Returns ``(pytree, metadata)``. Raises :class:`CheckpointCorruptError` for a
    damaged checkpoint and ``ValueError`` naming the leaf (with both shapes / dtypes)
    when the checkpoint does not fit ``target``.

    ``subtree``: restore only part of the saved pytree, the leaves whose
    ``jax.tree_util.keystr`` path starts with this prefix (e.g. ``".meta_params"`` of a
    :class:`~metarl_jax.algorithms.maml.MetaTrainState`); ``target`` then has the structure of
    that part, and the rest of the checkpoint (say, an optimizer state whose layout
    depends on the outer rule) is neither read nor checked.
    """
    path = os.fspath(path)
    manifest = _read_manifest(path)
    return _rebuild(manifest, target, path, subtree), json.loads(manifest["metadata"])


def restore_latest(
    directory: str | os.PathLike, target: Any, subtree: str | None = None
) -> tuple[int, Any, dict[str, Any]] | None:
    """``(step, pytree, metadata)`` of the newest readable checkpoint, or ``None`` if none.

    A damaged checkpoint (which an atomic save cannot produce, but a failing
    disk can) is skipped with a warning naming it, in favour of the next-newest one;
    a checkpoint that does not fit ``target`` raises ``ValueError``. ``subtree`` as in
    :func:`restore_checkpoint`.
    """
    found = list_checkpoints(directory)
    for step, path in reversed(found):
        try:
            tree, metadata = restore_checkpoint(path, target, subtree)
        except FileNotFoundError:  # pruned by a concurrent saver since it was listed
            continue
        except CheckpointCorruptError as err:
            if os.path.lexists(path):  # else pruned by a concurrent saver while being read
                warnings.warn(f"skipping unreadable checkpoint: {err}", RuntimeWarning, stacklevel=2)
            continue
        return step, tree, metadata
    if not found:
        with contextlib.suppress(FileNotFoundError):
            old = sorted(n for n in os.listdir(directory) if _CHECKPOINT_RE.match(n)
                         and os.path.isfile(os.path.join(directory, n)))
            if old:
                warnings.warn(f"{os.fspath(directory)} holds only checkpoint files of the format before "
                              f"orbax-checkpoint ({old[-1]}, ...), which this version does not read",
                              RuntimeWarning, stacklevel=2)
    return None
