"""The dashboard's study note: the best trial (what it is, how to rerun it), the study's
trial counts and the confirmed candidates with the budget they were confirmed at. `run` and
`confirm` rewrite it (optuna_dashboard.save_note); the dashboard shows it on the study page."""

from __future__ import annotations

from datetime import datetime

import optuna
import optuna_dashboard
from optuna.trial import TrialState

from search.export import export_config
from search.results import budget
from search.studyfile import StudySpec
from space.config import RunConfig, architecture


def recipe(config: RunConfig) -> str:
    """The training recipe of `config` in one line."""
    o, s, a = config.optimizer, config.scheduler, config.augment
    name = {"sgd": "SGD", "nesterov": "SGD (Nesterov)", "adam": "Adam", "adamw": "AdamW"}[o.kind]
    optimizer = f"{name} lr {o.lr:.4g}" + ("" if o.kind.startswith("adam") else f", momentum {o.momentum:.3g}")
    if o.weight_decay:
        optimizer += f", weight decay {o.weight_decay:.2g}"
    schedule = f"StepLR step {s.step_size}, gamma {s.gamma:.3f}" if s.kind == "step" else f"OneCycleLR, warm-up {s.warmup:.2f}"
    smoothing = f"; label smoothing {config.label_smoothing:.3f}" if config.label_smoothing else ""
    augment = ", ".join(f"{name} {value:.3g}" for name, value in (("rotation", a.rotation), ("translate", a.translate), ("scale", a.scale),
                                                                 ("brightness", a.brightness), ("contrast", a.contrast)) if value)
    if a.elastic:
        augment += (", " if augment else "") + f"elastic alpha {a.elastic.alpha:.3g}, sigma {a.elastic.sigma:.3g}"
    extras = (f"; weight average (EMA) decay {config.ema:g}" if config.ema else "") + (
        f"; distilled from {config.distill.teacher} (weight {config.distill.weight:.2g}, temperature {config.distill.temperature:.3g})"
        if config.distill else "")
    return (f"{optimizer}; {schedule}; batch {config.batch_size}{smoothing}; dropout {config.dropout:.3f}; augmentation: {augment or 'none'}"
            + extras)


def study_note(study: optuna.Study, spec: StudySpec, best: optuna.trial.FrozenTrial, rows: list[dict]) -> str:
    """Markdown for the dashboard's study note: the best trial (`best_trial`) and how to rerun it,
    then the confirmed candidates `rows` (`confirmed_rows`)."""
    name = study.study_name
    trials = study.get_trials(deepcopy=False)
    count = lambda state: sum(t.state == state for t in trials)  # noqa: E731
    over = sum("over the parameter limit" in t.user_attrs.get("reason", "") for t in trials)
    invalid = sum("invalid shape" in t.user_attrs.get("reason", "") for t in trials)
    config = export_config(best, spec.training, name)
    confirmed = ["", "## Confirmed candidates", "",
                 "Retrained at the budget shown on seeds the search never used; final validation accuracy, mean ± std over the "
                 f"seeds, and the mean final validation loss, clean and under elastic distortion. A diverged run counts against its candidate. Every run is a trial of the "
                 f"study `{name}.confirm`.", "",
                 "| trial | parameters | mean ± std (%) | validation loss | elastic loss | seeds | diverged | budget |", "|---|---|---|---|---|---|---|---|"]
    confirmed += [f"| {r['trial']} | {r['n_params']:,} | " + (f"{r['mean']:.2f} ± {r['std']:.2f}" if r["seeds"] else "–")
                  + " | " + (f"{r['loss']:.4f}" if r.get("loss") is not None else "–")
                  + " | " + (f"{r['elastic_loss']:.4f}" if r.get("elastic_loss") is not None else "–")
                  + f" | {', '.join(map(str, r['seeds']))} | {', '.join(f'seed {k}: {v}' for k, v in r['diverged'].items()) or 'none'} "
                  f"| {budget(r)} |" for r in rows]
    heading = "Best confirmed trial" if rows else "Best trial" if len(study.directions) == 1 else "Most accurate trial of the front"
    return "\n".join([
        f"## {heading}: {best.number}",
        "",
        "| | |", "|---|---|",
        f"| parameters | {best.user_attrs['n_params']:,} (limit {spec.max_params:,}) |",
        f"| objective | {best.values[0]:.3f} % ({study.user_attrs.get('objective', 'validation accuracy')}) |",
        f"| architecture | `{architecture(config)}` |",
        f"| recipe ({config.epochs} epochs) | {recipe(config)} |",
        "",
        f"Rerun it on all 60,000 training images ({config.epochs} epochs) and report test accuracy:",
        "",
        f"    python -m search reproduce --study {name} --seeds 1 2 3",
        "",
        f"Trial {best.number}'s artifacts (Trials tab) are its config, `export-config.json` (the same as this study's `best.json`), and its learning curve.",
        "",
        f"{len(trials)} trials: {count(TrialState.COMPLETE)} complete, {count(TrialState.PRUNED)} pruned "
        f"({over} of them over the parameter limit and {invalid} of invalid shape, never trained), {count(TrialState.FAIL)} failed. "
        f"Note updated {datetime.now():%Y-%m-%d %H:%M}.",
        *(confirmed if rows else []),
    ])


def publish_best(study: optuna.Study, spec: StudySpec, best: optuna.trial.FrozenTrial, rows: list[dict]) -> None:
    """Keep the dashboard's study note on the best trial current."""
    optuna_dashboard.save_note(study, study_note(study, spec, best, rows))
