"""Reward calls in a small pool of worker processes, so a call that overruns can be killed.

A reward function is user code. In-process, a timeout can interrupt Python code but not a call
stuck in C (a backtracking parser, a SymPy simplification, a hash loop): the interpreter only
runs signal handlers between bytecodes, and an abandoned thread keeps its core and blocks the
calls queued behind it. Here each call runs in a worker process; one that is still running at
its deadline has its worker killed (SIGKILL, so C code cannot delay it) and replaced, and the
caller gets ``Outcome("timeout")``. Several calls (one per reward function) run side by side on
different workers.

Workers start with ``forkserver`` by default (or ``spawn``): never ``fork``, which would copy a
process holding torch's thread pools and CUDA state. A worker loads each function once (it is
sent with its first call) and keeps it; the pipe between the trainer and its own workers carries
the call arguments and results pickled by ``multiprocessing`` (no file or data is ever unpickled).

A worker dies with the trainer: a trainer killed outright (SIGKILL, OOM) cannot kill its workers, and one
stuck in C code never reads the closed pipe, so each worker asks Linux for SIGKILL when its parent exits
(``prctl(PR_SET_PDEATHSIG)``). Under ``forkserver`` that parent is the fork server, which exits once every
holder of its "alive" pipe has closed it; the trainer holds one end and multiprocessing hands a copy to each
child, so a worker closes its copy (else server and worker would each wait for the other to exit).

``run`` polls ``should_stop`` every ``POLL_S`` seconds while calls run: after a stop request (SIGINT,
SIGTERM) calls still running ``STOP_GRACE_S`` later are given up (``RewardInterrupted``), their workers
killed, so a stuck call cannot hold a stop for longer, while a call that is merely slow still finishes
its step.
"""

from __future__ import annotations

import itertools
import logging
import ctypes
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.reduction import ForkingPickler
from typing import Any

from thermorl.errors import ThermoRLError

log = logging.getLogger(__name__)

POLL_S = 0.1  # how often a waiting caller checks its stop request
STOP_GRACE_S = 5.0  # after a stop request, how long running calls may still finish
LOAD_TIMEOUT_S = 300.0  # a worker's first call of a function unpickles it (imports its module: torch, trl, ...)
START_METHODS = ("forkserver", "spawn")


class RewardInterrupted(ThermoRLError):
    """A stop was requested (Ctrl-C, SIGTERM) while reward calls were running; their workers were killed."""


@dataclass(frozen=True)
class Outcome:
    """What one call came to: ``ok`` (``value`` holds the return value), ``error`` (``error`` holds
    'TypeName: message'), or ``timeout`` (the worker was killed at the deadline)."""

    status: str
    value: Any = None
    error: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class Call:
    """``function(*args, **kwargs)``; ``key`` names the function so a worker loads it only once."""

    key: int
    function: Callable[..., Any]
    args: tuple = ()
    kwargs: dict | None = None


_keys = itertools.count(1)


def function_key() -> int:
    """A fresh key for a function that will be called through a pool."""
    return next(_keys)


def picklable(function: Callable[..., Any]) -> bool:
    """Whether ``function`` can be sent to a worker (a lambda, a closure or a local class cannot)."""
    try:
        ForkingPickler.dumps(function)
    except Exception:  # noqa: BLE001 - pickling fails with several exception types
        return False
    return True


def _die_with_parent(trainer_pid: int) -> None:
    """Have the kernel SIGKILL this process when its parent exits (Linux; elsewhere only the closed pipe ends
    a worker that is waiting for a call), and exit now if the trainer is already gone."""
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    # multiprocessing's private record of the fork server's alive pipe (None under spawn); a worker starts no
    # processes of its own, so it has no use for it
    server = getattr(multiprocessing.forkserver, "_forkserver", None)
    if getattr(server, "_forkserver_alive_fd", None) is not None:
        os.close(server._forkserver_alive_fd)
        server._forkserver_alive_fd = None
    try:
        os.kill(trainer_pid, 0)  # the trainer died before the request took effect: nothing would signal us
    except ProcessLookupError:
        os._exit(0)


def _worker_main(conn: Connection, trainer_pid: int) -> None:
    """Serve calls until the pipe closes: ('call', key, function or None, args, kwargs) -> ('started',), then
    ('ok', value) or ('error', 'Type: message')."""
    _die_with_parent(trainer_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group; the trainer handles it
    functions: dict[int, Callable[..., Any]] = {}
    while True:
        try:
            message = conn.recv()  # unpickling the first call of a function imports its module
        except (EOFError, OSError):  # the trainer closed the pipe or died
            return
        except Exception as err:  # noqa: BLE001 - e.g. the function's module cannot be imported here
            conn.send(("started", None))
            conn.send(("error", f"cannot load the reward call in a worker process: {_describe(err)}"))
            continue
        _, key, function, args, kwargs = message
        if function is not None:
            functions[key] = function
        conn.send(("started", None))  # the call's deadline runs from here
        try:
            reply = ("ok", functions[key](*args, **kwargs))
        except BaseException as err:  # noqa: BLE001 - user code; reported to the caller, never fatal here
            reply = ("error", _describe(err))
        try:
            conn.send(reply)
        except Exception as err:  # noqa: BLE001 - a return value that cannot be sent back
            conn.send(("error", f"reward function returned a value that cannot be sent back: {_describe(err)}"))


def _describe(err: BaseException) -> str:
    message = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return type(err).__name__ + (f": {message}" if message else "")


@dataclass
class _Running:
    """A call on a worker: ``started`` is set when the worker has loaded it and begins to run it."""

    worker: _Worker
    index: int
    deadline: float
    started: float | None = None

    def seconds(self, now: float) -> float:
        return now - self.started if self.started is not None else 0.0


class _Worker:
    def __init__(self, context: Any) -> None:
        self.conn, child = context.Pipe()
        self.process = context.Process(
            target=_worker_main, args=(child, os.getpid()), daemon=True, name="thermorl-reward"
        )
        self.process.start()
        child.close()
        self.loaded: set[int] = set()

    def send(self, call: Call) -> None:
        function = None if call.key in self.loaded else call.function
        self.conn.send(("call", call.key, function, call.args, call.kwargs or {}))
        self.loaded.add(call.key)

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.conn.close()


class RewardPool:
    """``workers`` processes that run reward calls with a deadline each; see the module docstring."""

    def __init__(self, workers: int, start_method: str = "forkserver") -> None:
        if workers < 1:
            raise ValueError(f"a reward pool needs at least one worker, got {workers}")
        if start_method not in START_METHODS:
            raise ValueError(f"reward worker start method must be one of {START_METHODS}, got {start_method!r}")
        self.size = workers
        self.context = multiprocessing.get_context(start_method)
        self.workers: list[_Worker] = []
        self.replaced = 0  # workers killed at a deadline (or found dead) and started anew

    def run(
        self, calls: list[Call], timeout_s: float, should_stop: Callable[[], bool] | None = None
    ) -> list[Outcome]:
        """The outcome of every call, in order; each call gets ``timeout_s`` seconds from when its worker
        starts it (loading a function, e.g. importing its module, has ``LOAD_TIMEOUT_S`` of its own).

        Raises ``RewardInterrupted`` when calls are still running ``STOP_GRACE_S`` after ``should_stop()`` turned true.
        """
        outcomes: list[Outcome | None] = [None] * len(calls)
        pending = list(range(len(calls)))
        running: dict[int, _Running] = {}  # id(worker) -> what it runs
        give_up_at = None  # set by a stop request
        try:
            while pending or running:
                for worker in self._idle(running):
                    if not pending:
                        break
                    index = pending.pop(0)
                    worker.send(calls[index])
                    running[id(worker)] = _Running(worker, index, time.monotonic() + LOAD_TIMEOUT_S)
                wait_s = max(0.0, min(POLL_S, min(r.deadline for r in running.values()) - time.monotonic()))
                ready = wait([r.worker.conn for r in running.values()], timeout=wait_s)
                for job in list(running.values()):
                    outcome = self._advance(job, job.worker.conn in ready, timeout_s)
                    if outcome is not None:
                        outcomes[job.index] = outcome
                        del running[id(job.worker)]
                if give_up_at is None and should_stop is not None and should_stop():
                    give_up_at = time.monotonic() + STOP_GRACE_S
                if give_up_at is not None and time.monotonic() >= give_up_at and (running or pending):
                    raise RewardInterrupted("stopped while reward functions were running (their workers were killed)")
        finally:
            for job in running.values():  # interrupted (stop request, KeyboardInterrupt): never leave them running
                self._replace(job.worker)
        return outcomes  # type: ignore[return-value]

    def _advance(self, job: _Running, readable: bool, timeout_s: float) -> Outcome | None:
        """The call's outcome once it has one (a reply, a dead worker, a deadline passed), else None."""
        now = time.monotonic()
        if readable:
            try:
                status, payload = job.worker.conn.recv()
            except (EOFError, OSError):
                code = job.worker.process.exitcode
                self._replace(job.worker)
                return Outcome("error", error=f"reward worker died (exit code {code})", seconds=job.seconds(now))
            if status == "started":
                job.started, job.deadline = now, now + timeout_s
                return None
            if status == "ok":
                return Outcome("ok", value=payload, seconds=job.seconds(now))
            job.worker.loaded.clear()  # the error may have been a failed load: send the functions again next time
            return Outcome("error", error=payload, seconds=job.seconds(now))
        if now >= job.deadline:
            self._replace(job.worker)
            if job.started is None:
                return Outcome("error", error=f"loading the reward function took over {LOAD_TIMEOUT_S:g} s")
            return Outcome("timeout", seconds=job.seconds(now))
        return None

    def close(self) -> None:
        """Stop every worker."""
        for worker in self.workers:
            worker.conn.close()  # the worker's recv sees EOF and returns
        for worker in self.workers:
            worker.process.join(timeout=1.0)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
        self.workers = []

    def _idle(self, running: dict[int, tuple[_Worker, int, float]]) -> list[_Worker]:
        while len(self.workers) < self.size:
            self.workers.append(_Worker(self.context))
        return [w for w in self.workers if id(w) not in running]

    def _replace(self, worker: _Worker) -> None:
        """Kill ``worker``; a fresh one takes its place on the next call."""
        worker.kill()
        self.workers.remove(worker)
        self.replaced += 1
