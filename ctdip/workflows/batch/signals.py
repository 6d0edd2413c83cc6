"""Signal handling of ``ctdip batch`` (the protocol is described in :mod:`.local`): the parent's
:class:`StopControl` (first signal stops the queue and is forwarded, the second kills) and a
running specimen's :class:`SignalLatch`.
"""

from __future__ import annotations

import os
import re
import signal
import threading
from dataclasses import dataclass, field
from typing import Callable

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def signal_name(signum: int | None) -> str:
    try:
        return signal.Signals(signum).name
    except (TypeError, ValueError):
        return f"signal {signum}"


def signal_from_message(text: str, default: int = signal.SIGINT) -> int:
    """The signal number in the engine's interrupt message (``"signal 15: checkpoint ..."``)."""
    m = re.match(r"\s*signal (\d+)", str(text))
    return int(m.group(1)) if m else int(default)


class StopControl:
    """SIGINT/SIGTERM handler of the batch parent (main thread only; a no-op elsewhere).

    The first signal sets :attr:`signum` and calls every ``on_first(signum)`` hook; the second
    calls every ``on_second()`` hook; later ones are ignored. Hooks run inside the handler, so
    they must be quick (``os.kill``).
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.count = 0
        self.on_first: list[Callable[[int], None]] = []
        self.on_second: list[Callable[[], None]] = []
        self._old: dict = {}

    def _handler(self, signum, frame) -> None:
        self.count += 1
        if self.count == 1:
            self.signum = signum
            for f in list(self.on_first):
                f(signum)
        elif self.count == 2:
            for f in list(self.on_second):
                f()

    def request(self, signum: int) -> None:
        """Record a stop that a worker saw first (in-process executors)."""
        if self.signum is None:
            self.signum, self.count = int(signum), max(self.count, 1)

    @property
    def stopped(self) -> bool:
        return self.signum is not None

    @property
    def killed(self) -> bool:
        return self.count >= 2

    def __enter__(self) -> "StopControl":
        if in_main_thread():
            for s in SIGNALS:
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}


def send_signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass
class SignalLatch:
    """SIGINT/SIGTERM handler of a running specimen: the first signal raises
    ``KeyboardInterrupt`` (a DIP run's engine replaces it during its loop with one that
    checkpoints first); later ones are only recorded, so cleaning up is never interrupted."""

    signum: int | None = None
    _old: dict = field(default_factory=dict)

    def handler(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum
            raise KeyboardInterrupt(f"signal {signum}")

    def __enter__(self) -> "SignalLatch":
        if in_main_thread():
            for s in SIGNALS:
                try:
                    self._old[s] = signal.signal(s, self.handler)
                except (ValueError, OSError):
                    pass
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}
