#!/usr/bin/env bash
# Set up .venv (if needed) and run the checks: ruff, mypy, then the test suite.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup_env.sh
# the real benchmark dataset, for the tests that read it (Debian package; skipped when apt is
# not usable, and those tests then say why they skip)
if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
        || echo "[test] could not install dataset-fashion-mnist; its tests will skip"
fi
py=.venv/bin/python
echo "[test] ruff"
"$py" -m ruff check ofa_search predictors tests scripts
echo "[test] mypy"
"$py" -m mypy
echo "[test] import layers (import-linter)"
.venv/bin/lint-imports
echo "[test] docs (mkdocs --strict)"
site="$(mktemp -d)"
NO_MKDOCS_2_WARNING=1 "$py" -m mkdocs build --strict --quiet --site-dir "$site"
rm -rf "$site"
echo "[test] pytest"
# one worker per core (pytest-xdist), whole files per worker; OFA_TEST_WORKERS=0 runs
# everything in this process
"$py" -m pytest -q -n "${OFA_TEST_WORKERS:-auto}" --dist loadfile "$@"
