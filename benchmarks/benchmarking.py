"""Naming the machine a benchmark ran on, for its records.

The benchmark scripts (:mod:`experiments.benchmark_speed`, :mod:`experiments.benchmark_adaptation`,
:mod:`experiments.benchmark_memory` and the PyTorch :mod:`benchmarks.torch_reference`) write the host
CPU and the JAX device into their JSON records; the names come from here, so the records of
different scripts name the same machine the same way.

Nothing here imports jax at module level: :mod:`benchmarks.torch_reference` uses :func:`cpu_model`
and must stay importable (and runnable) where only PyTorch is installed.
"""

from __future__ import annotations

import os
import platform

__all__ = ["cpu_model", "device_description", "jax_device_name"]


def cpu_model() -> str:
    """The host CPU's model name.

    The first ``model name`` line of ``/proc/cpuinfo`` (Linux on x86), else
    ``platform.processor()``, else ``platform.machine()`` (e.g. ``aarch64``, whose
    ``/proc/cpuinfo`` has no model name), else ``"unknown CPU"``.
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def jax_device_name() -> str:
    """JAX's default device as ``"<device_kind> (<platform>)"``, e.g. ``"cpu (cpu)"`` or ``"NVIDIA H100 80GB HBM3 (gpu)"``."""
    import jax

    dev = jax.devices()[0]
    return f"{dev.device_kind} ({dev.platform})"


def device_description() -> str:
    """JAX's default device and the host: ``"<device_kind> (<platform>); host <cpu model>, <n> cores"``.

    ``<n>`` is ``os.cpu_count()`` (logical CPUs of the machine, not the ones this process may use).
    """
    return f"{jax_device_name()}; host {cpu_model()}, {os.cpu_count()} cores"
