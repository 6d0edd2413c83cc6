"""The local executor of ``ctdip batch``: spawned worker processes fed one specimen at a time.

The parent process decides what starts. It spawns ``J`` workers (``multiprocessing`` context
"spawn": a fresh interpreter, so no forked torch/OpenMP state); each one says ``ready`` on its
pipe, then receives one task at a time, runs it and sends the result back. The parent sends the
next specimen only to an idle worker and only while no stop signal has arrived.

Signals (:class:`~ctdip.workflows.batch.signals.StopControl` in the parent,
:class:`~ctdip.workflows.batch.signals.SignalLatch` in a worker):

* the **first** SIGINT or SIGTERM to the parent stops the queue (nothing new starts) and is
  forwarded to every busy worker. A worker's DIP run checkpoints at the end of its current
  iteration (the engine's own handler) and returns "interrupted at iteration N"; outside the
  iteration loop the worker's latch raises ``KeyboardInterrupt`` at once. The parent waits for
  every worker to end, then ``ctdip batch`` writes ``batch_status.json`` and exits 130 / 143;
* a **second** signal SIGKILLs every worker: the parent ends at once (atomic writes mean the
  last checkpoint on disk is intact; the next call resumes from it).

Workers start with SIGINT/SIGTERM ignored (inherited from the parent during ``start()``) and in
their own process group, so a terminal's Ctrl-C reaches only the parent, which forwards it once.
No worker outlives the parent: on Linux ``prctl(PR_SET_PDEATHSIG, SIGTERM)`` and, everywhere, a
watchdog thread that polls ``os.getppid()`` send the worker SIGTERM when the parent dies (even by
SIGKILL); the worker then checkpoints and exits (its result pipe is closed), or is ended after
:data:`ORPHAN_GRACE_S` seconds.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from ctdip.workflows.batch.plan import Specimen, apply_result
from ctdip.workflows.batch.signals import SIGNALS, StopControl, in_main_thread, send_signal, signal_name
from ctdip.workflows.batch.table import Progress
from ctdip.workflows.batch.worker import checkpoint_iteration, run_specimen

ORPHAN_GRACE_S = 120.0  # an orphaned worker that does not stop on SIGTERM is ended after this
WATCHDOG_PERIOD_S = 1.0


def cpu_count() -> int:
    """CPUs this process may use (affinity-aware)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return os.cpu_count() or 1


def default_jobs(n_specimens: int, cores: int | None = None) -> int:
    """``min(specimens, max(1, cores // 4))``: a few threads per job, all cores busy."""
    cores = cores or cpu_count()
    return max(1, min(n_specimens, max(1, cores // 4)))


def run_local(todo: list[Specimen], method: str, params: dict | None, scan_options: dict | None, options: dict,
              jobs: int | None, prog: Progress, poll_s: float, stop: StopControl) -> None:
    """Run ``todo`` on ``min(jobs or default_jobs, len(todo))`` workers of ``cores // jobs`` torch
    threads each, updating the specimens' states; specimens a stop left in the queue end
    ``not_started``."""
    if not todo:
        return
    n_jobs = min(int(jobs) if jobs else default_jobs(len(todo)), len(todo))
    threads = max(1, cpu_count() // n_jobs)
    for s in todo:
        s.resume = s.state == "resume"
        s.state = "queued"
    prog.update()

    def task(s: Specimen) -> dict:
        return {"scan": str(s.scan.resolve()), "run_dir": str(s.run_dir), "method": method, "params": params,
                "scan_options": scan_options, "options": options, "threads": threads, "resume": s.resume}

    def started(s: Specimen) -> None:
        s.state, s.started = "running", time.time()

    def finished(s: Specimen, res: dict) -> None:
        if res.get("killed") and res.get("iteration") is None:  # no time to ask it; read its last checkpoint
            res = {**res, "iteration": checkpoint_iteration(s.run_dir)}
        apply_result(s, res)

    left = run_pool(todo, task, on_start=started, on_result=finished, n_jobs=n_jobs, threads=threads, stop=stop,
                    tick=prog.update, poll_s=poll_s)
    for s in left:
        s.state = "not_started"
    prog.update()


@dataclass
class _Worker:
    proc: Any
    conn: Any
    ready: bool = False
    item: Any = None  # the specimen it is working on
    closing: bool = False  # told to stop (None sent)
    gone: bool = False  # process ended and joined


def run_pool(items: Iterable[Any], make_task: Callable[[Any], dict], *, on_start: Callable[[Any], None],
             on_result: Callable[[Any, dict], None], n_jobs: int, threads: int, stop: StopControl,
             tick: Callable[[], None] = lambda: None, poll_s: float = 0.5) -> list[Any]:
    """Run ``run_specimen(**make_task(item))`` for each item on ``n_jobs`` spawned
    workers with ``threads`` torch threads each (module docstring). ``on_start(item)`` is called
    when an item is sent to a worker, ``on_result(item, result)`` when its result (or the
    worker's death) comes back. Returns the items that never started (stopped queue)."""
    import multiprocessing as mp
    from multiprocessing.connection import wait

    ctx = mp.get_context("spawn")
    queue = deque(items)
    workers: list[_Worker] = []
    failed_start: list[str] = []

    def start_worker() -> None:
        parent_conn, child_conn = ctx.Pipe()
        proc = ctx.Process(target=worker_main, args=(child_conn, int(threads), os.getpid()), daemon=False,
                           name="ctdip-batch-worker")
        old = {}
        if in_main_thread():  # the child inherits "ignored" until it has its own handlers
            old = {s: signal.signal(s, signal.SIG_IGN) for s in SIGNALS}
        try:
            proc.start()
        finally:
            for s, h in old.items():
                signal.signal(s, h)
        child_conn.close()
        workers.append(_Worker(proc, parent_conn))

    def forward(signum: int) -> None:
        for w in workers:
            if w.item is not None and not w.gone:
                send_signal(w.proc.pid, signum)

    def kill_all() -> None:
        for w in workers:
            if not w.gone:
                send_signal(w.proc.pid, signal.SIGKILL)

    def send(w: _Worker, msg) -> bool:
        try:
            w.conn.send(msg)
            return True
        except (OSError, ValueError):  # the worker is gone; its sentinel tells the rest
            return False

    def receive(w: _Worker) -> None:
        while not w.gone:
            try:
                if not w.conn.poll():
                    return
                msg = w.conn.recv()
            except (EOFError, OSError):
                return
            if msg == "ready":
                w.ready = True
            elif isinstance(msg, dict) and w.item is not None:
                item, w.item = w.item, None
                on_result(item, msg)

    def reap(w: _Worker) -> None:
        receive(w)  # a result sent just before the worker exited
        w.proc.join()
        w.gone = True
        w.conn.close()
        if w.item is not None:
            code = w.proc.exitcode
            how = f"killed by {signal_name(-code)}" if code is not None and code < 0 else f"exit code {code}"
            item, w.item = w.item, None
            error = "killed by the second signal" if stop.killed else f"worker ended ({how})"
            on_result(item, {"ok": False, "interrupted": stop.stopped, "killed": stop.killed, "error": error})
        elif not w.ready and not stop.stopped:
            failed_start.append(f"a worker process failed to start (exit code {w.proc.exitcode})")

    stop.on_first.append(forward)
    stop.on_second.append(kill_all)
    try:
        for _ in range(min(int(n_jobs), len(queue))):
            start_worker()
        while any(not w.gone for w in workers):
            for w in workers:
                if w.gone or not w.ready or w.item is not None or w.closing:
                    continue
                if queue and not stop.stopped:
                    w.item = queue.popleft()
                    on_start(w.item)
                    send(w, make_task(w.item))
                    if stop.stopped:  # the signal came while it was being sent: forward it again
                        send_signal(w.proc.pid, stop.signum)
                else:
                    w.closing = True
                    send(w, None)
            live = [w for w in workers if not w.gone]
            ready = wait([w.conn for w in live] + [w.proc.sentinel for w in live], timeout=poll_s)
            for w in live:
                if w.conn in ready:
                    receive(w)
                if w.proc.sentinel in ready:
                    reap(w)
                    if queue and not stop.stopped and w.ready:
                        start_worker()  # it died during a task (out of memory, ...): replace it
            tick()
        if queue and not stop.stopped:  # no worker could start
            reason = failed_start[0] if failed_start else "no worker process left"
            while queue:
                on_result(queue.popleft(), {"ok": False, "interrupted": False, "error": reason})
    finally:
        stop.on_first.remove(forward)
        stop.on_second.remove(kill_all)
        for w in workers:
            if not w.gone:
                send_signal(w.proc.pid, signal.SIGKILL)
                w.proc.join()
                w.gone = True
                w.conn.close()
    return list(queue)


def _die_with_parent(parent_pid: int) -> None:
    """SIGTERM to this process when the parent dies: prctl on Linux, and a polling thread."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(WATCHDOG_PERIOD_S)
        os.kill(os.getpid(), signal.SIGTERM)  # checkpoint and stop ...
        time.sleep(ORPHAN_GRACE_S)
        os._exit(143)  # ... or end anyway

    threading.Thread(target=watch, name="ctdip-parent-watchdog", daemon=True).start()


def worker_main(conn, threads: int, parent_pid: int) -> None:
    """A worker process: ``ready``, then one task (``run_specimen`` keywords) at a time until
    ``None``, a closed pipe, or an interrupted task (module docstring)."""
    seen: list[int] = []

    def idle(signum, frame) -> None:  # between tasks a signal is only remembered
        seen.append(signum)

    for s in SIGNALS:
        signal.signal(s, idle)
    if hasattr(os, "setpgid"):
        try:
            os.setpgid(0, 0)  # a terminal's Ctrl-C goes to the parent only; it forwards
        except OSError:
            pass
    _die_with_parent(parent_pid)
    code = 1
    try:
        _serve(conn, int(threads), seen)
        code = 0
    except BaseException:  # a bug, not a specimen's failure (run_specimen never raises)
        import traceback

        traceback.print_exc()
    finally:
        conn.close()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # everything is written (atomically); skip the slow interpreter teardown


def _serve(conn, threads: int, seen: list[int]) -> None:
    import torch

    torch.set_num_threads(max(1, threads))
    conn.send("ready")
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        if seen:  # stopped before this task began
            res = {"ok": False, "interrupted": True, "started": False, "signal": seen[0], "error": "not started"}
        else:
            res = run_specimen(**task)
            if res.get("signal"):
                seen.append(res["signal"])
        try:
            conn.send(res)
        except (OSError, ValueError):
            return
        if seen:
            return
