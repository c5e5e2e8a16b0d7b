"""Runs measurement jobs one at a time in a worker process with a hard timeout.

One job at a time per device (measurements must not overlap); callers wait in a bounded queue
and are refused beyond it. A job whose caller goes away is cancelled: the worker gets a cancel
flag it checks between runs, and is killed if it does not answer within a grace period. A
worker that crashes or times out is replaced on the next job; the daemon keeps serving.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import structlog

from device_agent.jobs import CANCELLED, CRASHED, FAILED, TIMEOUT, JobError, JobFailure, WorkerSettings
from device_agent.worker import worker_main

log = structlog.get_logger(__name__)

_POLL_S = 0.05
_CANCEL_GRACE_S = 3.0
_START_TIMEOUT_S = 120.0


class QueueFull(Exception):
    """More callers are waiting than the queue holds."""


class RunnerClosed(Exception):
    """The runner is shutting down."""


class MeasurementRunner:
    """The daemon's handle on its measurement worker process."""

    def __init__(self, settings: WorkerSettings, max_queued: int,
                 target: Callable[..., None] = worker_main) -> None:
        self._settings = settings
        self._max_queued = max_queued
        self._target = target
        self._ctx = mp.get_context("spawn")
        self._cond = threading.Condition()
        self._busy = False
        self._waiting = 0
        self._closed = False
        self._proc: Any = None
        self._conn: Any = None
        self._cancel = self._ctx.Event()

    @property
    def worker_pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.is_alive() else None

    @contextmanager
    def slot(self, is_active: Callable[[], bool]) -> Iterator[None]:
        """Hold the device for one job; wait in the bounded queue for it first.

        Raises QueueFull when the queue is full, JobError(CANCELLED) when the caller leaves
        while waiting, RunnerClosed when shutting down.
        """
        with self._cond:
            if self._closed:
                raise RunnerClosed()
            if self._busy:
                if self._waiting >= self._max_queued:
                    raise QueueFull(
                        f"the device is measuring and {self._waiting} job(s) already wait "
                        f"(max_queued_jobs = {self._max_queued}); retry later"
                    )
                self._waiting += 1
                try:
                    while self._busy and not self._closed:
                        if not is_active():
                            raise JobError(CANCELLED, "caller left the queue")
                        self._cond.wait(_POLL_S * 4)
                finally:
                    self._waiting -= 1
                if self._closed:
                    raise RunnerClosed()
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def _ensure_worker(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            return
        self._discard_worker()
        parent_conn, child_conn = self._ctx.Pipe()
        self._cancel.clear()
        proc = self._ctx.Process(target=self._target, args=(child_conn, self._cancel, self._settings),
                                 name="hadmc-measure", daemon=True)
        proc.start()
        child_conn.close()
        if not parent_conn.poll(_START_TIMEOUT_S):
            proc.kill()
            raise JobError(FAILED, f"the measurement worker did not start within {_START_TIMEOUT_S:.0f} s")
        try:
            hello = parent_conn.recv()
        except EOFError:
            proc.join(1)
            raise JobError(CRASHED, f"the measurement worker died while starting ({_exit_text(proc.exitcode)})") from None
        if isinstance(hello, JobFailure):
            proc.join(5)
            raise JobError(hello.code, hello.message)
        self._proc, self._conn = proc, parent_conn
        log.info("worker.started", pid=proc.pid)

    def _discard_worker(self) -> None:
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if conn is not None:
            conn.close()
        if proc is not None:
            if proc.is_alive():
                proc.kill()
            proc.join(5)

    def call(self, job: Any, timeout_s: float, is_active: Callable[[], bool]) -> Any:
        """Run one job (inside `slot`) and return the worker's reply.

        Raises JobError: the job's own failure, TIMEOUT past `timeout_s` (worker killed),
        CRASHED when the worker dies, CANCELLED when `is_active` turns false.
        """
        if self._closed:
            raise RunnerClosed()
        self._ensure_worker()
        self._cancel.clear()
        self._conn.send(job)
        deadline = time.monotonic() + timeout_s
        cancel_deadline: float | None = None
        while True:
            try:
                ready = self._conn.poll(_POLL_S)
                reply = self._conn.recv() if ready else None
            except (EOFError, OSError):
                code = self._proc.exitcode if self._proc else None
                self._proc.join(2) if self._proc else None
                exit_text = _exit_text(self._proc.exitcode if self._proc else code)
                self._discard_worker()
                raise JobError(CRASHED, f"the runtime crashed ({exit_text}); the agent started a fresh worker") from None
            if ready:
                if isinstance(reply, JobFailure):
                    raise JobError(reply.code, reply.message)
                return reply
            now = time.monotonic()
            if cancel_deadline is None and (self._closed or not is_active()):
                self._cancel.set()
                cancel_deadline = now + _CANCEL_GRACE_S
            if cancel_deadline is not None and now >= cancel_deadline:
                log.warning("worker.killed", reason="cancelled job did not stop in time")
                self._discard_worker()
                raise JobError(CANCELLED, "cancelled")
            if now >= deadline:
                log.warning("worker.killed", reason="timeout", timeout_s=timeout_s)
                self._discard_worker()
                raise JobError(TIMEOUT, f"the job ran past its {timeout_s:g} s timeout and was killed")

    def close(self) -> None:
        """Cancel the running job, stop the worker, refuse new jobs."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._cancel.set()
        deadline = time.monotonic() + _CANCEL_GRACE_S
        while self._busy and time.monotonic() < deadline:
            time.sleep(_POLL_S)
        self._discard_worker()


def _exit_text(exitcode: int | None) -> str:
    if exitcode is None:
        return "exit status unknown"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit status {exitcode}"
