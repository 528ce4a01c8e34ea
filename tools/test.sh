#!/usr/bin/env bash
# The whole test suite from a fresh clone: set-up, lint, format check, strict typing, tests.
# Extra arguments go to pytest (e.g. tools/test.sh -k grammar).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
export PATH="$PWD/.venv/bin:$PATH:/usr/sbin"
echo "== ruff" >&2
ruff check stream engine tests tools
ruff format --check stream engine tests tools
echo "== mypy --strict" >&2
mypy
echo "== pytest" >&2
exec pytest "$@"
