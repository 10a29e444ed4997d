"""The ``mlipx`` command line: ``serve-broker``, ``serve``, ``serve-status``,
``serve-submit``; anything else goes to mlipx's own command line (``main``)."""

from mlipx_serve.cli.main import app, main

__all__ = ["app", "main"]
