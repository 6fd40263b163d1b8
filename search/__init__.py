"""Running studies: data, training, the study, export, the command line."""
