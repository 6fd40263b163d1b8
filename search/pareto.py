"""Accuracy against size: non-dominated sorting, the front, its hypervolume, and the order by
which successive halving promotes a trial from one rung to the next and confirmation chooses
its candidates (as NSGA-II and Syne Tune's MOASHA: non-dominated sorting, then, within a
front, crowding distance).

A point is (a score, parameters): a higher score and fewer parameters are better. The score is
the accuracy in %, or minus the validation or training loss ([fidelity] rank, first_rank: `rank_score`).
"""

from __future__ import annotations

import math

Point = tuple[float, int]


def rank_score(result: dict, rank: str) -> float:
    """The score a rung result (its record: `val_acc`, `val_loss`, means over the last epochs;
    `train_loss`, its last epoch's) is ranked by, higher better: its accuracy, or minus its loss
    ([fidelity] rank), or minus its training loss ([fidelity] first_rank "train_loss")."""
    if rank == "train_loss":
        return -result["train_loss"]
    return -result["val_loss"] if rank == "loss" else result["val_acc"]


def dominates(a: Point, b: Point) -> bool:
    """a is at least as good as b on both axes and better on one."""
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


def front_indices(points: list[Point]) -> list[int]:
    """Indices of the non-dominated points, smallest first."""
    front = [i for i, p in enumerate(points) if not any(dominates(q, p) for q in points)]
    return sorted(front, key=lambda i: (points[i][1], -points[i][0]))


def promotion_order(points: list[Point]) -> list[int]:
    """All indices, best first: front by front (non-dominated sorting), and within a front the
    points that spread it along the size axis first (NSGA-II's crowding distance over log size
    and accuracy): its two ends (the smaller first), then the points with the largest gaps to
    their neighbours. So small nets stay in play beside accurate ones, and a crowd of near twins
    does not take every place. The smaller end goes first: the question is how small still holds
    (docs/results.md, "Which end of the front goes on")."""
    left, order = list(range(len(points))), []
    while left:
        front = [left[i] for i in front_indices([points[j] for j in left])]
        order += _by_crowding(points, front)
        left = [i for i in left if i not in front]
    return order


def _by_crowding(points: list[Point], front: list[int]) -> list[int]:
    """`front` (indices, smallest first) ordered by crowding distance, the largest first; ties (the
    two ends) the smaller first, then the more accurate."""
    distance = {i: math.inf for i in front}
    if len(front) > 2:
        sizes = [math.log(points[i][1]) for i in front]
        accs = [points[i][0] for i in front]
        size_span, acc_span = (sizes[-1] - sizes[0]) or 1.0, (max(accs) - min(accs)) or 1.0
        for k in range(1, len(front) - 1):
            distance[front[k]] = (sizes[k + 1] - sizes[k - 1]) / size_span + abs(accs[k + 1] - accs[k - 1]) / acc_span
    return sorted(front, key=lambda i: (-distance[i], points[i][1], -points[i][0]))


def below_region(accuracy: float, best: float, floor: float) -> float:
    """How far `accuracy` lies below the region, the results within `floor` points of the best
    `best` ([region] floor; > 0: outside it, <= 0: inside); without a floor (0) every result is inside."""
    return best - floor - accuracy if floor else -math.inf


def promoted(points: list[Point], index: int, eta: int, inside: list[bool] | None = None) -> bool:
    """Whether the point at `index` goes on to the next rung: when it is one of the two ends (the
    smallest and the best scored) of the first front of the points `inside` the region (within the
    rung's floor of the most accurate of all, and its loss band: search/halving.py `verdict`; every
    point when None), or when it is among the first len(points) // eta in
    `promotion_order` (ASHA's rule). The ends' rule is for a young rung, where ASHA's rule gives
    one place and the first trials to complete teach the sampler where to look: one place
    gave that lesson to one end of the front, and the sampler went there (docs/results.md, "Which
    end of the front goes on"). A stopped trial is never resumed, so a rung's first results are
    not stopped whatever they are (as Optuna's SuccessiveHalvingPruner lets the best so far go on).
    Nor is any point of a rung that holds fewer than `eta` results, where ASHA's rule gives no
    place and the front's ends are one or two results (one result beside it stopped step 3's net
    at the first rung: docs/results.md, "A young rung and the sampler's start"). The floor
    (search/halving.py `verdict`) still applies there. ASHA's places are counted over every point,
    in the region or not (where a point below the floor can rank high by being small): the verdict
    stops such a point anyway."""
    if len(points) < eta:
        return True
    kept = [i for i in range(len(points)) if inside is None or inside[i]]
    first = [kept[i] for i in front_indices([points[i] for i in kept])]
    return index in (first[0], first[-1]) or promotion_order(points).index(index) < len(points) // eta


def hypervolume(points: list[Point], reference: Point) -> float:
    """Area (accuracy points x parameters) dominated by `points` and bounded by `reference`
    (the worst accuracy and the largest size that count)."""
    area, best_acc = 0.0, reference[0]
    ref_acc, ref_size = reference
    kept = sorted((p for p in points if p[0] > ref_acc and p[1] < ref_size), key=lambda p: p[1])
    for i, (acc, size) in enumerate(kept):  # sweep by size: each point adds the strip up to the next size
        best_acc = max(best_acc, acc)
        right = kept[i + 1][1] if i + 1 < len(kept) else ref_size
        area += (best_acc - ref_acc) * (right - size)
    return area
