"""``ofa-search``: a thin command line over the library (:mod:`ofa_search.cli.app`).

Each module holds one family of commands: they parse, call one library function and print.
Shared option types live in :mod:`ofa_search.cli.options`.
"""

from ofa_search.cli.app import app, main

__all__ = ["app", "main"]
