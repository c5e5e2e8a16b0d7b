"""Training and evaluating the FP32 baseline (the teacher), cached per (model, data, seed)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from host.progress import FitProgress
from host.runs import write_bytes


class CheckpointError(ValueError):
    """A cached checkpoint that cannot be loaded; the message says which file and what to do."""


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 15
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    # Random flips and shifted crops of image batches (4-D inputs only). Right for textures and
    # defects (synthetic NEU-DET), wrong for digits: off unless the config turns it on.
    augment: bool = False


def augment_images(x: torch.Tensor, generator: torch.Generator, shift: int = 4) -> torch.Tensor:
    """Flip each batch left-right / up-down at random and crop it from a reflect-padded copy."""
    if x.dim() != 4:
        return x
    if torch.rand(1, generator=generator) < 0.5:
        x = x.flip(3)
    if torch.rand(1, generator=generator) < 0.5:
        x = x.flip(2)
    h, w = x.shape[2:]
    padded = F.pad(x, (shift, shift, shift, shift), mode="reflect")
    i, j = (int(v) for v in torch.randint(0, 2 * shift + 1, (2,), generator=generator))
    return padded[:, :, i : i + h, j : j + w]


def accuracy(model: nn.Module, loader: torch.utils.data.DataLoader) -> float:
    """Top-1 accuracy in [0, 1]."""
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((model(x).argmax(dim=1) == y).sum())
            total += len(y)
    return correct / total


def train(
    model: nn.Module, loader: torch.utils.data.DataLoader, config: TrainConfig, progress: FitProgress | None = None
) -> list[float]:
    """Plain supervised training (AdamW, cosine schedule); returns the mean loss per epoch."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, config.epochs * len(loader)))
    losses = []
    for epoch in range(config.epochs):
        model.train()
        total = count = 0.0
        for i, (x, y) in enumerate(loader):
            if config.augment:
                x = augment_images(x, generator)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(y)
            count += len(y)
            if progress:
                progress.batch(epoch + 1, config.epochs, i + 1, len(loader))
        losses.append(total / count)
        if progress:
            progress.epoch(epoch + 1, config.epochs, losses[-1])
    model.eval()
    return losses


def cache_dir() -> Path:
    home = os.environ.get("HADMC_HOME")
    base = Path(home) if home else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hadmc"
    return base / "baselines"


def baseline_path(model_name: str, data_id: str, config: TrainConfig, batch_size: int) -> Path:
    """The cache file of one baseline: the model, the data (`DataSplits.cache_id`: its name and a
    digest of its training split), the training settings and the loader's batch size."""
    settings = {**asdict(config), "batch_size": batch_size}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    return cache_dir() / f"{model_name}-{data_id}-seed{config.seed}-{digest}.pt"


def load_checkpoint(model: nn.Module, path: Path) -> nn.Module:
    """Load weights saved by `save_checkpoint` (tensors only: weights_only=True)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (RuntimeError, EOFError, OSError, KeyError, ValueError, pickle.UnpicklingError) as exc:
        raise CheckpointError(
            f"checkpoint {path} cannot be loaded ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200]}); delete it to retrain the baseline"
        ) from None
    return model


def load_weights(model: nn.Module, path: Path) -> nn.Module:
    """Load a user's trained weights: a state_dict saved with torch.save (read with
    weights_only=True), or a dict holding one under "state_dict", "model_state_dict" or "model".
    Weights that do not fit the architecture name the first missing, unexpected and mis-shaped
    tensors."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"weights {path} do not exist") from None
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as exc:
        raise CheckpointError(
            f"weights {path} cannot be read as tensors ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            "save them with torch.save(model.state_dict(), path)"
        ) from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"weights {path} hold a {type(state).__name__}, not a state_dict of tensors; "
            "save them with torch.save(model.state_dict(), path)"
        )
    expected = model.state_dict()
    problems = [
        ("missing", [k for k in expected if k not in state]),
        ("unexpected", [k for k in state if k not in expected]),
        (
            "mis-shaped",
            [
                f"{k} {list(state[k].shape)} (the model's: {list(v.shape)})"
                for k, v in expected.items()
                if k in state and state[k].shape != v.shape
            ],
        ),
    ]
    found = [f"{kind}: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}" for kind, names in problems if names]
    if found:
        raise CheckpointError(f"weights {path} do not fit the model; {'; '.join(found)}")
    model.load_state_dict(state)
    return model


def save_checkpoint(model: nn.Module, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    write_bytes(path, buffer.getvalue())


def trained_baseline(
    build: Callable[[], nn.Module],
    model_name: str,
    data_id: str,
    loader: torch.utils.data.DataLoader,
    config: TrainConfig,
    progress: FitProgress | None = None,
) -> tuple[nn.Module, bool]:
    """The FP32 baseline from the cache, or trained and cached; returns (model, was_cached)."""
    path = baseline_path(model_name, data_id, config, loader.batch_size)
    model = build()
    if path.exists():
        return load_checkpoint(model, path), True
    train(model, loader, config, progress)
    save_checkpoint(model, path)
    return model, False
