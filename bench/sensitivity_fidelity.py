"""Which block sensitivity ranks blocks by the damage that compressing them does: HiReLC's Fisher
(per-sample squared gradients, host/search/hirelc/blocks.py) or the saliency the PPO surrogate uses
(the batch gradient times the weight, squared: host/search/surrogate.py). Prints one JSON document.

Damage: each block compressed alone (its kernels' weakest output channels masked, weights rounded,
as HiReLC's proxy does; the classifier keeps its width) at each setting, scored on the validation
split against the teacher: 1 - agreement with the teacher's top-1, and KL(teacher || model). Scores:
both measures on `--samples` training samples, for `--draws` independent draws of them. Reported:
the Spearman correlation over blocks of each score with each damage, per setting and draw, and the
mean and spread over draws and settings.

Usage: python bench/sensitivity_fidelity.py [--model resnet18] [--data synthetic-neu-det]
       [--samples 32] [--draws 3]
(uses $HADMC_HOME for the cached teacher, as `hadmc search` does; trains it if absent)
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics

import torch
from scipy.stats import spearmanr

from device_agent.fingerprint import cpu_info
from host import logs
from host.compress.policy import LayerAction
from host.progress import Progress
from host.search.hirelc.blocks import find_blocks, fisher_sensitivity, take
from host.search.hirelc.proxy import compressed_weight
from host.search.run import load_search_config
from host.search.space import SearchSpace, describe_layers
from host.search.surrogate import layer_sensitivity
from host.workbench import Workbench, fidelity_of
from lut_store.precision import Precision

SETTINGS = {
    "keep 0.5, fp32": LayerAction(0.5, Precision.FP32),
    "keep 1.0, int4": LayerAction(1.0, Precision.INT4W),
    "keep 0.5, int8": LayerAction(0.5, Precision.INT8),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--data", default="synthetic-neu-det")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--draws", type=int, default=3)
    args = parser.parse_args()
    logs.configure()  # logs to stderr: stdout is the JSON document
    config = load_search_config(None, {"model": args.model, "data": {"name": args.data}})
    with Workbench.open(config, Progress(False)) as bench:
        teacher = bench.teacher
        space = SearchSpace(
            config.model, describe_layers(teacher, bench.example, bench.layer_limits()), (Precision.FP32,)
        )
        group = {layer.name: layer.group for layer in space.layers}
        blocks = find_blocks(teacher, space)
        val, logits = bench.loaders.val, bench.teacher_logits("val")[0]
        damage: dict[str, dict[str, list[float]]] = {}
        for setting, action in SETTINGS.items():
            disagree, kl = [], []
            for block in blocks:
                model = copy.deepcopy(teacher).eval()
                modules = dict(model.named_modules())
                with torch.no_grad():
                    for name in block.kernels:
                        kept = action if group[name] is not None else LayerAction(1.0, action.precision)
                        weight = modules[name].weight
                        weight.copy_(compressed_weight(weight, kept, config.compress.round_to))
                scored = fidelity_of(model, val, logits)
                disagree.append(1.0 - scored.agreement)
                kl.append(scored.kl)
            damage[setting] = {"disagreement": disagree, "kl": kl}
        train = bench.loaders.train.dataset
        draws = []
        for draw in range(args.draws):
            order = torch.randperm(len(train), generator=torch.Generator().manual_seed(draw))
            subset = torch.utils.data.Subset(train, order[: args.samples].tolist())
            x, y = take(torch.utils.data.DataLoader(subset, batch_size=args.samples), args.samples)
            fisher = fisher_sensitivity(teacher, [(x, y)], blocks, args.samples)
            names = [layer.name for layer in space.layers]
            per_layer = layer_sensitivity(teacher, [(x, y)], names, max_batches=1)
            saliency = {b.name: sum(per_layer[k] for k in b.kernels) for b in blocks}
            scores = {"fisher": [fisher[b.name] for b in blocks], "saliency": [saliency[b.name] for b in blocks]}
            rho = {
                measure: {
                    setting: {kind: float(spearmanr(values, d[kind]).statistic) for kind in ("disagreement", "kl")}
                    for setting, d in damage.items()
                }
                for measure, values in scores.items()
            }
            draws.append({"draw": draw, "scores": scores, "spearman": rho})
        summary = {}
        for measure in ("fisher", "saliency"):
            for kind in ("disagreement", "kl"):
                values = [d["spearman"][measure][s][kind] for d in draws for s in SETTINGS]
                summary[f"{measure} vs {kind}"] = {
                    "mean": statistics.fmean(values),
                    "min": min(values),
                    "max": max(values),
                }
        print(
            json.dumps(
                {
                    "cpu": cpu_info().model,
                    "model": config.model,
                    "data": args.data,
                    "samples": args.samples,
                    "blocks": [b.name for b in blocks],
                    "damage": damage,
                    "draws": draws,
                    "spearman_over_draws_and_settings": summary,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
