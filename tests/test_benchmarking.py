"""The machine names of benchmark records (benchmarks/benchmarking.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import jax

from benchmarks import benchmarking


def test_cpu_model_is_a_name():
    name = benchmarking.cpu_model()
    assert isinstance(name, str) and name.strip() == name and name


def test_cpu_model_falls_back_without_proc_cpuinfo(monkeypatch):
    def no_file(*args, **kwargs):
        raise OSError("no /proc/cpuinfo here")

    monkeypatch.setattr(benchmarking, "open", no_file, raising=False)
    monkeypatch.setattr(benchmarking.platform, "processor", lambda: "")
    monkeypatch.setattr(benchmarking.platform, "machine", lambda: "aarch64")
    assert benchmarking.cpu_model() == "aarch64"
    monkeypatch.setattr(benchmarking.platform, "machine", lambda: "")
    assert benchmarking.cpu_model() == "unknown CPU"


def test_device_description_names_device_and_host():
    dev = jax.devices()[0]
    assert benchmarking.jax_device_name() == f"{dev.device_kind} ({dev.platform})"
    assert benchmarking.device_description() == (
        f"{dev.device_kind} ({dev.platform}); host {benchmarking.cpu_model()}, {os.cpu_count()} cores"
    )


def test_torch_reference_imports_without_jax():
    """benchmarks.torch_reference uses cpu_model and must not need jax (a torch-only install)."""
    code = (
        "import sys; sys.modules['jax'] = None\n"  # any `import jax` now raises ImportError
        "import benchmarks.torch_reference as t\n"
        "assert t.cpu_model()\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
