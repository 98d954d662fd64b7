"""Test-suite settings.

Compilation dominates the suite's run time, and the programs under test are small: XLA's backend
optimisation passes are switched off for the tests (measured: test_estimators.py took 20 s of CPU
instead of 45 s). Benchmarks and experiments run with the default optimisation level.
"""

import os

_FLAG = "--xla_backend_optimization_level=0"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
