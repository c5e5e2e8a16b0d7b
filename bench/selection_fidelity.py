"""How well does the selection's short fine-tune foretell the final model, and how far does one
policy's final test accuracy move between fine-tune seeds? Prints one JSON document.

For a finished search run directory: the distinct policies among its controllers' final models
(and, with --policies candidates, their selection candidates), plus the selection floor's policy,
each fine-tuned from the teacher with `--seeds` fine-tune seeds at two fidelities, as the search
does: the selection's (`[select] epochs` of the final fine-tune) and the final one
(`[final_distill] epochs`). Per policy: its LUT prediction; at the selection's fidelity the
validation top-1 and KL(teacher || student); at the final one the test top-1 as onnxruntime's
integer kernels compute it (mean, sample sd, each seed) and its drop from the teacher. Across
policies: Spearman's rank correlation of each selection-fidelity signal with the final test
accuracy (KL negated, so both read "higher foretells more accurate").

This puts numbers on what a choice "within half a point" can resolve on this data: one test image
is 100 / (test images) points.

Usage: python bench/selection_fidelity.py RUN_DIR [--seeds 2] [--policies finals|candidates]
(uses $HADMC_HOME for the run's cached teacher and LUT, and the run's own config)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

from scipy.stats import spearmanr

from device_agent.fingerprint import cpu_info
from host.compress.policy import Policy
from host.progress import Progress
from host.runs import SearchSummary, SelectionFloor, read_config, read_record
from host.search.run import SearchConfig
from host.search.select import fine_tuned
from host.workbench import Workbench


def _policies(run: Path, summary: SearchSummary, with_candidates: bool) -> dict[str, tuple[Policy, float | None]]:
    """Label -> (policy, LUT-predicted ms or None): each distinct policy once, under its first label."""
    episodes: dict[tuple[str, int], tuple[Policy, float]] = {}
    for line in (run / "episodes.jsonl").read_text().splitlines():
        row = json.loads(line)
        policy = Policy.from_json(json.dumps(row["policy"]))
        episodes[(row["controller"], row["episode"])] = (policy, row["predicted_latency_ms"])
    found: dict[str, tuple[str, Policy, float | None]] = {}
    for name, final in summary.controllers.items():
        origin = "the selection floor" if final.episode is None else f"episode {final.episode}"
        labelled = [(f"{name} final ({origin})", final.policy, final.predicted_latency_ms)]
        if with_candidates:
            labelled += [
                (f"{name} candidate (episode {c.episode})", *episodes[(name, c.episode)])
                for c in final.selection
                if not c.chosen and c.episode is not None
            ]
        for label, policy, predicted in labelled:
            found.setdefault(policy.to_json(), (label, policy, predicted))
    floor_path = run / "final" / "floor.json"
    if floor_path.exists():
        floor = read_record(floor_path, SelectionFloor)
        label = "selection floor (unpruned, fastest precisions)"
        found.setdefault(floor.policy.to_json(), (label, floor.policy, floor.predicted_latency_ms))
    return {label: (policy, predicted) for label, policy, predicted in found.values()}


def _spread(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else None,
        "per_seed": values,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished search run directory (summary.json)")
    parser.add_argument("--seeds", type=int, default=2, help="fine-tune seeds per policy and fidelity")
    parser.add_argument("--policies", choices=("finals", "candidates"), default="finals")
    args = parser.parse_args()
    from host import logs

    logs.configure()  # logs to stderr: stdout is the JSON document
    if args.seeds < 1:
        parser.error(f"--seeds {args.seeds}: give at least 1")
    if not (args.run / "summary.json").exists():
        parser.error(f"{args.run} has no summary.json: give a finished search run directory")
    config = read_config(args.run / "config.json", SearchConfig)
    summary = read_record(args.run / "summary.json", SearchSummary)
    teacher = summary.baseline.test_accuracy_onnxruntime
    policies = _policies(args.run, summary, args.policies == "candidates")
    rows = []
    t0 = time.monotonic()
    with Workbench.open(config, Progress(False)) as bench:
        test_images = len(bench.loaders.test.dataset)
        for label, (policy, predicted_ms) in policies.items():
            cheap, final = [], []
            for seed in range(args.seeds):
                distill = replace(config.final_distill, seed=seed, epochs=config.select.epochs)
                cheap.append(bench.fidelity(fine_tuned(bench, policy, distill, label), "val"))
                distill = replace(config.final_distill, seed=seed)
                final.append(bench.accuracy(fine_tuned(bench, policy, distill, label), "test"))
            rows.append(
                {
                    "policy": label,
                    "predicted_ms": predicted_ms,
                    "selection_val_accuracy": _spread([f.accuracy for f in cheap]),
                    "selection_val_kl": _spread([f.kl for f in cheap]),
                    "final_test_accuracy": _spread(final),
                    "final_drop_from_teacher_pt": 100 * (teacher - statistics.fmean(final)),
                }
            )
    final_means = [r["final_test_accuracy"]["mean"] for r in rows]

    def rank_correlation(signal: list[float]) -> float | None:
        return float(spearmanr(signal, final_means).statistic) if len(rows) >= 3 else None

    result = {
        "cpu": cpu_info().model,
        "run": str(args.run),
        "model": config.model,
        "teacher_test_accuracy": teacher,
        "test_images": test_images,
        "one_test_image_pt": 100 / test_images,
        "selection_epochs": config.select.epochs,
        "final_epochs": config.final_distill.epochs,
        "seeds": args.seeds,
        "policies": rows,
        "spearman_with_final_test_accuracy": {
            "selection_val_accuracy": rank_correlation([r["selection_val_accuracy"]["mean"] for r in rows]),
            "selection_val_kl_negated": rank_correlation([-r["selection_val_kl"]["mean"] for r in rows]),
        },
        "wall_s": time.monotonic() - t0,
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
