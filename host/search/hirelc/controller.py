"""The `hirelc` controller: one active-learning cycle per batch of episodes (HiReLC Sec. 3.7; with
`parallel_episodes = 1`, the paper's one policy per cycle).

A batch's first `propose` is a cycle: the high-level ensemble (re)trains on its budget environment with the
previous cycle's feedback and votes each block's `LayerBudget` (stochastic actions, deterministic in
the last cycle); block by block, in execution order, the block's low-level ensemble trains against
the logit-MSE proxy (or, once the replay buffer holds `surrogate_min` outcomes, the MLP surrogate)
and votes its kernels' actions. The episode loop then compresses, fine-tunes and measures that
policy for real; `observe` adds the outcome to the replay buffer, refits the surrogate (its error on
the new outcome, measured before the refit, is the reported MAE) and feeds the drop and the realized
fraction back to the high-level agents. A batch's further candidates, scored in parallel with the
consensus (host/search/scale.py), are draws from the same trained ensembles (each member's
stochastic action, voted): their outcomes train the surrogate too, and the search's selection sees
them like any episode, but the cycle's feedback stays the consensus's.

Kernels of one pruning group share a keep-ratio, so a kernel whose group an earlier kernel has
decided takes that ratio (as `walk` does); the classifier keeps its width.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from host.compress.policy import DEFAULT_GRANULARITY, GRANULARITIES, LayerAction, Policy, granularities_of
from host.runs import HiReLCCycle
from host.search.controllers import Controller, _replay, walk
from host.search.hirelc import equations as eq
from host.search.hirelc.agents import (
    HLA_STYLES,
    LLA_STYLES,
    MEMBERS,
    BlockEnv,
    BlockOutcome,
    BlockTask,
    BudgetEnv,
    Ensemble,
    Feedback,
    LayerBudget,
)
from host.search.hirelc.blocks import Block
from host.search.hirelc.proxy import AccuracySurrogate, LogitProxy, mean_absolute_error
from host.search.reward import Constraint
from host.search.space import SearchSpace
from lut_store.precision import Precision

if TYPE_CHECKING:
    from host.search.evaluate import EpisodeResult

TYPES = ("int", "float")
VOTES = ("uniform", "fixed", "confidence")
_INT = (Precision.INT8, Precision.INT4W)
DRAWS = 8  # tries for a cycle's further candidate that differs from those already open
ORDINAL = [True, True, False, False]  # a kernel action's parts: bit and keep levels vote as ordinals


@dataclass(frozen=True)
class HiReLCConfig:
    """`[hirelc]`: the ensembles, their budgets per cycle, the constraints and the ablation switches."""

    lla_members: list[str] = field(default_factory=lambda: ["ppo", "a2c", "ppo"])
    lla_styles: list[str] = field(default_factory=lambda: ["conservative", "moderate", "aggressive"])
    hla_members: list[str] = field(default_factory=lambda: ["ppo", "a2c", "ppo"])
    hla_styles: list[str] = field(default_factory=lambda: ["conservative", "moderate", "aggressive"])
    vote: str = "uniform"  # uniform | fixed (vote_weights) | confidence (Eq. 17)
    vote_weights: list[float] = field(default_factory=list)  # per LLA member, for vote = "fixed"
    temperature: float = 1.0  # Eq. (17)'s tau
    lla_timesteps: int = 60  # per member and block, every cycle (the paper: 256)
    hla_timesteps: int = 256  # the first cycle's, per member
    hla_burst: int = 64  # each later cycle's, per member
    lla_steps: int = 20  # an LLA episode
    hla_steps: int = 10  # an HLA episode
    resolution: int = 8  # K: bit and keep levels per kernel
    target_compression: float = 4.0  # CR_target of Eq. (3): global target fraction 1 / CR
    max_drop: float = 0.02  # the allowed accuracy drop (0.02: two points)
    surrogate_min: int = 4  # N_min: real outcomes before the MLP replaces the logit-MSE proxy
    calibration_samples: int = 32  # the proxy's cached inputs
    fisher_samples: int = 32  # Eq. (14)'s samples
    latency_weight: float = 0.5  # the LUT latency term; 0: the paper's storage-only reward
    type_override: str = ""  # "int" or "float": every kernel's type; "": chosen per kernel
    granularity_override: str = ""  # one of GRANULARITIES; "": chosen per kernel
    hierarchy: bool = True  # false: every block gets the global target (the HLA ablation)
    sensitivity: bool = True  # false: every block's sensitivity is 0 (the sensitivity ablation)

    def check(self) -> None:
        """Every bad setting, named, with what is allowed."""
        self._check_ensembles()
        for name in ("lla_steps", "hla_steps", "resolution", "surrogate_min", "calibration_samples", "fisher_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"hirelc.{name} = {getattr(self, name)} must be at least 1")
        if min(self.lla_timesteps, self.hla_timesteps, self.hla_burst) < 0:
            raise ValueError("hirelc timesteps must not be negative")
        if self.target_compression < 1:
            raise ValueError(f"hirelc.target_compression {self.target_compression}: a ratio of at least 1 (4: 4x)")
        if not 0 < self.max_drop < 1:
            raise ValueError(f"hirelc.max_drop {self.max_drop}: a fraction in (0, 1) (0.02: two points)")
        if self.latency_weight < 0:
            raise ValueError(f"hirelc.latency_weight {self.latency_weight} must not be negative")
        if self.type_override not in ("", *TYPES):
            raise ValueError(f"hirelc.type_override {self.type_override!r}: choose among {', '.join(TYPES)} or ''")
        if self.granularity_override not in ("", *GRANULARITIES):
            raise ValueError(
                f"hirelc.granularity_override {self.granularity_override!r}: choose among "
                f"{', '.join(GRANULARITIES)} (or '' to choose per kernel)"
            )

    def _check_ensembles(self) -> None:
        for tier, members, styles, known in (
            ("lla", self.lla_members, self.lla_styles, LLA_STYLES),
            ("hla", self.hla_members, self.hla_styles, HLA_STYLES),
        ):
            if not members:
                raise ValueError(f"hirelc.{tier}_members is empty: an ensemble needs at least one member")
            odd = [m for m in members if m not in MEMBERS]
            if odd:
                raise ValueError(f"hirelc.{tier}_members {odd}: choose among {', '.join(MEMBERS)}")
            if len(styles) != len(members) or any(s not in known for s in styles):
                raise ValueError(
                    f"hirelc.{tier}_styles {styles}: one per member ({len(members)}), each one of {', '.join(known)}"
                )
        if self.vote not in VOTES:
            raise ValueError(f"hirelc.vote {self.vote!r}: choose among {', '.join(VOTES)}")
        if self.vote == "fixed" and (
            len(self.vote_weights) != len(self.lla_members)
            or min(self.vote_weights) < 0
            or not sum(self.vote_weights) > 0
        ):
            raise ValueError(
                f"hirelc.vote_weights {self.vote_weights}: one non-negative weight per LLA member "
                f"({len(self.lla_members)}) with a positive sum"
            )
        if self.temperature <= 0:
            raise ValueError(f"hirelc.temperature {self.temperature} must be positive")


@dataclass(frozen=True)
class HiReLCStart:
    """What the search measures for the controller: the blocks and their Fisher sensitivity, the
    proxy, the LUT's latency of a policy, the teacher's validation accuracy and the cycle budget;
    with the controller's settings."""

    config: HiReLCConfig
    blocks: tuple[Block, ...]
    sensitivity: dict[str, float]
    proxy: LogitProxy
    latency_ms: Callable[[Policy], float] | None
    base_latency_ms: float
    base_accuracy: float
    cycles: int


def check_allowed_drop(base_accuracy: float, folded_accuracy: float, max_drop: float) -> None:
    """An allowed drop the uncompressed model already exceeds, its BatchNorm folded, is an error."""
    drop = base_accuracy - folded_accuracy
    if drop > max_drop:
        raise ValueError(
            f"hirelc.max_drop = {max_drop}, but the uncompressed model with its BatchNorm folded already loses "
            f"{drop:.4f} validation accuracy ({base_accuracy:.4f} -> {folded_accuracy:.4f}): raise max_drop"
        )


def is_float(precision: Precision) -> bool:
    return precision not in _INT


class HiReLCController(Controller):
    """One cycle per batch (the module docstring); state: both tiers' ensembles, the surrogate
    and its replay buffer, the feedback, the last consensus and the cycle count."""

    name = "hirelc"

    def __init__(self, space: SearchSpace, start: HiReLCStart, seed: int, constraint: Constraint | None = None) -> None:
        super().__init__(space, constraint)
        config = start.config
        config.check()
        if config.latency_weight > 0 and start.latency_ms is None:
            raise ValueError("hirelc.latency_weight > 0 needs the LUT's latency estimate")
        self.config, self.start, self.seed = config, start, seed
        self.index = {layer.name: t for t, layer in enumerate(space.layers)}
        self.bits = sorted({p.weight_bits for p in space.precisions})
        self._check_types()
        self.global_target = 1.0 / config.target_compression
        floor = eq.retained_fraction(min(self.bits), space.min_keep)
        if floor > self.global_target:
            raise ValueError(
                f"hirelc.target_compression {config.target_compression} is out of reach: the smallest policy "
                f"({min(self.bits)} bits, keep {space.min_keep} everywhere) compresses {1 / floor:.2f}x"
            )
        self.sensitivity = [start.sensitivity[b.name] if config.sensitivity else 0.0 for b in start.blocks]
        self.block_params = [sum(b.params) for b in start.blocks]
        self.current = {layer.name: LayerAction() for layer in space.layers}  # the last consensus
        self.feedback = Feedback()
        self.budgets: list[LayerBudget] = []
        self.surrogate = AccuracySurrogate([layer.name for layer in space.layers], config.surrogate_min, seed)
        self.errors: list[tuple[float, float]] = []  # (surrogate's prediction, measured accuracy)
        self.predicted: float | None = None
        self.notes: dict[str, Any] = {}
        self.cycle: int | None = 0  # the cycle a batch's candidates belong to
        self.consensus_episode = -1  # the cycle's first candidate: its outcome is the feedback
        self.draws = 0  # candidates drawn so far (each draw's actions are seeded by its number)
        self.observations: list[Any] = [None] * len(start.blocks)  # each block's observation this cycle
        self.lla = [self._block_ensemble(i, block) for i, block in enumerate(start.blocks)]
        self.hla = Ensemble(
            config.hla_members,
            config.hla_styles,
            HLA_STYLES,
            lambda w: BudgetEnv(
                self.sensitivity,
                self.block_params,
                self.global_target,
                config.max_drop,
                self.feedback,
                self._decode_budgets,
                w,  # type: ignore[arg-type]
                config.hla_steps,
            ),
            config.hla_steps,
            seed,
        )

    def _block_ensemble(self, i: int, block: Block) -> Ensemble:
        """Block i's low-level ensemble; each cycle gives its environments the cycle's task."""
        c = self.config
        levels = [c.resolution, c.resolution, len(TYPES), len(GRANULARITIES)]

        def unset(action: Sequence[int]) -> BlockOutcome:
            raise RuntimeError("a block's environment is stepped before a cycle set its task")

        task = BlockTask(i, len(self.start.blocks), len(block.kernels), 0.0, self._uniform_budget(), 0.0, False, unset)
        return Ensemble(
            c.lla_members,
            c.lla_styles,
            LLA_STYLES,
            lambda w: BlockEnv(task, levels, w, c.latency_weight, c.lla_steps),
            c.lla_steps,
            self.seed + 1 + i,
        )

    def _check_types(self) -> None:
        """A forced type or granularity the device runs at no layer is an error naming what it runs."""
        runs = {p for t in range(len(self.space.layers)) for p in self.space.allowed_at(t)}
        names = ", ".join(p.value for p in self.space.precisions)
        wanted = self.config.type_override
        if wanted and not any(is_float(p) == (wanted == "float") for p in runs):
            raise ValueError(
                f"hirelc.type_override {wanted!r}: the device runs no {wanted} precision here (it runs {names})"
            )
        forced = self.config.granularity_override
        if forced and not any(forced in granularities_of(p) for p in runs):
            takes = [p.value for p in Precision if forced in granularities_of(p)]
            raise ValueError(
                f"hirelc.granularity_override {forced!r} needs {' or '.join(takes)}, which the device does not run "
                f"here (it runs {names})"
            )

    # --- budgets (the high-level tier) ------------------------------------------------------

    def _uniform_budget(self) -> LayerBudget:
        s = self.space
        return LayerBudget(
            self.global_target,
            (min(self.bits), max(self.bits)),
            (s.min_keep, s.max_keep),
            self.config.max_drop,
            "auto",
        )

    def _decode_budgets(self, action: Sequence[int]) -> list[LayerBudget]:
        """An HLA action (tier, strategy per block) as budgets, after the sensitivity correction."""
        lo, hi = min(self.bits), max(self.bits)
        s = self.space
        budgets = []
        for i, sensitivity in enumerate(self.sensitivity):
            tier = action[2 * i]
            if self.config.sensitivity:
                tier = eq.corrected_tier(tier, sensitivity)
            strategy = eq.STRATEGIES[action[2 * i + 1]]
            bits = (float(self.bits[len(self.bits) // 2]), float(hi)) if strategy == "pruning" else (lo, hi)
            keep = (
                ((s.min_keep + s.max_keep) / 2, s.max_keep) if strategy == "quantization" else (s.min_keep, s.max_keep)
            )
            budgets.append(LayerBudget(eq.TIER_TARGETS[tier], bits, keep, self.config.max_drop, strategy))
        return budgets

    def _consensus_budgets(self, cycle: int, deterministic: bool) -> list[LayerBudget]:
        """The HLA members' budgets: numeric fields averaged (by the vote weights), the strategy
        by weighted plurality."""
        observation, _ = self.hla.envs[0].reset()
        proposals = [self._decode_budgets(a) for a in self.hla.actions(observation, deterministic, cycle)]
        weights = self.hla.weights("uniform", (), 1.0)
        budgets = []
        for i in range(len(self.start.blocks)):
            mine = [p[i] for p in proposals]

            def mean(get: Callable[[LayerBudget], float], mine: list[LayerBudget] = mine) -> float:
                return sum(w * get(b) for w, b in zip(weights, mine, strict=True))

            strategy = eq.vote([[eq.STRATEGIES.index(b.strategy)] for b in mine], weights, [False])[0]
            budgets.append(
                LayerBudget(
                    mean(lambda b: b.target),
                    (mean(lambda b: b.bits[0]), mean(lambda b: b.bits[1])),
                    (mean(lambda b: b.keep[0]), mean(lambda b: b.keep[1])),
                    mean(lambda b: b.allowed_drop),
                    eq.STRATEGIES[strategy],
                )
            )
        return budgets

    # --- kernels (the low-level tier) -------------------------------------------------------

    def _decode(
        self, block: Block, action: Sequence[int], budget: LayerBudget, groups: dict[str, float]
    ) -> tuple[dict[str, LayerAction], dict[str, float]]:
        """A block's action (bit level, keep level, type, granularity per kernel) as layer actions,
        and the group keep-ratios known after it (`groups` is not changed)."""
        c, groups = self.config, dict(groups)
        actions = {}
        for j, name in enumerate(block.kernels):
            b_i, k_i, type_i, gran_i = action[4 * j : 4 * j + 4]
            t = self.index[name]
            bits = eq.interpolate(b_i, c.resolution, *budget.bits)
            want = c.type_override or TYPES[type_i]
            allowed = self.space.allowed_at(t)
            if c.granularity_override:  # where a precision takes the forced granularity, one of those
                allowed = [p for p in allowed if c.granularity_override in granularities_of(p)] or allowed
            typed = [p for p in allowed if is_float(p) == (want == "float")] or list(allowed)
            precision = min(typed, key=lambda p: (abs(p.weight_bits - bits), -p.weight_bits))
            group = self.space.layers[t].group
            if group is None:
                keep = 1.0
            else:
                keep = groups.setdefault(group, round(eq.interpolate(k_i, c.resolution, *budget.keep), 4))
            granularity = c.granularity_override or GRANULARITIES[gran_i]
            if granularity not in granularities_of(precision):  # a float precision quantizes no weight
                granularity = DEFAULT_GRANULARITY
            actions[name] = LayerAction(keep, precision, granularity)
        return actions, groups

    def _fraction(self, actions: dict[str, LayerAction], names: Sequence[str]) -> tuple[float, list[float]]:
        params = [self.space.layers[self.index[n]].params for n in names]
        kernel = [eq.retained_fraction(actions[n].precision.weight_bits, actions[n].keep_ratio) for n in names]
        return eq.weighted_fraction(params, kernel), kernel

    def _score(
        self,
        block: Block,
        action: Sequence[int],
        budget: LayerBudget,
        groups: dict[str, float],
        context: dict[str, LayerAction],
    ) -> BlockOutcome:
        actions, _ = self._decode(block, action, budget, groups)
        fraction, kernels = self._fraction(actions, block.kernels)
        whole = {**context, **actions}
        if self.surrogate.active:
            drop = max(self.start.base_accuracy - self.surrogate(whole), 0.0)
        else:
            drop = self.start.proxy(actions)
        gain = 0.0
        if self.start.latency_ms is not None and self.config.latency_weight > 0:
            policy = Policy(self.space.model, whole)
            gain = 1.0 - self.start.latency_ms(policy) / self.start.base_latency_ms
        return BlockOutcome(fraction, tuple(kernels), drop, gain)

    # --- the cycle ------------------------------------------------------------------------

    def batch_limit(self, start: int, wanted: int) -> int:
        """A batch is one cycle's candidates (a cycle needs the previous cycle's measured outcome)."""
        return wanted

    def _propose(self, episode: int) -> Policy:
        """The first proposal of a batch runs a cycle and returns its consensus; each later one is
        a draw from the cycle's trained ensembles."""
        if self.cycle is None:  # a checkpoint from before batched cycles: one cycle per episode
            self.cycle = episode
        if self.open:
            return self._draw()
        self.consensus_episode = episode
        return self._cycle(self.cycle)

    def _cycle(self, cycle: int) -> Policy:
        c = self.config
        last = cycle >= self.start.cycles - 1
        self.feedback.progress = cycle / max(self.start.cycles - 1, 1)
        if c.hierarchy:
            self.hla.learn(c.hla_timesteps if cycle == 0 else c.hla_burst, cycle)
            self.budgets = self._consensus_budgets(cycle, deterministic=last)
        else:
            self.budgets = [self._uniform_budget()] * len(self.start.blocks)
        context, groups = dict(self.current), {}
        for i, (block, budget, ensemble) in enumerate(zip(self.start.blocks, self.budgets, self.lla, strict=True)):
            frozen_groups, frozen_context = dict(groups), dict(context)
            task = BlockTask(
                i,
                len(self.start.blocks),
                len(block.kernels),
                self.sensitivity[i],
                budget,
                eq.STRATEGIES.index(budget.strategy) / (len(eq.STRATEGIES) - 1),
                self.surrogate.active,
                lambda a, b=block, u=budget, g=frozen_groups, x=frozen_context: self._score(b, a, u, g, x),
            )
            for env in ensemble.envs:
                env.task = task  # type: ignore[attr-defined]
            ensemble.learn(c.lla_timesteps, cycle)
            self.observations[i] = task.observation(1.0, 0.0, 0.0, [1.0] * len(block.kernels))
            votes = ensemble.actions(self.observations[i], deterministic=True, cycle=cycle)
            weights = ensemble.weights(c.vote, c.vote_weights, c.temperature)
            consensus = eq.vote(votes, weights, ORDINAL * len(block.kernels))
            actions, groups = self._decode(block, consensus, budget, groups)
            context.update(actions)
        self.current = context
        return self._policy(context)

    def _policy(self, context: dict[str, LayerAction]) -> Policy:
        policy = Policy(self.space.model, {layer.name: context[layer.name] for layer in self.space.layers})
        if self.enforcer is not None:
            policy = walk(self.space, _replay(self.space, policy), self.enforcer)
        return policy

    def _draw(self) -> Policy:
        """Another candidate of this cycle: block by block, the vote of each member's stochastic
        action under the cycle's budgets; a draw that repeats an open candidate is drawn again
        (up to DRAWS times)."""
        c = self.config
        taken = [p for _, p in self.open]
        for _ in range(DRAWS):
            self.draws += 1
            context, groups = dict(self.current), {}
            for i, (block, budget, ensemble) in enumerate(zip(self.start.blocks, self.budgets, self.lla, strict=True)):
                votes = ensemble.actions(self.observations[i], deterministic=False, cycle=self.cycle, draw=self.draws)
                weights = ensemble.weights(c.vote, c.vote_weights, c.temperature)
                actions, groups = self._decode(
                    block, eq.vote(votes, weights, ORDINAL * len(block.kernels)), budget, groups
                )
                context.update(actions)
            policy = self._policy(context)
            if all(policy != t for t in taken):
                break
        return policy

    def _observe(self, episode: int, policy: Policy, reward: float, result: EpisodeResult | None) -> None:
        """Every candidate's outcome trains the surrogate; the consensus's is the cycle's feedback."""
        names = [layer.name for layer in self.space.layers]
        fraction, _ = self._fraction(dict(policy.layers), names)
        estimator = "surrogate" if self.surrogate.active else "logit-mse"
        self.predicted = None
        if result is not None:
            if self.surrogate.active:
                self.predicted = self.surrogate(policy.layers)
                self.errors.append((self.predicted, result.val_accuracy))
            self.surrogate.add(policy.layers, result.val_accuracy)
            if episode == self.consensus_episode:
                drop = self.start.base_accuracy - result.val_accuracy
                self.feedback.drop, self.feedback.fraction = drop, fraction
        blocks = self.start.blocks
        cycle = self.cycle
        self._end_of_batch()
        self.notes = {
            "hirelc": HiReLCCycle(
                cycle,
                estimator,
                self.predicted,
                mean_absolute_error(self.errors),
                len(self.surrogate.buffer),
                fraction,
                1.0 / fraction,
                {b.name: u.target for b, u in zip(blocks, self.budgets, strict=True)},
                {b.name: u.strategy for b, u in zip(blocks, self.budgets, strict=True)},
                {b.name: self._fraction(dict(policy.layers), b.kernels)[0] for b in blocks},
            )
        }

    def _abandon(self, episode: int) -> None:
        self._end_of_batch()

    def _end_of_batch(self) -> None:
        """The cycle ends with its last candidate's outcome."""
        if not self.open and self.cycle is not None:
            self.cycle += 1

    def episode_notes(self) -> dict[str, Any]:
        return self.notes

    def state_dict(self) -> dict[str, Any]:
        return {
            "hla": self.hla.state_dict(),
            "lla": [e.state_dict() for e in self.lla],
            "surrogate": self.surrogate.state_dict(),
            "errors": [list(e) for e in self.errors],
            "feedback": [self.feedback.drop, self.feedback.fraction, self.feedback.progress],
            "current": Policy(self.space.model, self.current).to_json(),
            "cycle": self.cycle,
            "draws": self.draws,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.hla.load_state_dict(state["hla"])
        for ensemble, saved in zip(self.lla, state["lla"], strict=True):
            ensemble.load_state_dict(saved)
        self.surrogate.load_state_dict(state["surrogate"])
        self.errors = [(float(p), float(m)) for p, m in state["errors"]]
        self.feedback.drop, self.feedback.fraction, self.feedback.progress = state["feedback"]
        self.current = dict(Policy.from_json(state["current"]).layers)
        self.cycle, self.draws = state.get("cycle"), state.get("draws", 0)
