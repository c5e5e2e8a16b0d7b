"""Candidate evaluations per hour: the local backend against Ray on this machine, and a projection
to more workers. Prints one JSON document.

One workbench (model, data, teacher, embedded device, LUT), one random controller's policies
(the same for every backend: a controller's choice does not change an evaluation's cost):
1. warm-up: every policy's latency predicted once, so both backends find the LUT filled and
   time evaluations, not first-time kernel profiling;
2. in one run, one after the other: the local backend (one episode at a time, torch on all cores) and
   `[scale] backend = "ray"` with `--workers` workers of one CPU and one torch thread each,
   `parallel_episodes` = workers. Evaluations per hour = episodes / the episode loop's wall time.

The projection uses this run's Ray figures: `s`, the median serial seconds of phase one per
candidate (compress, export, LUT latency: one candidate at a time, with no fine-tune running), and
the fine-tune tasks' seconds on one worker each (the student's rebuild included). A batch waits
for its slowest fine-tune, so a batch of n candidates on n workers takes n*s + M(n), with M(n)
the expected longest of n task times (resampled from this run's):

    evaluations/hour(n) = 3600 * n / (n * s + M(n))              (a device on this machine: phases in turn)
    evaluations/hour(n) = 3600 * n / max(n * s, s + M(n))        (a remote device: the phases overlap)

At the measured n the formula is checked against the measured rate (`model_error`). It assumes
workers as fast as this machine's one thread, a device as fast as this run's, and task times
like these candidates' (for large n, M(n) tends to the longest task seen).

Usage: python bench/scale_bench.py [--config search.toml] [--episodes 8] [--workers 2] [--seed 0]
(the config's model and data, default ResNet18 on the built-in data; uses $HADMC_HOME's teacher)
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from device_agent.fingerprint import cpu_info
from host import logs
from host.progress import Progress
from host.search.evaluate import Evaluator
from host.search.loop import RewardReference, run_episodes
from host.search.registry import make_controller
from host.search.run import SearchConfig, load_search_config
from host.search.scale import ScaleSettings, open_scorer
from host.search.space import SearchSpace, describe_layers
from host.workbench import Workbench

PROJECTED_WORKERS = (1, 2, 8, 32)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="a search TOML (model, data, episode settings)")
    parser.add_argument("--episodes", type=int, default=8, help="episodes per backend")
    parser.add_argument("--workers", type=int, default=2, help="Ray workers (1 CPU each)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logs.configure(0)
    config = load_search_config(args.config)
    report: dict = {
        "settings": {
            "model": config.model,
            "data": config.data.name,
            "episodes": args.episodes,
            "workers": args.workers,
            "episode_samples": config.search.episode_samples,
            "episode_epochs": config.episode_distill.epochs,
            "seed": args.seed,
        },
        "cpu": cpu_info().model,
        "cpu_busy_pct_before": psutil.cpu_percent(interval=1.0),
    }
    with tempfile.TemporaryDirectory(prefix="hadmc-scale-") as tmp, Workbench.open(config, Progress(False)) as bench:
        evaluator = Evaluator(
            bench,
            bench.distill_set(config.episode_distill),
            Path(tmp),
            config.episode_distill,
            config.search.episode_samples,
        )
        space = SearchSpace(
            config.model,
            describe_layers(bench.teacher, bench.example, bench.layer_limits()),
            bench.device_precisions(),
            config.search.min_keep,
            config.search.max_keep,
        )
        controller = make_controller("random", space, config.ppo, args.seed)
        t0 = time.monotonic()
        for i in range(args.episodes):  # warm-up: the LUT holds every policy's kernels
            evaluator.prepare(controller.propose(i), i)
            controller.abandon()
        report["warmup_s"] = time.monotonic() - t0
        fp32 = bench.predict(bench.export_reference(Path(tmp) / "reference.onnx")).latency_ms
        reference = RewardReference(fp32, 4 * sum(p.numel() for p in bench.teacher.parameters()))
        backends = {
            "local": (ScaleSettings(), 1),
            "ray": (ScaleSettings("ray", num_cpus=args.workers, cpus_per_task=1), args.workers),
        }
        runs = {
            name: _timed(config, evaluator, space, settings, parallel, args, reference)
            for name, (settings, parallel) in backends.items()
        }
    report["cpu_busy_pct_after"] = psutil.cpu_percent(interval=1.0)
    report["backends"] = runs
    report["ray_over_local"] = runs["ray"]["evaluations_per_hour"] / runs["local"]["evaluations_per_hour"]
    report["projection"] = projection(runs["ray"], args.seed)
    print(json.dumps(report, indent=2))
    return 0


def projection(ray: dict, seed: int) -> dict:
    """Evaluations per hour at more workers, from the Ray run's phase times (see the docstring)."""
    rng = np.random.default_rng(seed)
    s, tasks = ray["serial_s_median"], np.asarray(ray["finetune_s"])

    def longest(n: int) -> float:
        return float(rng.choice(tasks, size=(4000, n)).max(axis=1).mean())

    def rates(n: int) -> dict[str, float]:
        m = longest(n)
        return {"device_here": 3600 * n / (n * s + m), "remote_device": 3600 * n / max(n * s, s + m)}

    n_run = ray["parallel_episodes"]
    return {
        "formula": {
            "device_on_this_machine": "3600 * n / (n * s + M(n))",
            "remote_device": "3600 * n / max(n * s, s + M(n))",
        },
        "s_serial_phase_s": s,
        "finetune_task_s": sorted(ray["finetune_s"]),
        "M_longest_of_n_s": {str(n): longest(n) for n in PROJECTED_WORKERS},
        "evaluations_per_hour": {str(n): rates(n) for n in PROJECTED_WORKERS},
        "model_error_at_measured_n": rates(n_run)["device_here"] / ray["evaluations_per_hour"] - 1,
        "serial_fraction_at_1_worker": s / (s + float(np.median(tasks))),
    }


def _timed(
    config: SearchConfig,
    evaluator: Evaluator,
    space: SearchSpace,
    settings: ScaleSettings,
    parallel: int,
    args: argparse.Namespace,
    reference: RewardReference,
) -> dict:
    """The episode loop on one backend: wall time, evaluations per hour, per-phase medians."""
    controller = make_controller("random", space, config.ppo, args.seed)
    t0 = time.monotonic()
    scorer = open_scorer(evaluator, settings)
    startup_s = time.monotonic() - t0
    try:
        t0 = time.monotonic()
        episodes = run_episodes(controller, scorer, args.episodes, reference, config.reward, parallel=parallel)
        wall_s = time.monotonic() - t0
    finally:
        scorer.close()
    seconds = [e.result.seconds for e in episodes]
    return {
        "parallel_episodes": parallel,
        "startup_s": startup_s,  # a Ray started here: not in wall_s
        "scored": len(episodes),
        "wall_s": wall_s,
        "evaluations_per_hour": 3600 * len(episodes) / wall_s,
        "serial_s_median": statistics.median(x["compress_s"] + x["latency_s"] for x in seconds),
        "finetune_s_median": statistics.median(x["finetune_s"] for x in seconds),
        "finetune_s": [x["finetune_s"] for x in seconds],
        "val_accuracy_mean": statistics.fmean(e.result.val_accuracy for e in episodes),
    }


if __name__ == "__main__":
    raise SystemExit(main())
