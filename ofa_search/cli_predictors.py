"""CLI commands of the predictors part (registered on the main app by :mod:`ofa_search.cli`)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this part's commands to ``app``."""
