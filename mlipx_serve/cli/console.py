"""What the commands print: one line of text as it is (rich would take ``[mace]`` for
markup), an error and its exit code, and the logging a command's ``-v`` turns on."""

from __future__ import annotations

import logging
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

console = Console()
err = Console(stderr=True)


def say(message: str) -> None:
    """One line on stderr, as it is."""
    err.print(escape(message), soft_wrap=True)


def fail(message: str, code: int = 1) -> NoReturn:
    """End the command with ``message`` on one line: no traceback for a user's mistake."""
    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
