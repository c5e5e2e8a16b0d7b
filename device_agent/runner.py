"""Runs measurement jobs one at a time in a worker process with a hard timeout.

One job at a time per device (measurements must not overlap); callers wait in a bounded queue
and are refused beyond it. A job whose caller goes away is cancelled: the worker gets a cancel
flag it checks between runs, and is killed if it does not answer within a grace period. A
worker that crashes or times out is replaced on the next job; the daemon keeps serving.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from typing import Any

import psutil
import structlog

from device_agent.jobs import CANCELLED, CRASHED, EXHAUSTED, FAILED, TIMEOUT, JobError, JobFailure, WorkerSettings

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

    def __init__(
        self,
        settings: WorkerSettings,
        max_queued: int,
        target: str = "device_agent.worker:worker_main",
        idle_exit_s: float = 60.0,
    ) -> None:
        """`target` names the worker's entry function as 'module:function'. The worker exits
        after `idle_exit_s` without jobs (0: it stays) and is restarted for the next job."""
        self._settings = settings
        self._idle_exit_s = idle_exit_s
        self._idle_timer: threading.Timer | None = None
        self._max_queued = max_queued
        self._target = target
        self._cond = threading.Condition()
        self._busy = False
        self._waiting = 0
        self._closed = False
        self._proc: subprocess.Popen | None = None
        self._conn: Connection | None = None

    @property
    def tmp_dir(self) -> str | None:
        """The agent's scratch directory the worker writes under (None: the system's)."""
        return self._settings.tmp_dir or None

    @property
    def worker_pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

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
            if self._idle_timer is not None:
                self._idle_timer.cancel()
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()
                self.schedule_idle_exit()

    def schedule_idle_exit(self) -> None:
        """(Re)start the countdown after which an idle worker exits, freeing its memory."""
        if self._idle_exit_s <= 0 or self._closed:
            return
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._idle_timer = threading.Timer(self._idle_exit_s, self._retire_if_idle)
        self._idle_timer.daemon = True
        self._idle_timer.start()

    def _retire_if_idle(self) -> None:
        with self._cond:
            if self._busy or self._waiting or self._closed or self._proc is None:
                return
            log.info("worker.retired", idle_s=self._idle_exit_s)
            self._discard_worker()

    def _ensure_worker(self) -> None:
        """Start a worker process unless one is alive. A fresh interpreter (not a fork, not
        multiprocessing's spawn, which re-runs the caller's __main__) keeps embedding safe."""
        if self._proc is not None and self._proc.poll() is None:
            return
        self._discard_worker()
        parent_sock, child_sock = socket.socketpair()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p or os.getcwd() for p in sys.path))
        proc = subprocess.Popen(
            [sys.executable, "-m", "device_agent.worker", self._target, str(child_sock.fileno())],
            pass_fds=(child_sock.fileno(),),
            env=env,
            stdin=subprocess.DEVNULL,
        )
        child_sock.close()
        conn = Connection(parent_sock.detach())
        conn.send(self._settings)
        if not conn.poll(_START_TIMEOUT_S):
            proc.kill()
            proc.wait()
            raise JobError(FAILED, f"the measurement worker did not start within {_START_TIMEOUT_S:.0f} s")
        try:
            hello = conn.recv()
        except (EOFError, OSError):
            proc.wait(5)
            raise JobError(
                CRASHED, f"the measurement worker died while starting ({_exit_text(proc.returncode)})"
            ) from None
        if isinstance(hello, JobFailure):
            proc.wait(5)
            raise JobError(hello.code, hello.message)
        self._proc, self._conn = proc, conn
        log.info("worker.started", pid=proc.pid)

    def _discard_worker(self) -> None:
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if conn is not None:
            conn.close()
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait(5)

    def call(self, job: Any, timeout_s: float, is_active: Callable[[], bool]) -> Any:
        """Run one job (inside `slot`) and return the worker's reply.

        Raises JobError: the job's own failure, TIMEOUT past `timeout_s` (worker killed),
        CRASHED when the worker dies, EXHAUSTED past the memory limit (worker killed),
        CANCELLED when `is_active` turns false.
        """
        if self._closed:
            raise RunnerClosed()
        self._ensure_worker()
        assert self._conn is not None and self._proc is not None
        self._conn.send(job)
        deadline = time.monotonic() + timeout_s
        cancel_deadline: float | None = None
        while True:
            try:
                ready = self._conn.poll(_POLL_S)
                reply = self._conn.recv() if ready else None
            except (EOFError, OSError):
                proc = self._proc
                exit_text = _exit_text(proc.wait(5) if proc is not None else None)
                self._discard_worker()
                raise JobError(
                    CRASHED, f"the runtime crashed ({exit_text}); the agent started a fresh worker"
                ) from None
            if ready:
                if isinstance(reply, JobFailure):
                    raise JobError(reply.code, reply.message)
                return reply
            self._check_memory()
            now = time.monotonic()
            if cancel_deadline is None and (self._closed or not is_active()):
                self._signal_cancel()
                cancel_deadline = now + _CANCEL_GRACE_S
            if cancel_deadline is not None and now >= cancel_deadline:
                log.warning("worker.killed", reason="cancelled job did not stop in time")
                self._discard_worker()
                raise JobError(CANCELLED, "cancelled")
            if now >= deadline:
                log.warning("worker.killed", reason="timeout", timeout_s=timeout_s)
                self._discard_worker()
                raise JobError(TIMEOUT, f"the job ran past its {timeout_s:g} s timeout and was killed")

    def _check_memory(self) -> None:
        """Stop the worker when its resident memory passes the limit: checked every poll, so a
        runaway model is stopped within one poll of passing it (systemd's MemoryMax bounds the rest)."""
        limit_mib = self._settings.max_memory_mib
        if limit_mib <= 0 or self._proc is None:
            return
        try:
            rss_mib = psutil.Process(self._proc.pid).memory_info().rss / (1024 * 1024)
        except psutil.Error:  # it exited: the next poll reads why
            return
        if rss_mib > limit_mib:
            log.warning("worker.killed", reason="memory", rss_mib=round(rss_mib), max_worker_mib=limit_mib)
            self._discard_worker()
            raise JobError(
                EXHAUSTED,
                f"the job took {rss_mib:.0f} MiB of memory, past the agent's max_worker_mib = {limit_mib:g}; "
                "the worker was stopped and a fresh one runs the next job",
            )

    def _signal_cancel(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGUSR1)

    def close(self) -> None:
        """Cancel the running job, stop the worker, refuse new jobs."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            if self._idle_timer is not None:
                self._idle_timer.cancel()
        self._signal_cancel()
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
