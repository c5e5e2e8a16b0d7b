"""Sequential prune-then-quantize, the pipeline a joint policy is compared with: a pruning policy
(AMC's) is fixed, then HAQ's search chooses only each layer's precision on top of it.

`FixedKeepSpace` is a search space restricted by a base policy: whatever keep-ratio a controller
proposes, each layer keeps the base policy's, so a controller (here `haq`) chooses precisions
only. The stage scores its episodes as a search does (`Evaluator`, `run_episodes`, the reward
against the FP32 baseline), under the config's latency budget on the LUT estimate of the
pruned model (`budget.latency_estimator`); the state describes the pruned layers.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from host.compress.policy import LayerAction, Policy
from host.compress.prune import count_params, prune
from host.progress import Progress
from host.runs import EpisodeLog
from host.search.budget import latency_estimator, latency_shares
from host.search.evaluate import Evaluator
from host.search.loop import RewardReference, one_by_one, run_episodes
from host.search.registry import make_controller
from host.search.reward import latency_constraint
from host.search.run import EpisodeRecorder, SearchConfig, precisions_to_search
from host.search.space import ParamCounter, SearchSpace, describe_layers
from host.workbench import Workbench
from lut_store.precision import Precision
from lut_store.tomlfile import ConfigError

CONTROLLER = "amc+haq"  # the stage's name in its episodes.jsonl


@dataclass(frozen=True)
class FixedKeepSpace(SearchSpace):
    """A search space whose keep-ratios are a base policy's (see the module docstring)."""

    keep_ratios: tuple[float, ...] = ()  # per layer (execution order), the base policy's

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.keep_ratios) != len(self.layers):
            raise ValueError(f"{len(self.keep_ratios)} keep-ratios for {len(self.layers)} layers of {self.model}")

    @classmethod
    def around(cls, space: SearchSpace, base: Policy) -> FixedKeepSpace:
        missing = [layer.name for layer in space.layers if layer.name not in base.layers]
        if missing:
            raise ValueError(f"the base policy has no action for layers {missing[:5]} of {space.model}")
        fields = {f.name: getattr(space, f.name) for f in dataclasses.fields(SearchSpace)}
        return cls(**fields, keep_ratios=tuple(base.layers[layer.name].keep_ratio for layer in space.layers))

    def policy(self, keeps: Sequence[float], precisions: Sequence[Precision]) -> Policy:
        """The base policy's keep-ratios with these precisions (`keeps` is ignored)."""
        return Policy(
            self.model,
            {
                layer.name: LayerAction(keep, precision)
                for layer, keep, precision in zip(self.layers, self.keep_ratios, precisions, strict=True)
            },
        )


def search_precisions(config: SearchConfig, base: Policy, out: Path, progress: bool = True) -> Policy:
    """`[search] episodes` episodes of `haq` on `base`'s keep-ratios under `latency_budget_ms`
    (one line each in out/episodes.jsonl); the policy of the best reward. A killed stage starts
    again from its first episode."""
    budget_ms = config.search.latency_budget_ms
    if not budget_ms:
        raise ConfigError("the precision stage searches under a latency budget: set latency_budget_ms")
    out.mkdir(parents=True, exist_ok=True)
    shown = Progress(progress)
    with Workbench.open(config, shown) as bench:
        plain, space = _spaces(bench, config, base, out)
        # The estimator fits each layer's latency against its keep-ratio, so it sees the unrestricted space.
        counter = ParamCounter(bench.teacher, bench.example, config.compress.round_to)
        estimate = latency_estimator(plain, counter, bench, out)
        try:
            constraint = latency_constraint(estimate, budget_ms)
            controller = make_controller("haq", space, config.ppo, config.search.seed, constraint)
        except ValueError as exc:
            raise ConfigError(f"the precision stage on the pruning policy: {exc}") from None
        fp32 = bench.predict(bench.export_reference(out / "baseline_fp32.onnx")).latency_ms
        reference = RewardReference(fp32, 4 * count_params(bench.teacher))
        evaluator = Evaluator(
            bench, bench.distill_set(config.episode_distill), out, config.episode_distill, config.search.episode_samples
        )
        log = EpisodeLog(out / "episodes.jsonl")
        record = EpisodeRecorder(CONTROLLER, controller, log, config.search.episodes, shown, log.keep({}))
        shown.context = f"[{CONTROLLER}] episode 1/{config.search.episodes}"
        episodes = run_episodes(
            controller, one_by_one(evaluator), config.search.episodes, reference, config.reward, 0, record.recorder()
        )
    return max(episodes, key=lambda e: e.reward).policy


def _spaces(bench: Workbench, config: SearchConfig, base: Policy, out: Path) -> tuple[SearchSpace, FixedKeepSpace]:
    """The space over the pruned network's layers, and it restricted to `base`'s keep-ratios with
    each layer's share of the pruned FP32 network's predicted latency."""
    pruned = copy.deepcopy(bench.teacher)
    for p in pruned.parameters():  # Torch-Pruning skips frozen layers
        p.requires_grad_(True)
    prune(pruned, base, bench.example, config.compress.round_to)
    s = config.search
    precisions = precisions_to_search(config, bench)
    plain = SearchSpace(config.model, describe_layers(pruned, bench.example), precisions, s.min_keep, s.max_keep)
    space = FixedKeepSpace.around(plain, base)
    fp32 = space.policy((), [Precision.FP32] * len(plain.layers))
    exported = bench.export(bench.variant(fp32), fp32, out / "pruned_fp32.onnx")
    shares = latency_shares(plain, bench.predict(exported), exported.layer_nodes).latency_share
    return plain, replace(space, latency_share=shares)
