"""A study's plots, as files: Optuna's own (the front, the history, parameter importances, and an
accuracy study's learning curves) and parameters against accuracy with the confirmed means."""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
import optuna.visualization.matplotlib as vis  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from search.pareto import front_indices  # noqa: E402
from search.results import best_trial  # noqa: E402
from search.studyfile import StudySpec  # noqa: E402
from space import blocks  # noqa: E402
from space.config import count_params  # noqa: E402

# the hand-made step-3 model's size (7,944), marked on the plot
STEP3_SIZE = count_params(blocks.config_from_params(blocks.STEP3_PARAMS, epochs=15, seed=1, name="step3"))


def write_plots(study: optuna.Study, spec: StudySpec, confirmed: list[dict], out: Path) -> list[Path]:
    """The plots of `study` (its confirmed candidates `confirmed`, see confirmed_rows) into `out`;
    returns the files written, and says which of Optuna's plots cannot be drawn and why."""
    written: list[Path] = []
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
    plot_params_vs_objective(study, spec, confirmed, out / "params_vs_objective.png")
    written.append(out / "params_vs_objective.png")
    return written


def plot_params_vs_objective(study: optuna.Study, spec: StudySpec, confirmed: list[dict], path: Path) -> None:
    """Accuracy against parameters: every COMPLETE trial and their front, the PRUNED ones where they
    stopped (an accuracy study's: their last reported epoch; a Pareto study's: those stopped after
    the last rung, at its result), the confirmed means (± std), the limit and the hand-made reference's size."""
    limit = spec.max_params
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    pruned = pruned_points(study, spec)
    points = [(t.values[0], t.user_attrs["n_params"]) for t in complete]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([p[1] for p in points], [p[0] for p in points], label="complete (objective)", zorder=3, s=14)
    ax.scatter([p[0] for p in pruned], [p[1] for p in pruned], marker="x", color="grey",
               label="pruned (last val acc)" if len(study.directions) == 1 else "stopped after the last rung")
    front = [points[i] for i in front_indices(points)]
    ax.step([p[1] for p in front], [p[0] for p in front], where="post", color="tab:orange", label="front (search)", zorder=4)
    rows = [r for r in confirmed if r["seeds"]]
    if rows:
        ax.errorbar([r["n_params"] for r in rows], [r["mean"] for r in rows], yerr=[r["std"] for r in rows], fmt="D", color="tab:green",
                    label="confirmed mean ± std (export budget)", zorder=5)
    ax.axvline(limit, color="red", linestyle="--", label=f"limit {limit:,}")
    ax.axvline(STEP3_SIZE, color="black", linestyle=":", label=f"hand-made step 3 ({STEP3_SIZE:,})")
    if complete:  # a study stopped before its first trial completed has no best yet
        best = best_trial(study, confirmed)
        ax.annotate(f"best: trial {best.number}", (best.user_attrs["n_params"], best.values[0]), textcoords="offset points", xytext=(-90, -18))
    values = [p[0] for p in points] + [p[1] for p in pruned] + [r["mean"] for r in rows]
    if values:
        ax.set_ylim(max(min(values) - 1, 0), min(max(values) + 0.5, 100))
    ax.set(xlabel="parameters", ylabel="validation accuracy (%)", title=f"{study.study_name}: parameters vs objective")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def pruned_points(study: optuna.Study, spec: StudySpec) -> list[tuple[int, float]]:
    """(parameters, accuracy) of the PRUNED trials the plot draws: an accuracy study's at their last
    reported epoch; a Pareto study's only those stopped after its last rung (below the region
    there), at that rung's result: the rungs before it trained on fewer images."""
    pruned = study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
    points = [(t.user_attrs["n_params"], t.intermediate_values[max(t.intermediate_values)]) for t in pruned if t.intermediate_values]
    return points + [(t.user_attrs["n_params"], t.user_attrs["rungs"][-1]["val_acc"]) for t in pruned
                     if len(t.user_attrs.get("rungs", [])) == spec.fidelity.rungs > 1]


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
