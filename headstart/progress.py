"""Rich progress bars for every long step; silent when verbose is off."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


def make_progress(verbose: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=not verbose, transient=False,
    )


def say(verbose: bool, message: str) -> None:
    if verbose:
        console.print(message, highlight=False, soft_wrap=True)  # long paths stay whole when piped to a log
