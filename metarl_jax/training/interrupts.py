"""SIGINT and SIGTERM as requests to stop cleanly, not as exceptions in the middle of a step.

A Ctrl-C (SIGINT) or a scheduler's SIGTERM arriving while the training loop waits for a compiled
call must not lose the work of that call, nor leave a half-written file. Inside
:func:`deferred_interrupts` the first such signal only records itself on an
:class:`InterruptRequest`; the training loop (:func:`metarl_jax.training.loop.run_loop`) looks at it
between compiled calls, writes a checkpoint and raises :class:`TrainingInterrupted`. A second SIGINT
while waiting raises ``KeyboardInterrupt`` at once (the user insists; checkpoints already on disk
are crash-safe). The exit status of a command line stopped this way is ``128 + signal``: 130 for
SIGINT, 143 for SIGTERM.

Signal handlers belong to the process's main thread: called from another thread,
:func:`deferred_interrupts` installs nothing and its request stays empty.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Any, Iterator

#: The signals that ask a run to stop cleanly.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class InterruptRequest:
    """The first stop signal received inside :func:`deferred_interrupts` (``signum``; ``None``: none yet)."""

    def __init__(self):
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else "none"


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped at a signal, after the current compiled call and a checkpoint.

    A ``KeyboardInterrupt`` (so ``except Exception`` does not swallow it), carrying what a caller
    needs to go on: ``signum`` (the signal), ``iteration`` (finished iterations), ``checkpoint``
    (the directory of the checkpoint written for it, ``None`` without a run directory),
    ``state`` and ``history`` (the training state and records up to ``iteration``).
    """

    def __init__(self, signum: int, iteration: int, checkpoint: str | None, state: Any = None,
                 history: list | None = None):
        self.signum = int(signum)
        self.iteration = int(iteration)
        self.checkpoint = checkpoint
        self.state = state
        self.history = [] if history is None else history
        where = f"; checkpoint {checkpoint}" if checkpoint else ""
        super().__init__(f"{signal.Signals(self.signum).name} received: stopped after iteration {iteration}{where}")

    @property
    def exit_status(self) -> int:
        """The shell convention for a process ended by signal ``signum``: ``128 + signum``."""
        return 128 + self.signum


@contextlib.contextmanager
def deferred_interrupts(signals: tuple[int, ...] = STOP_SIGNALS) -> Iterator[InterruptRequest]:
    """Within the block, the first of ``signals`` is recorded on the yielded request instead of
    interrupting; previous handlers come back on exit. A second SIGINT raises ``KeyboardInterrupt``.

    A note goes to stderr at the first signal, so the user knows the run is stopping, not stuck.
    Outside the main thread nothing is installed.
    """
    request = InterruptRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum, frame):
        del frame
        if request.signum is None:
            request.signum = signum
            print(f"\n{signal.Signals(signum).name} received: stopping after the current step (training saves a checkpoint)"
                  + (" (Ctrl-C again to stop at once)" if signum == signal.SIGINT else ""),
                  file=sys.stderr, flush=True)
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt

    previous = {s: signal.getsignal(s) for s in signals}
    for s in signals:
        signal.signal(s, handler)
    try:
        yield request
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
