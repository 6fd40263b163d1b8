"""`report`: a study's trials as a table (trials.csv), its plots (search/plots.py), the top 5 and
the confirmed candidates on the terminal, with what the search spent its time on and how well
its rungs ranked the confirmed candidates."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import TrialState

from search.answer import holds
from search.pareto import hypervolume
from search.plots import write_plots
from search.results import confirmed_rows, format_row, front_in_region
from search.storage import load_existing_study, output_folder
from search.studyfile import StudySpec, stored_spec

HYPERVOLUME_FLOOR = 90.0  # accuracy (%) below which a point adds nothing to the front's hypervolume


def report_command(study_name: str, storage: str | None, out: Path | None) -> None:
    """`report`: trials.csv, the plots and the tables of a study, into `out` (default: studies/NAME/report/)."""
    study = load_existing_study(study_name, storage)
    spec = stored_spec(study)
    out = output_folder(out or Path("studies") / study_name / "report", "--out")
    print("wrote " + ", ".join(str(p) for p in write_report(study, spec, out)))


def hypervolume_reference(study: optuna.Study, spec: StudySpec) -> tuple[float, int]:
    """(accuracy, parameters) below which nothing counts: the region's floor under the best
    COMPLETE result when the study has a region, else HYPERVOLUME_FLOOR; and the limit."""
    values = [t.values[0] for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    floor = max(values) - spec.region.floor if spec.region.floor and values else HYPERVOLUME_FLOOR
    return floor, spec.max_params


def front_hypervolume(study: optuna.Study, spec: StudySpec) -> float:
    """Area (accuracy points x parameters) the COMPLETE trials dominate above and below `hypervolume_reference`."""
    points = [(t.values[0], t.user_attrs["n_params"]) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    return hypervolume(points, hypervolume_reference(study, spec))


def budget_summary(study: optuna.Study, spec: StudySpec, within: float = 2.0) -> str | None:
    """Where a Pareto study spent its training: the trained trials whose last result lies within
    `within` accuracy points of the best result at that rung, their share of the training
    seconds, and the front's points in the region."""
    # a trial re-queued by the heartbeat callback carries its FAIL original's rungs: count the retry only
    everything = study.get_trials(deepcopy=False)
    retried = {t.system_attrs["failed_trial"] for t in everything if "failed_trial" in t.system_attrs}
    trials = [t for t in everything if t.user_attrs.get("rungs") and t.number not in retried]
    if not trials:
        return None
    best = {}
    for t in trials:
        for r in t.user_attrs["rungs"]:
            best[r["rung"]] = max(best.get(r["rung"], 0.0), r["val_acc"])
    near = [t for t in trials if t.user_attrs["rungs"][-1]["val_acc"] >= best[t.user_attrs["rungs"][-1]["rung"]] - within]
    seconds = lambda ts: sum(t.user_attrs.get("seconds", 0.0) for t in ts)  # noqa: E731
    front, region = study.best_trials, front_in_region(study, spec.region.floor)
    return (f"trained trials within {within:g} points of the best result of their last rung: {len(near)} of {len(trials)} "
            f"({len(near) / len(trials):.0%}), {seconds(near) / max(seconds(trials), 1e-9):.0%} of the training seconds; "
            f"front: {len(region)} of {len(front)} points in the region")


# a rung statistic: (its name, its sign: +1 where higher ranks better); a confirmed figure the same way
RANKINGS = {"val_acc": ("mean val acc of the last 3 epochs", 1), "val_loss": ("mean val loss of the last 3 epochs (negated)", -1),
            "final_val_acc": ("final val acc", 1), "train_loss_sum": ("sum of training losses (negated)", -1),
            "train_loss": ("training loss of the last epoch (negated)", -1)}
CONFIRMED = {"mean": ("the confirmed mean", 1), "loss": ("the confirmed loss (negated)", -1),
             "elastic_loss": ("the confirmed elastic loss (negated)", -1)}


def ranking_summary(study: optuna.Study, confirmed: list[dict]) -> list[str]:
    """How well each rung's statistics rank the confirmed candidates: Spearman's correlation of
    each with the confirmed mean accuracy, the confirmed mean validation loss and the same under elastic
    distortion (the answer's measure with [region] answer_loss or answer_elastic_loss; losses negated:
    lower is better), over the candidates
    confirmed at one budget, none diverged. A statistic or figure a study did not record (before
    it was recorded) is left out."""
    rows = [r for r in confirmed if holds(r) and r["epochs"] is not None]
    if not rows:
        return []
    budget_of = max({(r["epochs"], r["images"]) for r in rows}, key=lambda b: sum((r["epochs"], r["images"]) == b for r in rows))
    rows = [r for r in rows if (r["epochs"], r["images"]) == budget_of]
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    lines = []
    rungs = {len(trials[r["trial"]].user_attrs.get("rungs", [])) for r in rows}
    for rung in range(min(rungs)):
        for key, (name, sign) in RANKINGS.items():
            for figure, (against, figure_sign) in CONFIRMED.items():
                pairs = pd.DataFrame([(sign * trials[r["trial"]].user_attrs["rungs"][rung].get(key, math.nan),
                                       figure_sign * (math.nan if r.get(figure) is None else r[figure])) for r in rows]).dropna()
                if len(pairs) >= 3:
                    rho = spearman(pairs[0], pairs[1])
                    lines.append(f"rung {rung}, {name}: Spearman {rho:+.2f} with {against} over {len(pairs)} candidates")
    return lines


def spearman(x: pd.Series, y: pd.Series) -> float:
    """Spearman's rank correlation: Pearson's over the ranks, ties sharing their mean rank (as SciPy's
    spearmanr; pandas' own method="spearman" would import SciPy for it)."""
    return x.rank().corr(y.rank())


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, objective, n_params, each hyper-parameter, seconds, reason."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else None
        rows.append({"number": t.number, "state": t.state.name, "objective": t.values[0] if t.state == TrialState.COMPLETE else None,
                     "n_params": t.user_attrs.get("n_params"), **t.params, "seconds": seconds, "reason": t.user_attrs.get("reason", "")})
    return pd.DataFrame(rows)


def refused_summary(table: pd.DataFrame) -> str | None:
    """How fast the sampler learns the feasible region: the share of trials refused before
    training (over the limit, invalid shape) among the first and the last 50 (or halves of a
    shorter study), and what a refused trial cost."""
    over = table["reason"].str.startswith("over the parameter limit")
    invalid = table["reason"].str.startswith("invalid shape")
    if len(table) < 2 or not (over | invalid).any():
        return None
    k = min(50, len(table) // 2)

    def shares(rows: slice) -> str:
        return f"{over[rows].mean():.0%} over the limit, {invalid[rows].mean():.0%} invalid"

    seconds = table.loc[over | invalid, "seconds"]
    return (f"refused before training: {shares(slice(0, k))} in the first {k} trials; {shares(slice(len(table) - k, None))} "
            f"in the last {k}; a refused trial took {seconds.median():.3f} s (median of {len(seconds)})")


def write_report(study: optuna.Study, spec: StudySpec, out: Path) -> list[Path]:
    """trials.csv, the plots, and a top-5 table on the terminal; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    table, rows = trials_table(study), confirmed_rows(study)
    written = [out / "trials.csv"]
    table.to_csv(written[0], index=False)
    written += write_plots(study, spec, rows, out)
    if len(study.directions) > 1:
        floor, limit = hypervolume_reference(study, spec)
        print(f"front hypervolume: {front_hypervolume(study, spec):,.0f} (accuracy points x parameters above {floor:.2f} % "
              f"and below {limit:,} parameters)")
        spent = budget_summary(study, spec)
        if spent:
            print(spent)
    refused = refused_summary(table)
    if refused:
        print(refused)
    top = table[table["state"] == "COMPLETE"].sort_values("objective", ascending=False).head(5)
    print(f"top 5 of {len(table)} trials in {study.study_name!r} (objective: {study.user_attrs.get('objective', '')}):")
    print(top.drop(columns=["reason", "state"]).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if rows:
        written.append(out / "confirmed.csv")
        columns = ["trial", "n_params", "mean", "std", "loss", "elastic_loss", "seeds", "diverged", "epochs", "images"]
        frame = pd.DataFrame([{**r, "seeds": " ".join(map(str, r["seeds"])),
                                   "diverged": "; ".join(f"seed {k}: {v}" for k, v in r["diverged"].items())} for r in rows])[columns]
        frame.to_csv(written[-1], index=False)
        print("confirmed candidates (final validation accuracy, mean ± std over seeds, and the mean final validation loss, clean and elastic; a diverged run counts against its candidate), "
              "smallest first:")
        for row in rows:
            print("  " + format_row(row))
        for line in ranking_summary(study, rows):
            print(line)
    return written
