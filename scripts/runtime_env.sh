#!/usr/bin/env bash
# Create or update a runtime venv from docker/NAME/requirements.txt.
#
#   scripts/runtime_env.sh NAME DEST
#
# Builds a Python 3.11 uv venv at DEST from docker/NAME/requirements.txt (the
# same file the docker/NAME/Dockerfile installs), then runs the optional hook
# docker/NAME/post_install.sh DEST (training uses it to build/install horovod).
#
# Idempotent: DEST/.runtime-env.stamp records the sha256 of the requirements
# file and of the hook; when it matches, nothing is done. On a mismatch the venv
# is recreated from scratch (uv's cache makes this fast), so it always matches
# the requirements file exactly.
#
# Env: PIP_FIND_LINKS / PIP_INDEX_URL are passed to uv as UV_FIND_LINKS /
# UV_INDEX_URL when set. MLOPS_RUNTIME_PYTHON overrides the interpreter
# request (default 3.11). Works from any cwd.
set -euo pipefail

log() { echo "[runtime_env] $*"; }
die() { echo "[runtime_env] ERROR: $*" >&2; exit 1; }

[[ $# -eq 2 ]] || die "usage: $0 NAME DEST"
NAME=$1
DEST=$2
[[ $NAME =~ ^[A-Za-z0-9_.-]+$ && $NAME != . && $NAME != .. ]] || die "invalid runtime name: '$NAME'"
[[ -n $DEST ]] || die "DEST must not be empty"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNTIME_DIR="$ROOT/docker/$NAME"
REQ="$RUNTIME_DIR/requirements.txt"
HOOK="$RUNTIME_DIR/post_install.sh"
[[ -f $REQ ]] || die "no requirements file: $REQ"
command -v uv >/dev/null 2>&1 || die "uv is not on PATH"

mkdir -p "$(dirname "$DEST")"
DEST="$(cd "$(dirname "$DEST")" && pwd)/$(basename "$DEST")"
STAMP="$DEST/.runtime-env.stamp"
PY="$DEST/bin/python"

# Passing mirrors through; values are never printed (they may hold credentials).
if [[ -n ${PIP_FIND_LINKS:-} ]]; then
    UV_FIND_LINKS=$(echo "$PIP_FIND_LINKS" | xargs | tr ' ' ',')  # pip: space-, uv: comma-separated
    export UV_FIND_LINKS
    log "using PIP_FIND_LINKS as UV_FIND_LINKS"
fi
if [[ -n ${PIP_INDEX_URL:-} ]]; then
    export UV_INDEX_URL="$PIP_INDEX_URL"
    log "using PIP_INDEX_URL as UV_INDEX_URL"
fi

# Compile every installed module to bytecode now, once: uv does not by default, and where
# PYTHONDONTWRITEBYTECODE is set (CI machines, many containers) no process ever writes a .pyc,
# so each one (every Airflow task, model server, horovod rank) would compile Airflow, MLflow,
# Great Expectations... from source again: importing great_expectations took 16 s instead of 4.
export UV_COMPILE_BYTECODE=1

want_stamp() {
    (
        cd "$ROOT"
        echo "bytecode: compiled at install"
        sha256sum "docker/$NAME/requirements.txt"
        if [[ -f $HOOK ]]; then sha256sum "docker/$NAME/post_install.sh"; fi
    )
}
want=$(want_stamp)

if [[ -f $STAMP && -x $PY ]] && [[ "$(cat "$STAMP")" == "$want" ]] \
        && "$PY" -c 'import sys; sys.exit(0)' 2>/dev/null; then
    log "$NAME runtime at $DEST is up to date"
    exit 0
fi

start=$SECONDS
if [[ -e $DEST ]]; then
    log "recreating $NAME runtime at $DEST (requirements changed or previous run incomplete)"
else
    log "creating $NAME runtime at $DEST"
fi
# --clear refuses to delete a directory that is not a virtual environment.
uv venv --quiet --clear --python "${MLOPS_RUNTIME_PYTHON:-3.11}" --prompt "mlops-$NAME" "$DEST"
log "installing $REQ"
uv pip install --python "$PY" --requirement "$REQ"
log "installed requirements in $((SECONDS - start))s"

if [[ -f $HOOK ]]; then
    log "running docker/$NAME/post_install.sh"
    bash "$HOOK" "$DEST"
fi

echo "$want" > "$STAMP"
log "$NAME runtime ready at $DEST in $((SECONDS - start))s ($("$PY" -c 'import sys; print(sys.version.split()[0])'))"
