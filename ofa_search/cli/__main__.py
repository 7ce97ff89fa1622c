"""``python -m ofa_search.cli``."""

from ofa_search.cli.app import main

main()
