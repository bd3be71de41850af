"""What the CLI's command modules (`cli.py`, `cli_explore.py`) share: the console results print to, and the
Python API, imported only when a command runs.
"""

from __future__ import annotations

from rich.console import Console

out_console = Console()  # stdout, for tables and results
if not out_console.is_terminal:
    out_console = Console(width=200)  # piped output: never cut backbone names to fit 80 columns


def load_api():
    """The Python API, imported when a command runs: `--help` and a mistyped option then answer in well under a
    second, where importing torch, timm, transformers and scikit-learn takes ~10 s."""
    from . import api

    return api
