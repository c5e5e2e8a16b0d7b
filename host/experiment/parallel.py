"""An experiment's independent work as Ray tasks: its seeds, and within a seed its independent
work: cross-dataset's cases, hirelc-ablation's variants and cross-device's devices (when each is
on a machine of its own) as searches, the ablation's rows as fine-tunes (`[scale] backend = "ray"`,
host/search/scale.py).

Only when every device the study measures on is remote (no Ray node on its machine): work on one
machine with the device would fine-tune beside its measurements, and embedded agents would measure
on whichever machine a task ran on. Searches on one device are measured one job at a time through
its agent's queue. Otherwise the work runs here, one after another, as before.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from host.experiment.config import Experiment


def on_ray(experiment: Experiment) -> bool:
    """Whether the experiment's independent work may run as Ray tasks (see the module docstring)."""
    from host.fleet import resolve
    from host.search.scale import device_is_remote

    scale, device = experiment.search.scale, experiment.search.device
    if scale.backend != "ray":
        return False
    names = experiment.settings.devices or ([device.name] if device.name else [])
    if not names:  # embedded agents
        return False
    files = Path(device.devices_file).expanduser() if device.devices_file else None
    return all(device_is_remote(scale, False, resolve(name, files).address) for name in names)


def on_separate_machines(experiment: Experiment) -> bool:
    """Whether the experiment's devices are agents on as many machines, told apart by their
    addresses' hosts (every name of this machine counting as one): searches for them may then
    measure at the same time."""
    from host.fleet import resolve
    from host.search.scale import is_local_address
    from lut_store.rpc import split_address

    device = experiment.search.device
    files = Path(device.devices_file).expanduser() if device.devices_file else None
    addresses = [resolve(name, files).address for name in experiment.settings.devices]
    hosts = ["" if is_local_address(a) else split_address(a)[0].lower() for a in addresses]
    return len(set(hosts)) == len(hosts)


def run_tasks(
    experiment: Experiment,
    fn: Callable[..., Any],
    calls: Sequence[tuple[str, tuple[Any, ...]]],
    done: Callable[[str, Any], None] = lambda label, result: None,
) -> dict[str, Any]:
    """`fn(*args)` for each (label, args) of `calls` as a Ray task; `done(label, result)` as each
    finishes. A task whose worker dies runs once more; what still failed is named, after the
    others have finished, in a ScaleError (their finished work is kept)."""
    from host.search.scale import TASK_RETRIES, ScaleError, failure_reason, ray_session

    scale = experiment.search.scale
    env = {k: v for k, v in os.environ.items() if k == "HADMC_HOME"}  # the teacher cache and default LUT
    results: dict[str, Any] = {}
    failed: list[str] = []
    with ray_session(scale) as ray:
        task = ray.remote(fn).options(
            num_cpus=scale.cpus_per_task, max_retries=TASK_RETRIES, runtime_env={"env_vars": env}
        )
        pending = {task.remote(*args): label for label, args in calls}
        while pending:
            (ready,), _ = ray.wait(list(pending), num_returns=1)
            label = pending.pop(ready)
            try:
                results[label] = ray.get(ready)
            except ray.exceptions.RayError as exc:
                failed.append(f"{label}: {failure_reason(exc)}")
                continue
            done(label, results[label])
    if failed:
        raise ScaleError(
            f"{len(failed)} task(s) failed on Ray ({'; '.join(failed)}); the finished ones are kept: "
            "run again with --resume"
        )
    return results
