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
# HADMC_HOME (baseline training and an empty LUT included): 10 episodes per controller, episode
# fine-tunes on 576 images, 10-epoch final fine-tunes. `examples/search-paper.toml` is the paper's
# budget (15 episodes, 1,152 images, 20 epochs). PPO learns faster than the paper's 1e-4 / 3e-4
# (actor / critic): in 15 episodes those barely move it. Measured on a surrogate of this search's
# reward (the LUT's latency estimate for this machine, modelled accuracy; 8 seeds), best reward:
# random search 1.185, PPO at the paper's rates 1.174, at 1e-3 / 3e-4 1.181, at 1e-3 / 3e-3
# 1.206. Practising 32 surrogate episodes after each real one (HiReLC, host.search.surrogate) is
# what makes PPO beat random search clearly with few real episodes.
# The reward reads the student's KL from its teacher, not top-1 (`accuracy_signal`): on ResNet18
# here, with top-1 (weight 2) the episodes that rewarded best had a one-epoch KL of 0.25-0.36 and
# could lose 0.5-1 point of test accuracy after the final fine-tune. Re-ranked by exp(-4 KL), seed 0's
# first is the policy that kept the teacher's accuracy at 16x (KL 0.15), and seed 1's a policy at
# KL 0.20 instead of three at 0.36-0.40 (the one chosen of those lost 0.55 points).
DEMO = SearchConfig(
    model="resnet18",
    search=SearchSettings(controllers=["ppo", "random", "uniform"], episodes=10, episode_samples=576),
    final_distill=DistillConfig(epochs=10),
    reward=RewardConfig(latency_weight=1.0, size_weight=0.0, accuracy_weight=4.0, accuracy_signal="teacher-kl"),
    select=SelectConfig(top=3, epochs=2, rule="fastest-within", max_accuracy_drop=0.005),
    ppo=PPOConfig(actor_lr=1e-3, critic_lr=3e-3, surrogate_episodes=32),
)


def run_demo(out: Path, progress: bool = True, resume: bool = False) -> SearchSummary:
    return run_search(DEMO, out, resume=resume, progress=progress)
