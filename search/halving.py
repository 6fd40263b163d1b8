"""Successive halving, the ladder a Pareto study's trials climb: the rungs' training images, the
verdict after a rung (go on, or stop with the reason, and what the sampler is told), and whether
the next rung fits in the search's time budget. Pure rules over the rung results the trials
record; the objective (search/objective.py) applies them.

A trial goes on while its rung holds fewer than eta results, or it is an end of its rung's first
front or ranks in the top 1/eta of its rung by search/pareto.py's promotion order; and, with a
[region] floor, while it stays within that many points of the best result there (one floor wider
for each rung below the last); with [region] near_target, the last rung's result must also lie
within that many points under target_acc; with [fidelity] near_loss, a rung between the first and the
last stops a trial whose validation loss is more than that many times the lowest there, and the front's
ends that always go on are taken inside that band too; with [fidelity] band_only, every trial inside the band
(and the floor) goes on there, unranked. With [fidelity] first_batch and first_rank, the first rung trains
at that batch size and ranks by that measure (`rung_config`, `rung_rank`). With [fidelity] within, a rung below the last ranks a
trial among the trials that share its value of that parameter (its places and the young-rung rule
counted among them, its front's ends among those of them within the floor of the best of all), the
floor counting every trial. A trial that stops is PRUNED, without values: TPE
cannot rank it, so it is made slightly infeasible instead ("stopped_early", graded by how far it
got), and one below the region by how far below ("below_region", in accuracy points under the floor
or the target's bound, or the loss's excess over the band relative to its edge; a miss of more than
0.001 x rungs outweighs any early stop).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import optuna

from search.pareto import below_region, promoted, promotion_order, rank_score
from search.studyfile import StudySpec
from space.config import RunConfig

STOPPED_SCALE = 0.001  # "stopped_early" lies in (0, 0.001 x rungs]; the limit's violations, and misses of the region by more, are larger


@dataclass(frozen=True)
class Verdict:
    """After a rung: why the trial stops there (None: it goes on), and the constraints to set on it
    (key -> value; > 0 is infeasible for the sampler)."""

    stop: str | None
    constraints: dict[str, float] = field(default_factory=dict)


def rung_subsets(spec: StudySpec) -> list[int]:
    """Training images of each rung, smallest first; the last is the study's subset."""
    f = spec.fidelity
    return [spec.training.subset // f.eta ** (f.rungs - 1 - k) for k in range(f.rungs)]


def rung_results(trials: list[optuna.trial.FrozenTrial], rung: int) -> list[dict]:
    """Every trial's result at `rung`, with its size and number. A trial re-queued after its worker
    died carries a copy of the FAIL original's attributes: the original is counted out (the copy's
    own rungs are reset when it starts)."""
    return [t.user_attrs["rungs"][rung] | {"n_params": t.user_attrs["n_params"], "number": t.number}
            for t in trials if t.state != optuna.trial.TrialState.FAIL and len(t.user_attrs.get("rungs", [])) > rung]


@dataclass(frozen=True)
class RungGroup:
    """The trials a trial is ranked among below the last rung ([fidelity] within): those whose
    parameter `name` is `value`, by number."""

    name: str
    value: object
    numbers: frozenset[int]


def rung_group(trials: list[optuna.trial.FrozenTrial], within: str, value: object) -> RungGroup | None:
    """The group a trial whose parameter `within` is `value` is ranked among below the last rung
    ([fidelity] within): the trials that share the value; None (every trial) without `within`."""
    return RungGroup(within, value, frozenset(t.number for t in trials if t.params.get(within) == value)) if within else None


def rung_floor(spec: StudySpec, rung: int) -> float:
    """[region] floor at the last rung, and one floor wider for each rung below it (3, 6 and 9
    points on three rungs): on fewer images a small net's accuracy lags the best by more than
    it will at the export budget (measured: a 4,338-parameter net 2.9 points behind the best at
    1,851 images, 0.1 behind at 16,666: docs/results.md), and a fixed floor stopped such nets at
    the first rung."""
    return spec.region.floor * (spec.fidelity.rungs - rung)


def verdict(spec: StudySpec, peers: list[dict], number: int, rung: int, images: int, last: bool,
            group: RungGroup | None = None) -> Verdict:
    """Whether trial `number` stops after `rung` (on `images` images) or goes on, given every
    result there (`rung_results`, its own among them): below the region, or, before the last
    rung, not promoted by successive halving. With a region, "below_region" is set where the
    trial ends: > 0 (how far below) makes it infeasible for the sampler. `group`: the trials it is
    ranked among ([fidelity] within; None: all); the region counts every peer."""
    floor, region = rung_floor(spec, rung), spec.region
    me = next(p for p in peers if p["number"] == number)
    best = max(p["val_acc"] for p in peers)  # the region's best: of every peer, grouped or not
    under_best = below_region(me["val_acc"], best, floor)
    band = spec.fidelity.near_loss if 0 < rung and not last else 0.0
    lowest = min(p["val_loss"] for p in peers) if band else math.inf  # also of every peer
    band = band if lowest > 0 else 0.0  # (a loss of 0 leaves no band to measure against)
    over_band = over_loss_band(me["val_loss"], lowest, band) if band else -math.inf
    if group is not None:  # ranked among its own kind only (below the last rung, where ranking decides)
        peers = [p for p in peers if p["number"] in group.numbers or p["number"] == number]
    mine = [p["number"] for p in peers].index(number)
    accuracy, n_params = me["val_acc"], me["n_params"]
    under_target = below_region(accuracy, region.target_acc, region.near_target) if last and region.near_target else -math.inf
    below = max(under_best, under_target, over_band)  # the sampler is told the larger miss: a worse net never looks nearer
    if below > 0:
        where = f"below the region at rung {rung} ({images:,} images)"
        if over_band == below:
            return Verdict(f"{where}: val loss {me['val_loss']:.4f} is more than {band:g} x the lowest there ({lowest:.4f})",
                           {"below_region": below})
        bound = (f"{region.near_target:g} points under the target {region.target_acc:g}%" if under_target >= under_best
                 else f"{floor:g} points below the best result there")
        return Verdict(f"{where}: val acc {accuracy:.2f}% is more than {bound}", {"below_region": below})
    rank = rung_rank(spec, rung)
    points = [(rank_score(p, rank), p["n_params"]) for p in peers]
    inside = [below_region(p["val_acc"], best, floor) <= 0 and not (band and over_loss_band(p["val_loss"], lowest, band) > 0) for p in peers]
    # (`below` <= 0 here: inside the floor, and the band where there is one, which alone decides with band_only)
    promoted_here = last or (spec.fidelity.band_only and band > 0) or promoted(points, mine, spec.fidelity.eta, inside)
    # <= 0: in the region (without a floor `below` is -inf, and no region is told)
    constraints = {"below_region": below} if (floor or (last and region.near_target) or band) and (last or not promoted_here) else {}
    if promoted_here:
        return Verdict(None, constraints)
    # How far from the end it stopped, for the sampler: a trial without values is one TPE cannot rank, but an infeasible one
    # it ranks by this sum, so a trial stopped at a later rung, or better placed at its rung, counts as nearer the good ones
    # (scaled to stay below every other constraint: a point below the region or over the limit counts as worse).
    order = promotion_order(points)
    constraints["stopped_early"] = STOPPED_SCALE * (spec.fidelity.rungs - 1 - rung + order.index(mine) / max(len(order) - 1, 1))
    among = f" of its {group.name} ({group.value})" if group is not None else ""
    rule = f"an end of the first front nor in the top 1/{spec.fidelity.eta} of the {len(peers)} results there{among}"
    measured = (f"val loss {me['val_loss']:.4f}" if rank == "loss" else f"train loss {me['train_loss']:.4f}" if rank == "train_loss"
                else f"val acc {accuracy:.2f}%")
    return Verdict(f"stopped at rung {rung} ({images:,} images): {measured} with {n_params:,} params is not {rule}",
                   constraints)


def rung_rank(spec: StudySpec, rung: int) -> str:
    """What orders the results at `rung`: [fidelity] first_rank at the first rung where it is set,
    else [fidelity] rank."""
    return spec.fidelity.first_rank if rung == 0 and spec.fidelity.first_rank else spec.fidelity.rank


def rung_config(spec: StudySpec, config: RunConfig, rung: int) -> RunConfig:
    """`config` as `rung` trains it: at the first rung with [fidelity] first_batch, at that batch size."""
    return replace(config, batch_size=spec.fidelity.first_batch) if rung == 0 and spec.fidelity.first_batch else config


def over_loss_band(loss: float, lowest: float, near_loss: float) -> float:
    """How far `loss` lies over the band of `near_loss` times the `lowest` loss at its rung ([fidelity]
    near_loss), relative to the band's edge (0.1: 10 % over it; <= 0: inside). The sampler is told it
    as a miss of the region, like the floor's in accuracy points."""
    return loss / (near_loss * lowest) - 1


def no_time_for_rung(rungs: list[dict], images: int, deadline: float | None, now: float) -> str | None:
    """Why the next rung (on `images` images) must not start, or None: it is expected to take the
    last rung's training seconds times the ratio of images plus the rest of its seconds (scoring
    the same validation images), and to end before `deadline`. (After a first rung at [fidelity]
    first_batch 32 that overestimates the middle rung's training by about 1.28 x: measured in
    docs/results.md, "What the first rung stopped".)"""
    if not rungs or deadline is None:
        return None
    last = rungs[-1]
    trained = last.get("train_seconds", last["seconds"])
    needed = trained * images / last["images"] + (last["seconds"] - trained)
    if now + needed <= deadline:
        return None
    return (f"no time left for rung {len(rungs)} ({images:,} images): about {needed:.0f} s needed, "
            f"{max(deadline - now, 0):.0f} s left of the search's time budget")
