"""HiReLC's two estimates of a configuration's accuracy between real fine-tunes (Sec. 3.6):

- `LogitProxy`, the cold-start proxy (Eq. 23): the model with some kernels compressed (output
  channels masked by L2 norm as in Eq. 18, weights rounded to their precision and granularity as
  in Eqs. 19-20) run on
  a cached calibration set; the mean squared error of its logits against the uncompressed model's,
  divided by the mean squared logit (a relative error, so one allowance suits any model);
- `AccuracySurrogate`, the MLP (Eq. 24): five features per kernel (bits / 32, keep-ratio, type
  0 INT / 1 FLOAT, granularity index / 3, 1 when pruned and below 8 bits) to the validation accuracy
  of a real fine-tune, trained on the replay buffer of every cycle's outcome.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx
from torch import nn

from host.compress.policy import GRANULARITIES, LayerAction, quantizes_weights
from host.compress.prune import kept_channels
from host.compress.quant import weight_quantizer
from lut_store.precision import Precision

_HALF = {Precision.FP16: torch.float16, Precision.BF16: torch.bfloat16}


def compressed_weight(weight: torch.Tensor, action: LayerAction, round_to: int) -> torch.Tensor:
    """Eq. (18) then Eq. (19): the output channels of smallest L2 norm zeroed (as many as pruning
    at `action.keep_ratio` removes), the rest rounded to `action.precision`."""
    w = weight.detach().clone()
    if action.keep_ratio < 1.0:
        norms = w.flatten(1).norm(dim=1)
        kept = kept_channels(w.shape[0], action.keep_ratio, round_to)
        mask = torch.zeros(w.shape[0], dtype=torch.bool)
        mask[norms.topk(kept).indices] = True
        w[~mask] = 0.0
    if quantizes_weights(action.precision):
        w = weight_quantizer(action.precision, action.granularity, w)(w).detach()
    elif action.precision in _HALF:
        w = w.to(_HALF[action.precision]).float()
    return w


def _detached(value: Any) -> Any:
    """A copy of a node's output that later in-place operations cannot change."""
    return value.detach().clone() if isinstance(value, torch.Tensor) else value


class _Replay:
    """The model as a traced graph with every node's output on the inputs cached, so a forward
    with some kernels changed recomputes only what lies downstream of them (the same numbers as a
    full forward, a fraction of its cost for a late block)."""

    def __init__(self, model: nn.Module, inputs: torch.Tensor) -> None:
        self.graph = torch.fx.symbolic_trace(model)
        self.modules = dict(self.graph.named_modules())
        self.inputs = inputs
        self.cache: dict[torch.fx.Node, Any] = {}
        self.reference = self.run(None)

    def run(self, changed: set[str] | None) -> torch.Tensor:
        """The logits with the kernels `changed` as they now are (None: compute and cache all)."""
        env: dict[torch.fx.Node, Any] = {}
        dirty: set[torch.fx.Node] = set()
        for node in self.graph.graph.nodes:
            if node.op == "placeholder":
                env[node] = self.inputs
                continue
            stale = changed is None or any(d in dirty for d in node.all_input_nodes)
            if changed is not None and node.op == "call_module" and node.target in changed:
                stale = True
            if not stale:
                env[node] = self.cache[node]
                continue
            dirty.add(node)
            # A recomputed node reads copies of cached values: an in-place operation must not change the cache.
            args = torch.fx.node.map_arg(node.args, lambda n: env[n] if n in dirty else _detached(env[n]))
            kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: env[n] if n in dirty else _detached(env[n]))
            if node.op == "output":
                return args[0]
            env[node] = self._call(node, args, kwargs)
            if changed is None:
                self.cache[node] = _detached(env[node])
        raise ValueError("the traced model has no output")

    def _call(self, node: torch.fx.Node, args: Any, kwargs: Any) -> Any:
        if node.op == "call_module":
            return self.modules[node.target](*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        value: Any = self.graph  # get_attr: a parameter or buffer by its dotted name
        for part in str(node.target).split("."):
            value = getattr(value, part)
        return value


class LogitProxy:
    """The relative logit error of compressing some kernels (the rest as they are), memoised. A
    model torch.fx can trace is replayed from the first changed kernel on; any other runs whole."""

    def __init__(self, model: nn.Module, inputs: torch.Tensor, round_to: int) -> None:
        self.model = model.eval()
        self.inputs = inputs
        self.round_to = round_to
        with torch.no_grad():
            try:
                self.replay: _Replay | None = _Replay(model, inputs)
                self.reference = self.replay.reference
            except (torch.fx.proxy.TraceError, TypeError, NotImplementedError):
                self.replay = None
                self.reference = model(inputs)
        self.modules = self.replay.modules if self.replay else dict(model.named_modules())
        self.scale = float(self.reference.pow(2).mean()) or 1.0
        self._cache: dict[tuple, float] = {}

    def __call__(self, actions: Mapping[str, LayerAction]) -> float:
        key = tuple(sorted((k, a.keep_ratio, a.precision.value, a.granularity) for k, a in actions.items()))
        if key not in self._cache:
            self._cache[key] = self._measure(actions)
        return self._cache[key]

    def _measure(self, actions: Mapping[str, LayerAction]) -> float:
        saved = {}
        try:
            with torch.no_grad():
                for name, action in actions.items():
                    weight = self.modules[name].weight
                    saved[name] = weight.detach().clone()
                    weight.copy_(compressed_weight(weight, action, self.round_to))
                logits = self.replay.run(set(actions)) if self.replay else self.model(self.inputs)
        finally:
            with torch.no_grad():
                for name, original in saved.items():
                    self.modules[name].weight.copy_(original)
        return float((logits - self.reference).pow(2).mean()) / self.scale


def kernel_features(action: LayerAction) -> list[float]:
    """Eq. (24)'s five inputs for one kernel."""
    bits = action.precision.weight_bits
    floating = 0.0 if action.precision in (Precision.INT8, Precision.INT4W) else 1.0
    granularity = GRANULARITIES.index(action.granularity) / 3
    joint = 1.0 if action.keep_ratio < 1.0 and bits < 8 else 0.0
    return [bits / 32, action.keep_ratio, floating, granularity, joint]


@dataclass
class AccuracySurrogate:
    """The MLP of Eq. (24) over the kernels `names` (ReLU, dropout), refit on the whole replay
    buffer after each real outcome once it holds `min_samples`."""

    names: Sequence[str]
    min_samples: int
    seed: int
    hidden: int = 32
    epochs: int = 300
    buffer: list[tuple[dict[str, LayerAction], float]] = field(default_factory=list)
    net: nn.Module | None = field(init=False, default=None)

    @property
    def active(self) -> bool:
        return self.net is not None

    def features(self, actions: Mapping[str, LayerAction]) -> torch.Tensor:
        return torch.tensor([f for name in self.names for f in kernel_features(actions[name])], dtype=torch.float32)

    def add(self, actions: Mapping[str, LayerAction], accuracy: float) -> None:
        """One real outcome; refits once the buffer reaches `min_samples`."""
        self.buffer.append((dict(actions), accuracy))
        if len(self.buffer) >= self.min_samples:
            self.fit()

    def fit(self) -> None:
        x = torch.stack([self.features(a) for a, _ in self.buffer])
        y = torch.tensor([acc for _, acc in self.buffer], dtype=torch.float32)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed + len(self.buffer))
            net = nn.Sequential(
                nn.Linear(x.shape[1], self.hidden),
                nn.ReLU(),
                nn.Dropout(0.1),
                nn.Linear(self.hidden, self.hidden // 2),
                nn.ReLU(),
                nn.Linear(self.hidden // 2, 1),
            )
            optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
            for _ in range(self.epochs):
                optimizer.zero_grad()
                nn.functional.mse_loss(net(x).squeeze(1), y).backward()
                optimizer.step()
        self.net = net.eval()

    def __call__(self, actions: Mapping[str, LayerAction]) -> float:
        if self.net is None:
            raise RuntimeError(f"the surrogate is inactive below {self.min_samples} real outcomes")
        with torch.no_grad():
            return float(self.net(self.features(actions)[None]).clamp(0.0, 1.0))

    def state_dict(self) -> dict[str, Any]:
        return {
            "buffer": [
                ({k: [a.keep_ratio, a.precision.value, a.granularity] for k, a in actions.items()}, acc)
                for actions, acc in self.buffer
            ]
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The buffer; the MLP is refit from it (its fit is seeded by the buffer's size)."""
        self.buffer = [
            ({k: LayerAction(float(v[0]), Precision(v[1]), v[2]) for k, v in actions.items()}, float(acc))
            for actions, acc in state["buffer"]
        ]
        self.net = None
        if len(self.buffer) >= self.min_samples:
            self.fit()


def mean_absolute_error(pairs: Sequence[tuple[float, float]]) -> float | None:
    """The surrogate's MAE over (predicted, measured) pairs; None without a pair."""
    return float(np.mean([abs(p - m) for p, m in pairs])) if pairs else None
