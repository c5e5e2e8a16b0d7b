"""`hadmc demo`: the search on the built-in preset with an embedded agent and the default store.

ResNet18 (the paper's, 64x64, 6 classes) on the built-in synthetic NEU-DET; PPO, random search
and a uniform grid at the same budget, side by side; the best policy of each fine-tuned fully,
verified in onnxruntime and benchmarked on this machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from host.search.run import SearchConfig, run_search

DEMO = SearchConfig(model="resnet18", controllers=["ppo", "random", "uniform"], episodes=10, episode_samples=1152)


def run_demo(out: Path, progress: bool = True, resume: bool = False) -> dict[str, Any]:
    return run_search(DEMO, out, resume=resume, progress=progress)
