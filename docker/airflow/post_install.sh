#!/usr/bin/env bash
# Hook run by scripts/runtime_env.sh after installing the control-plane lock:
# installs this checkout's provider into the environment (editable, no deps: the lock has them).
set -euo pipefail
DEST=$1
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
uv pip install --python "$DEST/bin/python" --no-deps --editable "$ROOT"
