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
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from host.compress.distill import distill_dataset
from host.compress.export import export_onnx
from host.compress.pipeline import device_client
from host.compress.policy import LayerAction, Policy
from host.compress.prune import count_params, prune
from host.compress.train import trained_baseline
from host.latency.variants import export_variant
from host.progress import Progress
from host.search.budget import latency_estimator, latency_shares
from host.search.evaluate import Evaluator
from host.search.loop import Baseline, Episode, run_episodes
from host.search.registry import make_controller
from host.search.reward import latency_constraint
from host.search.run import SearchConfig
from host.search.space import ParamCounter, SearchSpace, describe_layers
from lut_store.precision import Precision, device_precisions
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
        return cls(
            space.model,
            space.layers,
            space.precisions,
            space.min_keep,
            space.max_keep,
            space.latency_share,
            tuple(base.layers[layer.name].keep_ratio for layer in space.layers),
        )

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
    """`config.episodes` episodes of `haq` on `base`'s keep-ratios under `config.latency_budget_ms`
    (one line each in out/episodes.jsonl); the policy of the best reward. A killed stage starts
    again from its first episode."""
    from host.data import load_dataset, make_loaders
    from host.data.loaders import tensor_dataset
    from host.latency.predict import LatencyPredictor
    from host.models import build_model
    from lut_store.store import open_store

    if not config.latency_budget_ms:
        raise ConfigError("the precision stage searches under a latency budget: set latency_budget_ms")
    out.mkdir(parents=True, exist_ok=True)
    with (
        device_client(config.device, config.threads) as client,
        open_store(config.store or None) as store,
        LatencyPredictor.for_device(store, client) as predictor,
    ):
        options = {k: v for k, v in asdict(config.data).items() if k != "name" and v != ""}
        data = load_dataset(config.data.name, **options)
        loaders = make_loaders(data, batch_size=config.batch_size, seed=config.data.seed)
        shape = tuple(data.input_shape)
        example = torch.zeros((1, *shape))
        teacher, _ = trained_baseline(
            lambda: build_model(config.model, len(data.classes), shape),
            config.model,
            f"{data.cache_id}-s{config.data.seed}",
            loaders.train,
            config.baseline,
        )
        teacher.eval()
        pruned = copy.deepcopy(teacher)
        for p in pruned.parameters():  # Torch-Pruning skips frozen layers
            p.requires_grad_(True)
        prune(pruned, base, example, config.round_to)
        precisions = tuple(config.precisions) or device_precisions(client.info())
        plain = SearchSpace(
            config.model, describe_layers(pruned, example), precisions, config.min_keep, config.max_keep
        )
        space = FixedKeepSpace.around(plain, base)
        # The estimator fits each layer's latency against its keep-ratio, so it sees the unrestricted space.
        estimate = latency_estimator(
            plain, ParamCounter(teacher, example, config.round_to), predictor, out, len(data.classes), shape
        )
        fp32_path = export_variant(
            config.model,
            space.policy((), [Precision.FP32] * len(plain.layers)),
            out / "pruned_fp32.onnx",
            len(data.classes),
            shape,
            config.round_to,
        )
        space = replace(space, latency_share=latency_shares(plain, predictor.predict(fp32_path)).latency_share)
        try:
            controller = make_controller(
                "haq", space, config.ppo, config.seed, latency_constraint(estimate, config.latency_budget_ms)
            )
        except ValueError as exc:
            raise ConfigError(f"the precision stage on the pruning policy: {exc}") from None
        export_onnx(teacher, out / "baseline_fp32.onnx", shape)
        baseline = Baseline(predictor.predict(out / "baseline_fp32.onnx").latency_ms, 4 * count_params(teacher))
        shown = Progress(progress)
        shown.context = f"[{CONTROLLER}] episode 1/{config.episodes}"
        train_set = distill_dataset(teacher, config.model, tensor_dataset(data, "train"), config.episode_distill)
        evaluator = Evaluator(
            config.model,
            teacher,
            train_set,
            loaders.val,
            predictor,
            shape,
            out,
            config.episode_distill,
            config.episode_samples,
            config.batch_size,
            config.round_to,
            config.calibration_batches,
            progress=shown,
        )
        lines = out / "episodes.jsonl"
        lines.write_text("")

        def record(episode: Episode) -> None:
            result = episode.result
            row = {
                "controller": CONTROLLER,
                "episode": episode.index,
                "policy": json.loads(episode.policy.to_json()),
                "predicted_latency_ms": result.latency_ms,
                "val_accuracy": result.val_accuracy,
                "params": result.params,
                "size_bytes": result.size_bytes,
                "reward": episode.reward,
                "lut_version_ids": list(result.lut_version_ids),
                "wall_s": episode.wall_s,
            }
            with lines.open("a") as f:
                f.write(json.dumps(row) + "\n")
            shown.context = f"[{CONTROLLER}] episode {episode.index + 2}/{config.episodes}"
            shown.say(
                f"[{CONTROLLER}] episode {episode.index + 1}/{config.episodes}: reward {episode.reward:.4f}, "
                f"val acc {result.val_accuracy:.4f}, {result.latency_ms:.3f} ms predicted"
            )

        episodes = run_episodes(controller, evaluator, config.episodes, baseline, config.reward, on_episode=record)
    return max(episodes, key=lambda e: e.reward).policy
