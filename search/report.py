"""`report`: a study's trials as a table (trials.csv), its plots, the top 5 and the confirmed
candidates on the terminal."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from search.pareto import front_indices, hypervolume  # noqa: E402
from search.results import best_trial, confirmed_rows, format_row, front_in_region, holds  # noqa: E402
from search.storage import load_existing_study, output_folder  # noqa: E402
from search.studyfile import StudySpec, stored_spec  # noqa: E402
from space import blocks  # noqa: E402
from space.config import count_params  # noqa: E402

# the hand-made step-3 model's size (7,944), marked on the plot
STEP3_SIZE = count_params(blocks.config_from_params(blocks.STEP3_PARAMS, epochs=15, seed=1, name="step3"))


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


RANKINGS = {"val_acc": "mean val acc of the last 3 epochs", "final_val_acc": "final val acc", "train_loss_sum": "sum of training losses (negated)"}


def ranking_summary(study: optuna.Study, confirmed: list[dict]) -> list[str]:
    """How well each rung's statistics rank the confirmed candidates: Spearman's correlation of
    each with the confirmed mean (the sum of training losses negated: lower is better), over the
    candidates confirmed at one budget, none diverged."""
    rows = [r for r in confirmed if holds(r) and r["epochs"] is not None]
    if not rows:
        return []
    budget_of = max({(r["epochs"], r["images"]) for r in rows}, key=lambda b: sum((r["epochs"], r["images"]) == b for r in rows))
    rows = [r for r in rows if (r["epochs"], r["images"]) == budget_of]
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    lines = []
    rungs = {len(trials[r["trial"]].user_attrs.get("rungs", [])) for r in rows}
    for rung in range(min(rungs)):
        for key, name in RANKINGS.items():
            sign = -1 if key == "train_loss_sum" else 1
            pairs = pd.DataFrame([(sign * trials[r["trial"]].user_attrs["rungs"][rung].get(key, float("nan")), r["mean"]) for r in rows]).dropna()
            if len(pairs) >= 3:
                rho = spearman(pairs[0], pairs[1])
                lines.append(f"rung {rung}, {name}: Spearman {rho:+.2f} with the confirmed mean over {len(pairs)} candidates")
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


def plot_params_vs_objective(study: optuna.Study, spec: StudySpec, confirmed: list[dict], path: Path) -> None:
    """Accuracy against parameters: every trained trial, the front of the COMPLETE ones, the
    confirmed means (± std), the limit and the hand-made reference's size."""
    limit = spec.max_params
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values]
    points = [(t.values[0], t.user_attrs["n_params"]) for t in complete]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([p[1] for p in points], [p[0] for p in points], label="complete (objective)", zorder=3, s=14)
    ax.scatter([t.user_attrs["n_params"] for t in pruned], [t.intermediate_values[max(t.intermediate_values)] for t in pruned],
               marker="x", color="grey", label="pruned (last val acc)")
    front = [points[i] for i in front_indices(points)]
    ax.step([p[1] for p in front], [p[0] for p in front], where="post", color="tab:orange", label="front (search)", zorder=4)
    rows = [r for r in confirmed if r["seeds"]]
    if rows:
        ax.errorbar([r["n_params"] for r in rows], [r["mean"] for r in rows], yerr=[r["std"] for r in rows], fmt="D", color="tab:green",
                    label="confirmed mean ± std (export budget)", zorder=5)
    ax.axvline(limit, color="red", linestyle="--", label=f"limit {limit:,}")
    ax.axvline(STEP3_SIZE, color="black", linestyle=":", label=f"hand-made step 3 ({STEP3_SIZE:,})")
    best = best_trial(study, confirmed)
    ax.annotate(f"best: trial {best.number}", (best.user_attrs["n_params"], best.values[0]), textcoords="offset points", xytext=(-90, -18))
    values = [p[0] for p in points] + [t.intermediate_values[max(t.intermediate_values)] for t in pruned] + [r["mean"] for r in rows]
    ax.set_ylim(max(min(values) - 1, 0), min(max(values) + 0.5, 100))
    ax.set(xlabel="parameters", ylabel="validation accuracy (%)", title=f"{study.study_name}: parameters vs objective")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _save_optuna_plot(plot, study: optuna.Study, path: Path) -> str | None:
    """Draw one of Optuna's matplotlib plots to `path`; the reason when it cannot be drawn."""
    try:
        ax = plot(study)
    except (ValueError, RuntimeError) as e:
        return str(e)
    fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
    if hasattr(ax, "get_legend") and ax.get_legend() is not None and len(ax.get_lines()) > 10:
        ax.get_legend().remove()  # one entry per trial: unreadable, and it would push the plot off the page
    fig.set_size_inches(8, 5)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None


def write_report(study: optuna.Study, spec: StudySpec, out: Path) -> list[Path]:
    """trials.csv, the plots, and a top-5 table on the terminal; returns the files written."""
    import warnings

    import optuna.visualization.matplotlib as vis

    out.mkdir(parents=True, exist_ok=True)
    table, rows = trials_table(study), confirmed_rows(study)
    written = [out / "trials.csv"]
    table.to_csv(written[0], index=False)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # Optuna marks its matplotlib plots experimental
    warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes")  # the target above is negated for it
    warnings.filterwarnings("ignore", message="Some regimes for parameter")  # conditional parameters are rare in some regimes
    if len(study.directions) > 1:  # Optuna's plots of one objective take a target; the front is its own plot
        accuracy = {"target": lambda t: t.values[0], "target_name": "val acc %"}
        plots = {"pareto_front.png": vis.plot_pareto_front,
                 "optimization_history.png": lambda s: vis.plot_optimization_history(s, **accuracy),
                 # PED-ANOVA, Optuna's default evaluator, ranks parameters by how they reach *low* target values
                 "param_importances.png": lambda s: vis.plot_param_importances(s, target=lambda t: -t.values[0],
                                                                               target_name="val acc % (negated)")}
    else:
        plots = {"optimization_history.png": vis.plot_optimization_history, "param_importances.png": vis.plot_param_importances,
                 "intermediate_values.png": vis.plot_intermediate_values}
    for name, plot in plots.items():
        problem = _save_optuna_plot(plot, study, out / name)
        if problem:
            print(f"skipped {name}: {problem}")
        else:
            written.append(out / name)
    plot_params_vs_objective(study, spec, rows, out / "params_vs_objective.png")
    written.append(out / "params_vs_objective.png")
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
        columns = ["trial", "n_params", "mean", "std", "seeds", "diverged", "epochs", "images"]
        frame = pd.DataFrame([{**r, "seeds": " ".join(map(str, r["seeds"])),
                                   "diverged": "; ".join(f"seed {k}: {v}" for k, v in r["diverged"].items())} for r in rows])[columns]
        frame.to_csv(written[-1], index=False)
        print("confirmed candidates (final validation accuracy, mean ± std over seeds; a diverged run counts against its candidate), "
              "smallest first:")
        for row in rows:
            print("  " + format_row(row))
        for line in ranking_summary(study, rows):
            print(line)
    return written
