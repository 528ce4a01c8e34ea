#!/usr/bin/env bash
# Run the main job on the embedded default (rules backend): the service, a replayed sample and
# a live table of events. Extra arguments go to `subtag demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
# The demo needs no browser: skip installing Chromium for the viewer test.
SUBTAG_SKIP_BROWSER=1 tools/setup.sh
exec .venv/bin/subtag demo "$@"
