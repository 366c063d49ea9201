#!/usr/bin/env bash
# Hook run by scripts/runtime_env.sh after installing requirements.txt into a
# training venv:   post_install.sh DEST
#
# Builds (or reuses) the horovod wheel for the venv's Python/torch in a cache
# dir shared by all checkouts, then installs it with --no-deps (its runtime
# deps are pinned in requirements.txt). Cache dir:
#   ${MLOPS_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/airflow-provider-mlops/wheels}/py311-torch2.13.0
set -euo pipefail

[[ $# -eq 1 ]] || { echo "usage: $0 DEST" >&2; exit 1; }
DEST=$1
PY="$DEST/bin/python"
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

key=$(bash "$HERE/build_horovod.sh" --cache-key "$PY")
cache="${MLOPS_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/airflow-provider-mlops/wheels}/$key"

bash "$HERE/build_horovod.sh" "$PY" "$cache"

shopt -s nullglob
wheels=("$cache"/horovod-0.28.1-*.whl)
[[ ${#wheels[@]} -eq 1 ]] || { echo "[post_install] expected one horovod wheel in $cache, found ${#wheels[@]}" >&2; exit 1; }
echo "[post_install] installing $(basename "${wheels[0]}")"
uv pip install --python "$PY" --no-deps "${wheels[0]}"
