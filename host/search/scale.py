"""How a batch of episodes is scored: here, one after another, or in parallel on Ray.

`[scale] backend`:
- "local" (the default): in this process, episode after episode, as a search always did. Ray is
  never imported.
- "ray": each episode's fine-tune is a Ray task, on a Ray that hadmc starts on this machine
  (`num_cpus`) or on an existing cluster (`ray_address = "auto"` or `"ray://head:10001"`). The
  teacher, its distillation set and the validation split go to the object store once; a worker
  reads them once and keeps them. Each task has `cpus_per_task` CPUs and as many torch threads.
  A task whose worker dies is retried once, then its episode is recorded as failed, with the
  reason, in failures.jsonl (the controller learns nothing from it); so is a task whose fine-tune
  raised (not retried: it would raise again).

Measurements stay honest by two phases per batch:
1. latency: every candidate is compressed and exported here and its latency predicted from the
   LUT; kernels the LUT lacks are profiled on the device, one job at a time through the agent's
   queue, while no fine-tune runs;
2. the fine-tunes, in parallel.
With a remote device (neither embedded nor on this machine; `device_location` overrides the
guess) the phases overlap: a candidate's fine-tune starts as soon as its latency is known, and
`hadmc experiment` runs its seeds as Ray tasks too. That assumes no Ray node runs on the
device's machine.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import structlog

from host.compress.policy import Policy
from host.search.evaluate import EpisodeResult, Evaluator, FinetuneContext, Prepared, Tuned, Unscored
from host.search.loop import one_by_one
from lut_store.rpc import is_loopback
from lut_store.tomlfile import ConfigError

if TYPE_CHECKING:
    import torch

BACKENDS = ("local", "ray")
LOCATIONS = ("auto", "local", "remote")
TASK_RETRIES = 1  # a task whose worker dies runs once more, then its episode is recorded as failed
CONNECT_TIMEOUT_S = 5.0
START_TRIES = 2  # Ray gives a local node 30 s to start; on a busy machine one more try usually does
RAY_EXTRA = "pip install 'hadmc[ray]'"

log = structlog.get_logger(__name__)


class ScaleError(ConnectionError):
    """The Ray cluster cannot be used (unreachable, or lost mid-run): the run stops; what its
    checkpoints hold is kept, and `--resume` continues from the last whole batch."""


@dataclass(frozen=True)
class ScaleSettings:
    """`[scale]`: where a batch's fine-tunes run (see the module docstring)."""

    backend: str = "local"
    ray_address: str = ""  # backend "ray": "" starts a Ray here; "auto" or "ray://host:port" joins a cluster
    num_cpus: int = 0  # a Ray started here: its CPUs (0: all of this machine's)
    cpus_per_task: int = 1  # each fine-tune's CPUs and torch threads
    # Where the device is, for the rule that nothing runs beside its measurements: "auto" (local
    # when embedded or at this machine's address), "local", or "remote" (no Ray node on its
    # machine: e.g. a Jetson reached through an SSH tunnel on localhost).
    device_location: str = "auto"

    def check(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"[scale] backend = {self.backend!r}: choose among {', '.join(BACKENDS)}")
        if self.backend == "local" and self.ray_address:
            raise ConfigError(f'[scale] ray_address = {self.ray_address!r} is for backend = "ray"')
        if self.num_cpus < 0 or self.cpus_per_task < 1:
            raise ConfigError(
                f"[scale] num_cpus = {self.num_cpus} (0: all) and cpus_per_task = {self.cpus_per_task} "
                "(at least 1) must be counts of CPUs"
            )
        if self.ray_address and self.num_cpus:
            raise ConfigError("[scale] num_cpus sizes a Ray started here; a cluster at ray_address has its own")
        if self.device_location not in LOCATIONS:
            raise ConfigError(
                f"[scale] device_location = {self.device_location!r}: choose among {', '.join(LOCATIONS)}"
            )
        if self.backend == "ray":
            import_ray()

    def preflight(self) -> None:
        """Before any work: a cluster named by address must answer (fail fast, naming it)."""
        if self.backend == "ray" and self.ray_address not in ("", "auto"):
            check_reachable(self.ray_address)


def import_ray() -> Any:
    """The ray module, or a ConfigError naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f'[scale] backend = "ray" needs Ray, which is not installed: {RAY_EXTRA}') from None
    return ray


def is_local_address(address: str) -> bool:
    """Whether a device address (host:port) names this machine."""
    host = address.rsplit(":", 1)[0].strip("[]")
    return host in (socket.gethostname(), "") or is_loopback(host)


def check_reachable(address: str) -> None:
    """Fail fast, naming the address, when a Ray cluster's port does not answer."""
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f'[scale] ray_address = {address!r}: give "auto" or "ray://host:port"')
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise ScaleError(
            f"the Ray cluster at {address} does not answer ({exc.strerror or exc}); start it "
            "(ray start --head) or fix [scale] ray_address"
        ) from None


def device_is_remote(settings: ScaleSettings, embedded: bool, address: str) -> bool:
    """Whether the device's machine is free of this run's fine-tunes (see `device_location`)."""
    if settings.device_location != "auto":
        return settings.device_location == "remote"
    return not embedded and not is_local_address(address)


@contextmanager
def ray_session(settings: ScaleSettings) -> Iterator[Any]:
    """The ray module, connected as `settings` say (a Ray already connected, in a worker or a
    test, is used as it is); a Ray started here is shut down on leaving."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    settings.preflight()
    _start_ray(ray, settings)
    try:
        yield ray
    finally:
        ray.shutdown()


def _start_ray(ray: Any, settings: ScaleSettings) -> None:
    """Start a Ray node here, or join `settings.ray_address`'s cluster. A local node that did not
    start in Ray's fixed 30 s (a busy machine) is shut down and started once more."""
    for attempt in range(1, START_TRIES + 1):
        try:
            ray.init(
                address=settings.ray_address or "local",  # "local": our own, never a cluster found by chance
                num_cpus=(settings.num_cpus or os.cpu_count()) if not settings.ray_address else None,
                include_dashboard=False,
                logging_level="ERROR",
                log_to_driver=False,
            )
            return
        except ConnectionError as exc:
            raise ScaleError(f"cannot join the Ray cluster at {settings.ray_address}: {exc}") from None
        except Exception as exc:  # Ray raises a bare Exception when its node does not start
            if settings.ray_address or "timed out during startup" not in str(exc):
                raise
            ray.shutdown()
            if attempt == START_TRIES:
                raise ScaleError(f"Ray's node on this machine did not start in {START_TRIES} tries: {exc}") from None
            log.warning("ray.start_retry", attempt=attempt, reason=str(exc))


class LocalScorer:
    """Episode after episode, in this process."""

    def __init__(self, evaluator: Evaluator) -> None:
        self.score = one_by_one(evaluator)

    def __call__(self, batch: Sequence[tuple[int, Policy]]) -> list[EpisodeResult | Unscored]:
        return self.score(batch)

    def close(self) -> None:
        pass


class RayScorer:
    """Phase one here, phase two as Ray tasks (see the module docstring)."""

    def __init__(self, evaluator: Evaluator, settings: ScaleSettings, overlap: bool) -> None:
        self.stack = ExitStack()
        ray = self.stack.enter_context(ray_session(settings))
        self.ray, self.evaluator, self.overlap = ray, evaluator, overlap
        self.task = ray.remote(_finetune).options(num_cpus=settings.cpus_per_task, max_retries=TASK_RETRIES)
        self.context = [ray.put(evaluator.context())]  # in a list: the task resolves it, once per worker
        # Every worker slot starts its process and reads the context now, before phase one of the
        # first batch measures anything on the device.
        slots = max(1, int(ray.cluster_resources().get("CPU", 1) // settings.cpus_per_task))
        warm = ray.remote(_warm).options(num_cpus=settings.cpus_per_task, max_retries=TASK_RETRIES)
        ray.get([warm.remote(self.context) for _ in range(slots)])

    def __call__(self, batch: Sequence[tuple[int, Policy]]) -> list[EpisodeResult | Unscored]:
        try:
            prepared: list[Prepared] = []
            refs: list[Any] = []
            for episode, policy in batch:
                prepared.append(self.evaluator.prepare(policy, episode))
                if self.overlap:
                    refs.append(self._submit(prepared[-1]))
            if not self.overlap:
                refs = [self._submit(p) for p in prepared]
            self.evaluator.bench.progress.live(f"fine-tuning {len(batch)} candidates on Ray ...", force=True)
            return [self._outcome(p, ref) for p, ref in zip(prepared, refs, strict=True)]
        except (ConnectionError, self.ray.exceptions.RaySystemError, self.ray.exceptions.LocalRayletDiedError) as exc:
            if isinstance(exc, ScaleError):
                raise
            raise ScaleError(
                f"the Ray cluster was lost during episodes {batch[0][0]}..{batch[-1][0]} "
                f"({type(exc).__name__}: {_first_line(exc)}); the episodes before them are kept: "
                "run again with --resume"
            ) from None

    def _submit(self, prepared: Prepared) -> Any:
        state = prepared.student.state_dict()
        return self.task.remote(self.context, prepared.policy, state, prepared.episode, prepared.loader_state)

    def _outcome(self, prepared: Prepared, ref: Any) -> EpisodeResult | Unscored:
        ray = self.ray
        try:
            tuned = ray.get(ref)
        except (ConnectionError, ray.exceptions.RaySystemError, ray.exceptions.LocalRayletDiedError):
            raise  # the cluster, not this task: the batch stops (__call__)
        except ray.exceptions.RayError as exc:
            # A worker that died is retried; an error the fine-tune raised is not (it would again).
            tries = "" if isinstance(exc, ray.exceptions.RayTaskError) else f" after {1 + TASK_RETRIES} attempts"
            name, _, rest = failure_reason(exc).partition(": ")
            return Unscored(f"{name}{tries}: {rest}")
        return prepared.result(tuned)

    def close(self) -> None:
        self.stack.close()


def failure_reason(exc: BaseException) -> str:
    """What failed, in a line: a task's own exception rather than Ray's traceback around it."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):  # RayTaskError(ValueError) -> RayTaskError: ValueError: ...
        return f"{type(exc).__name__.split('(')[0]}: {type(cause).__name__}: {_first_line(cause)}"
    return f"{type(exc).__name__}: {_first_line(exc)}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""


_CONTEXTS: dict[str, FinetuneContext] = {}  # a worker's fine-tune contexts, by object id


def _context(context: list[Any]) -> FinetuneContext:
    """The fine-tune context behind `context[0]`, fetched once per worker process."""
    import ray

    key = context[0].hex()
    if key not in _CONTEXTS:
        _CONTEXTS.clear()  # a new search's context replaces the last one's
        _CONTEXTS[key] = ray.get(context[0])
    return _CONTEXTS[key]


def _warm(context: list[Any]) -> int:
    """A Ray task: start a worker and fetch the context; its process id."""
    _context(context)
    return os.getpid()


def _finetune(
    context: list[Any], policy: Policy, state: dict[str, torch.Tensor], episode: int, loader_state: torch.Tensor
) -> Tuned:
    """A Ray task: phase two of one episode (the student rebuilt from its state, fine-tuned and
    scored), with as many torch threads as the task has CPUs."""
    import ray
    import torch

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    torch.set_num_threads(max(1, int(cpus)))
    t0 = time.monotonic()
    found = _context(context)
    tuned = found.finetune(found.student(policy, state), episode, loader_state)
    return replace(tuned, seconds=time.monotonic() - t0)  # the student's rebuild included


def open_scorer(evaluator: Evaluator, settings: ScaleSettings) -> LocalScorer | RayScorer:
    """The scorer `settings` ask for, on the evaluator's workbench."""
    if settings.backend == "local":
        return LocalScorer(evaluator)
    endpoint = evaluator.bench.device.endpoint
    return RayScorer(evaluator, settings, device_is_remote(settings, endpoint.name == "embedded", endpoint.address))
