"""Output lines that live beside progress bars."""

from __future__ import annotations

import sys

from tqdm import tqdm


def log_line(text: str) -> None:
    """One line of output that does not break a progress bar and is flushed at once, also into a file."""
    tqdm.write(text)
    sys.stdout.flush()
