"""Crash-safe checkpoints of arbitrary pytrees plus a JSON metadata dict.

A checkpoint is one file, ``directory/step_{step:08d}``, holding every leaf of
a pytree (params, optax state, PRNG keys, sampler state, counters: anything
``jax.tree_util`` can flatten) and a JSON-able metadata dict.

Crash safety. :func:`save_checkpoint` writes the whole file under a temporary
name in the same directory (``.tmp-step_...``), flushes and ``fsync``s it,
atomically renames it to its final name with ``os.replace`` and ``fsync``s the
directory; only then are old checkpoints pruned. A name ``step_*`` therefore
only ever points to a complete file, and a crash or SIGKILL at any moment
leaves at worst an orphaned temporary file, which :func:`latest_checkpoint`
ignores and the next :func:`save_checkpoint` on the same host deletes once
the process that wrote it is gone. Saving a step that already exists replaces
it atomically (readers see the old or the new file, never a mix).

File format: ``MAGIC | sha256(body) | body`` where ``body`` is
``flax.serialization.msgpack_serialize`` of::

    {"format_version": 1, "step": int, "metadata": "<json>",
     "leaves": {leaf_path: np.ndarray}, "specs": {leaf_path: {kind, shape, dtype, impl}}}

``leaf_path`` is ``jax.tree_util.keystr`` of the leaf's path. Arrays keep
their dtype and shape bit for bit. New-style typed PRNG keys
(``jax.random.key``) are stored as their raw ``uint32`` data
(``jax.random.key_data``) plus the implementation name and are re-wrapped on
restore; raw ``uint32`` keys (``jax.random.PRNGKey``) are plain arrays.
The checksum catches truncated or damaged files (:class:`CheckpointCorruptError`);
:func:`restore_latest` then falls back to the next-newest checkpoint.

Restoring needs a *target* pytree that gives the structure (e.g. freshly
initialised params and optimizer state, or ``jax.ShapeDtypeStruct`` leaves):
leaves are matched by path, and any difference in paths, shapes or dtypes is a
``ValueError`` that names the leaf. Restored ``jax.Array`` leaves get the
target leaf's sharding; numpy leaves stay numpy; Python scalars stay Python
scalars. Single-process only: leaves must be fully addressable.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import tempfile
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

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

MAGIC = b"METARL_JAX_CKPT\n"
FORMAT_VERSION = 1
_DIGEST_BYTES = 32
_CHECKPOINT_RE = re.compile(r"^step_(\d{8,})$")
_TEMP_PREFIX = ".tmp-step_"
_TEMP_RE = re.compile(r"^\.tmp-step_\d+-(?P<host>[A-Za-z0-9_.]*)-(?P<pid>\d+)-")


class CheckpointCorruptError(ValueError):
    """A checkpoint file is truncated, damaged or not a checkpoint of this format."""


# --------------------------------------------------------------------------- paths


def checkpoint_path(directory: str | os.PathLike, step: int) -> str:
    """Path of the checkpoint of ``step`` in ``directory``: ``directory/step_{step:08d}``."""
    return os.path.join(os.fspath(directory), f"step_{step:08d}")


def list_checkpoints(directory: str | os.PathLike) -> list[tuple[int, str]]:
    """Complete checkpoints in ``directory`` as ``(step, path)``, oldest step first.

    Only regular files named ``step_<digits>`` count: temporary files of
    saves in progress (or killed) and anything else are ignored.
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
        if match and os.path.isfile(path):
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(directory: str | os.PathLike) -> str | None:
    """Path of the complete checkpoint with the highest step, or ``None`` if there is none."""
    found = list_checkpoints(directory)
    return found[-1][1] if found else None


# --------------------------------------------------------------------------- encoding


def _is_key_dtype(dtype) -> bool:
    return jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _encode_leaf(path: str, leaf: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """``(raw numpy data, spec)`` of one leaf."""
    if isinstance(leaf, (bool, int, float, complex, np.generic)) and not isinstance(leaf, np.ndarray):
        data = np.asarray(leaf)
        kind = "scalar" if not isinstance(leaf, np.generic) else "array"
        return data, {"kind": kind, "shape": [], "dtype": str(data.dtype), "impl": ""}
    if isinstance(leaf, (jax.Array, np.ndarray)):
        if _is_key_dtype(leaf.dtype):
            data = np.asarray(jax.device_get(jax.random.key_data(leaf)))
            impl = str(jax.random.key_impl(leaf))
            return data, {"kind": "key", "shape": list(leaf.shape), "dtype": str(leaf.dtype), "impl": impl}
        data = np.asarray(jax.device_get(leaf))
        if data.dtype.kind not in "biufc":
            raise TypeError(
                f"leaf {path} has dtype {data.dtype}, which a checkpoint cannot store: "
                "only bool, integer, float, complex arrays and PRNG keys (put other data in metadata)"
            )
        return data, {"kind": "array", "shape": list(data.shape), "dtype": str(data.dtype), "impl": ""}
    raise TypeError(
        f"leaf {path} has type {type(leaf).__name__}, which a checkpoint cannot store: "
        "only arrays, PRNG keys and Python/numpy scalars (put other data in metadata)"
    )


def _encode(step: int, pytree: Any, metadata_json: str) -> bytes:
    leaves, specs = {}, {}
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(pytree)[0]:
        path = jax.tree_util.keystr(key_path)
        if path in leaves:
            raise ValueError(f"two leaves share the path {path}: cannot tell them apart on restore")
        leaves[path], specs[path] = _encode_leaf(path, leaf)
    record = {
        "format_version": FORMAT_VERSION,
        "step": int(step),
        "metadata": metadata_json,
        "leaves": leaves,
        "specs": specs,
    }
    return serialization.msgpack_serialize(record)


def _read(path: str | os.PathLike) -> dict[str, Any]:
    """The decoded record of a checkpoint file (checksum verified)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        raw = f.read()
    header = len(MAGIC) + _DIGEST_BYTES
    if len(raw) < header or not raw.startswith(MAGIC):
        raise CheckpointCorruptError(f"{path} is not a metarl_jax checkpoint (bad header)")
    digest, body = raw[len(MAGIC):header], raw[header:]
    if hashlib.sha256(body).digest() != digest:
        raise CheckpointCorruptError(f"{path} is damaged: its sha256 checksum does not match")
    try:
        record = serialization.msgpack_restore(body)
    except Exception as err:  # noqa: BLE001 - any decoding failure means a bad file
        raise CheckpointCorruptError(f"{path} could not be decoded: {err}") from err
    if record.get("format_version") != FORMAT_VERSION:
        raise CheckpointCorruptError(
            f"{path} has format_version={record.get('format_version')!r}, expected {FORMAT_VERSION}"
        )
    return record


# --------------------------------------------------------------------------- saving


def _fsync_directory(directory: str) -> None:
    with contextlib.suppress(OSError):  # not every platform / filesystem allows it
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


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


def _remove_stale_temporaries(directory: str) -> None:
    """Delete temporary files left by dead processes of this host (a killed save)."""
    host = _host_tag()
    for name in os.listdir(directory):
        match = _TEMP_RE.match(name)
        if not match or match.group("host") != host:
            continue
        pid = int(match.group("pid"))
        path = os.path.join(directory, name)
        if pid != os.getpid() and not _pid_alive(pid) and os.path.isfile(path):
            with contextlib.suppress(OSError):
                os.remove(path)


def save_checkpoint(
    directory: str | os.PathLike,
    step: int,
    pytree: Any,
    metadata: dict[str, Any] | None = None,
    keep: int | None = 3,
) -> str:
    """Atomically write ``pytree`` and ``metadata`` as ``directory/step_{step:08d}``.

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

    body = _encode(int(step), pytree, metadata_json)
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    _remove_stale_temporaries(directory)
    final = checkpoint_path(directory, int(step))
    prefix = f"{_TEMP_PREFIX}{int(step):08d}-{_host_tag()}-{os.getpid()}-"
    fd, tmp = tempfile.mkstemp(prefix=prefix, dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC)
            f.write(hashlib.sha256(body).digest())
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _fsync_directory(directory)

    if keep is not None:
        for _, path in list_checkpoints(directory)[:-keep]:
            if path != final:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
    return final


# --------------------------------------------------------------------------- restoring


def _target_spec(leaf: Any) -> tuple[tuple[int, ...], str]:
    if isinstance(leaf, (bool, int, float, complex)):
        return (), type(leaf).__name__
    return tuple(leaf.shape), str(leaf.dtype)


def _decode_leaf(path: str, data: np.ndarray, spec: dict[str, Any], target: Any) -> Any:
    """Rebuild one leaf from its stored data, with the type and placement of ``target``."""
    stored_shape = tuple(spec["shape"])
    target_shape, target_dtype = _target_spec(target)
    if stored_shape != target_shape:
        raise ValueError(
            f"leaf {path}: checkpoint has shape {stored_shape}, target has shape {target_shape}"
        )
    if isinstance(target, (bool, int, float, complex)):  # Python scalars: type from the target
        if data.shape != ():
            raise ValueError(f"leaf {path}: checkpoint holds shape {data.shape}, target is a Python scalar")
        return type(target)(data.item())
    if spec["kind"] == "key" or _is_key_dtype(target.dtype):
        if spec["kind"] != "key" or not _is_key_dtype(target.dtype) or spec["dtype"] != target_dtype:
            raise ValueError(
                f"leaf {path}: checkpoint has dtype {spec['dtype']}, target has dtype {target_dtype}"
            )
        value = jax.random.wrap_key_data(jnp.asarray(data), impl=spec["impl"])
    else:
        if spec["dtype"] != target_dtype or str(data.dtype) != spec["dtype"]:
            raise ValueError(
                f"leaf {path}: checkpoint has dtype {spec['dtype']}, target has dtype {target_dtype}"
            )
        if isinstance(target, (np.ndarray, np.generic)):
            return data if isinstance(target, np.ndarray) else data[()]
        value = data
    sharding = getattr(target, "sharding", None)
    return jax.device_put(value, sharding) if sharding is not None else jnp.asarray(value)


def _rebuild(record: dict[str, Any], target: Any, source: str, subtree: str | None = None) -> Any:
    flat, treedef = jax.tree_util.tree_flatten_with_path(target)
    leaves, specs = record["leaves"], record["specs"]
    if subtree is not None:  # restore only the leaves under ``subtree``, renamed to the target's paths
        if not any(p.startswith(subtree) for p in leaves):
            raise ValueError(f"subtree={subtree!r} is invalid for {source}: no leaf path starts with it "
                             f"(its leaves start with {sorted({p[:40] for p in leaves})[:5]})")
        leaves = {p[len(subtree):]: v for p, v in leaves.items() if p.startswith(subtree)}
        specs = {p[len(subtree):]: v for p, v in specs.items() if p.startswith(subtree)}
    paths = [jax.tree_util.keystr(key_path) for key_path, _ in flat]
    missing = [p for p in paths if p not in leaves]
    unexpected = [p for p in leaves if p not in set(paths)]
    if missing or unexpected:
        raise ValueError(
            f"{source} does not match the target's structure: "
            f"leaves missing from the checkpoint: {missing[:10]}{' ...' if len(missing) > 10 else ''}; "
            f"leaves in the checkpoint but not the target: "
            f"{unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}"
        )
    restored = [_decode_leaf(p, leaves[p], specs[p], leaf) for p, (_, leaf) in zip(paths, flat)]
    return jax.tree_util.tree_unflatten(treedef, restored)


def restore_checkpoint(path: str | os.PathLike, target: Any, subtree: str | None = None) -> tuple[Any, dict[str, Any]]:
    """Load the checkpoint at ``path`` into the structure of ``target``.

    Returns ``(pytree, metadata)``. Raises :class:`CheckpointCorruptError` for a
    damaged file and ``ValueError`` naming the leaf (with both shapes / dtypes)
    when the checkpoint does not fit ``target``.

    ``subtree``: restore only part of the saved pytree, the leaves whose
    ``jax.tree_util.keystr`` path starts with this prefix (e.g. ``".meta_params"`` of a
    :class:`~metarl_jax.algorithms.maml.MetaTrainState`); ``target`` then has the structure of
    that part, and the rest of the checkpoint (say, an optimizer state whose layout
    depends on the outer rule) is not read into anything.
    """
    record = _read(path)
    return _rebuild(record, target, os.fspath(path), subtree), json.loads(record["metadata"])


def restore_latest(
    directory: str | os.PathLike, target: Any, subtree: str | None = None
) -> tuple[int, Any, dict[str, Any]] | None:
    """``(step, pytree, metadata)`` of the newest readable checkpoint, or ``None`` if none.

    A damaged checkpoint (which an atomic save cannot produce, but a failing
    disk can) is skipped with a warning in favour of the next-newest one; a
    checkpoint that does not fit ``target`` raises ``ValueError``. ``subtree`` as in
    :func:`restore_checkpoint`.
    """
    for step, path in reversed(list_checkpoints(directory)):
        try:
            record = _read(path)
        except CheckpointCorruptError as err:
            warnings.warn(f"skipping unreadable checkpoint: {err}", RuntimeWarning, stacklevel=2)
            continue
        except FileNotFoundError:  # pruned by a concurrent saver since it was listed
            continue
        return step, _rebuild(record, target, path, subtree), json.loads(record["metadata"])
    return None
