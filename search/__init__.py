"""Running studies: data, training, the study, export, the command line."""

import optuna

# Our own lines replace Optuna's log in every command: its INFO lines ("Using an existing study ...") are not ours
# to print, and it would print a traceback for a trial ended by Ctrl-C.
optuna.logging.set_verbosity(optuna.logging.ERROR)
