#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: a virtual environment in .venv with the project and its
# development tools, plus the system programs the tests drive (mosquitto, chromium).
# Called by tools/test.sh and tools/demo.sh; safe to run again (it skips what is already there).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP="$VENV/.subtag-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV" >&2
    "$PYTHON" -m venv "$VENV"
fi
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$want" ]; then
    echo "setup: installing Python packages (first run takes a few minutes)" >&2
    "$VENV/bin/python" -m pip install -q --upgrade pip
    # torch first and pinned: an unpinned torch would pull several GB of CUDA packages.
    "$VENV/bin/python" -m pip install -q "torch==2.13.0"
    "$VENV/bin/python" -m pip install -q -e ".[dev]"
    echo "$want" >"$STAMP"
fi

need_apt=()
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    need_apt+=(mosquitto)
fi
if [ "${SUBTAG_SKIP_BROWSER:-0}" != 1 ]; then
    # The viewer test drives Debian's Chromium; a CJK font makes its screenshot readable.
    command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
    fc-list 2>/dev/null | grep -qiE "wqy|noto sans cjk" || need_apt+=(fonts-wqy-microhei)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "setup: installing ${need_apt[*]} from Debian packages" >&2
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
    # The Debian package starts a broker on 1883; the tests start their own on free ports.
fi
