"""`hadmc demo`: the search on the built-in preset with an embedded agent and the default store.

ResNet18 (the paper's, 64x64, 6 classes) on the built-in synthetic NEU-DET; PPO, random search
and a uniform grid at the same budget, side by side; the best policy of each fine-tuned fully,
verified in onnxruntime and benchmarked on this machine.
"""

from __future__ import annotations

from pathlib import Path

from host.compress.distill import DistillConfig
from host.runs import SearchSummary
from host.search.ppo import PPOConfig
from host.search.reward import RewardConfig
from host.search.run import SearchConfig, SearchSettings, run_search
from host.search.select import SelectConfig

# The paper's search at a budget that finishes within 15 minutes on 2 cores from a fresh
# HADMC_HOME (baseline training and an empty LUT included; 13.7 minutes measured on a 2-core AMD
# EPYC): 10 episodes per controller, episode
# fine-tunes on 576 images, 10-epoch final fine-tunes. `examples/search-paper.toml` is the paper's
# budget (15 episodes, 1,152 images, 20 epochs). PPO learns faster than the paper's 1e-4 / 3e-4
# (actor / critic): in 15 episodes those barely move it. Measured on a surrogate of this search's
# reward (the LUT's latency estimate for this machine, modelled accuracy; 8 seeds), best reward:
# random search 1.185, PPO at the paper's rates 1.174, at 1e-3 / 3e-4 1.181, at 1e-3 / 3e-3
# 1.206. Practising 32 surrogate episodes after each real one (HiReLC, host.search.surrogate) is
# what makes PPO beat random search clearly with few real episodes.
# The reward reads top-1. Read as exp(-4 KL) (`accuracy_signal = "teacher-kl"`), which re-ranks
# a top-1 search's episodes toward those that kept the teacher's accuracy, PPO turned cautious:
# its final model kept 98.3% at 9.4x where the uniform grid reached 97.8% at 14.0x (seed 0; with
# top-1 the same seed gave 97.2% at 16.0x, and seed 1 96.7% at 19.3x against uniform's 97.8% at 13.1x).
# Those runs predate PPO's warm start (`[search] warm_start`, 4 LUT proposals by default): with it,
# five seeds gave PPO 13.7-15.2x (median 14.75x) against the uniform grid's 5.3-13.9x (median 13.3x).
DEMO = SearchConfig(
    model="resnet18",
    search=SearchSettings(controllers=["ppo", "random", "uniform"], episodes=10, episode_samples=576),
    final_distill=DistillConfig(epochs=10),
    reward=RewardConfig(latency_weight=1.0, size_weight=0.0, accuracy_weight=2.0),
    select=SelectConfig(top=3, epochs=2, rule="fastest-within", max_accuracy_drop=0.005),
    ppo=PPOConfig(actor_lr=1e-3, critic_lr=3e-3, surrogate_episodes=32),
)


def run_demo(out: Path, progress: bool = True, resume: bool = False) -> SearchSummary:
    return run_search(DEMO, out, resume=resume, progress=progress)
