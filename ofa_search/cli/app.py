"""The ``ofa-search`` application: one Typer app that merges the commands of each module
of this package (each defines ``app = typer.Typer()``, its commands and groups on it).

Every input error (an :class:`~ofa_search.errors.OfaSearchError`) ends the program with
exit code 2 and one line on stderr, never a traceback.
"""

from __future__ import annotations

import sys

import typer

from ofa_search.cli import (
    arch,
    compress,
    devices,
    export,
    interop,
    predictors,
    profile,
    run,
    search,
    serve,
    train,
)
from ofa_search.errors import OfaSearchError
from ofa_search.profiling.precisions import register_precision_timing_loader

COMMAND_MODULES = (train, arch, profile, devices, predictors, search, export, compress,
                   interop, serve, run)
"""In the order ``ofa-search --help`` lists their commands."""


def _load_int8_timing() -> None:
    import ofa_search.quant  # noqa: F401  # deferred: registers int8 timing when first needed


def _load_binary_timing() -> None:
    import ofa_search.binary  # noqa: F401  # deferred: registers binary timing when first needed


# the packages that time low-precision units import torch and onnx (seconds): commands
# import them only when such a unit is timed, so that `ofa-search --help` starts at once
register_precision_timing_loader("int8", _load_int8_timing)
register_precision_timing_loader("binary", _load_binary_timing)

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Hardware-aware NAS: once-for-all supernets, device tables, search.")
for _module in COMMAND_MODULES:
    app.add_typer(_module.app)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: input errors become one line and exit code 2."""
    try:
        import optuna  # deferred: keeps `import ofa_search.cli` free of Optuna
    except ImportError:
        pass  # a GPU host without it still trains, evaluates and profiles (issue 21)
    else:
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own progress is enough
    try:
        app(args=argv, standalone_mode=False)
    except OfaSearchError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except Exception as exc:
        # usage errors of the click that typer bundles (typer no longer exposes it publicly)
        show, code = getattr(exc, "show", None), getattr(exc, "exit_code", None)
        if callable(show) and isinstance(code, int):
            show()
            sys.exit(code)
        raise


if __name__ == "__main__":
    main()
