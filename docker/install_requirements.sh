#!/bin/sh
# Install a requirements file into the image's venv ($VIRTUAL_ENV) during `docker build`.
# With uv mounted at /opt/build/uv (make images: scripts/images.sh) it installs with uv from the
# mounted cache; otherwise with pip. PIP_FIND_LINKS (space-separated folders, mounted at the same
# paths) and TORCH_INDEX_URL (an extra index; "" for none) are build arguments.
set -eu
req=$1
if [ -x /opt/build/uv ]; then
    links=""
    for dir in ${PIP_FIND_LINKS:-}; do links="$links --find-links $dir"; done
    # --compile-bytecode: uv does not write .pyc by default (pip does); without them every
    # container start compiles what it imports again (~4 s of alibi-detect's imports) and cannot
    # keep the result (PYTHONDONTWRITEBYTECODE, a read-only venv for the runtime user)
    # shellcheck disable=SC2086
    UV_CACHE_DIR=/opt/build/uv-cache UV_LINK_MODE=copy \
        /opt/build/uv pip install --compile-bytecode --python "$VIRTUAL_ENV/bin/python" $links -r "$req"
else
    extra=""
    if [ -n "${TORCH_INDEX_URL:-}" ]; then extra="--extra-index-url $TORCH_INDEX_URL"; fi
    # shellcheck disable=SC2086
    "$VIRTUAL_ENV/bin/pip" install $extra -r "$req"
fi
