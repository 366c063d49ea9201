#!/usr/bin/env bash
# Build a horovod 0.28.1 wheel against the torch installed in a given Python env.
#
#   build_horovod.sh PYTHON WHEEL_DIR
#   build_horovod.sh --cache-key PYTHON     print the wheel cache folder name (py311-torch2.13.0)
#
# PYTHON     python executable of an env that already has torch and the build
#            deps (cmake, setuptools, wheel, packaging, pyyaml, cffi) installed,
#            e.g. the training runtime venv (docker/training/requirements.txt).
# WHEEL_DIR  directory the wheel is written into (created if missing).
#            No-op when a horovod-0.28.1-*.whl is already there.
#
# horovod 0.28.1 (last release, sdist only) sets C++14, but torch >= 2.1
# headers need C++17: the sdist is patched to CMAKE_CXX_STANDARD 17 (top-level
# CMakeLists.txt and horovod/torch/CMakeLists.txt) before building. Its bundled
# gloo declares cmake_minimum_required(2.8.12), which CMake >= 4 rejects, hence
# CMAKE_POLICY_VERSION_MINIMUM=3.5.
#
# Builds CPU collectives via Gloo, no MPI/TensorFlow/MXNet. For a GPU build
# export HOROVOD_GPU_OPERATIONS=NCCL (needs CUDA + NCCL dev files) beforehand
# (and HOROVOD_BUILD_CUDA_CC_LIST, HOROVOD_NCCL_*: see bench/gpu/run.sh). A GPU
# build also opens the driver library as libcuda.so.1 (what every driver
# install has) instead of the unversioned libcuda.so of CUDA dev packages.
# Python >= 3.12 has no distutils: the two places that import it (python
# include dir in horovod/torch/CMakeLists.txt, find_executable in
# horovod/runner/js_run.py) are switched to sysconfig / shutil.which there.
#
# Tools: uses "$PYTHON -m pip" (download + wheel) when that env has pip;
# otherwise uv ("uv tool run pip download" + "uv build --no-build-isolation").
# Optional env: HOROVOD_BUILD_JOBS (default: nproc), HOROVOD_BUILDER=pip|uv,
# HOROVOD_SDIST=path/to/horovod-0.28.1.tar.gz (use that sdist, no download:
# for machines without network).
set -euo pipefail

HOROVOD_VERSION=0.28.1

log() { echo "[build_horovod] $*"; }
die() { echo "[build_horovod] ERROR: $*" >&2; exit 1; }

# --cache-key PYTHON: the name of the wheel cache folder for PYTHON's interpreter and torch
# (post_install.sh and the training image look for a built wheel under it)
if [[ ${1:-} == --cache-key ]]; then
    [[ $# -eq 2 ]] || die "usage: $0 --cache-key PYTHON"
    exec "$2" -c 'import sys, torch; print("py%d%d-torch%s" % (sys.version_info[0], sys.version_info[1], torch.__version__.split("+")[0]))'
fi

[[ $# -eq 2 ]] || die "usage: $0 PYTHON WHEEL_DIR"
PYTHON=$1
WHEEL_DIR=$2

# Absolute path to PYTHON without resolving symlinks (a venv's python is a
# symlink to the base interpreter; resolving it would leave the venv).
if [[ $PYTHON != */* ]]; then
    PYTHON=$(command -v "$PYTHON") || die "python not found: $1"
fi
[[ -f $PYTHON && -x $PYTHON ]] || die "not an executable file: $PYTHON"
PYTHON="$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")"
mkdir -p "$WHEEL_DIR"
WHEEL_DIR=$(cd "$WHEEL_DIR" && pwd)

shopt -s nullglob
existing=("$WHEEL_DIR"/horovod-"$HOROVOD_VERSION"-*.whl)
shopt -u nullglob
if [[ ${#existing[@]} -gt 0 ]]; then
    log "up to date: ${existing[0]} (nothing to build)"
    exit 0
fi

torch_version=$("$PYTHON" -c 'import torch; print(torch.__version__)') \
    || die "torch is not importable with $PYTHON"
"$PYTHON" -c 'import setuptools, wheel, packaging, yaml, cffi' \
    || die "build deps missing in $PYTHON env (need setuptools wheel packaging pyyaml cffi)"
log "python: $PYTHON ($("$PYTHON" -c 'import sys; print(sys.version.split()[0])')), torch $torch_version"

builder=${HOROVOD_BUILDER:-}
if [[ -z $builder ]]; then
    if "$PYTHON" -m pip --version >/dev/null 2>&1; then builder=pip
    elif command -v uv >/dev/null 2>&1; then builder=uv
    else die "$PYTHON has no pip and uv is not on PATH"
    fi
fi
[[ $builder == pip || $builder == uv ]] || die "HOROVOD_BUILDER must be pip or uv, got '$builder'"
log "builder: $builder"

work=$(mktemp -d "${TMPDIR:-/tmp}/build_horovod.XXXXXX")
trap 'rm -rf "$work"' EXIT

# --- download the sdist (or take HOROVOD_SDIST) ---------------------------------
if [[ -n ${HOROVOD_SDIST:-} ]]; then
    [[ -f $HOROVOD_SDIST ]] || die "HOROVOD_SDIST is not a file: $HOROVOD_SDIST"
    sdist=$HOROVOD_SDIST
    log "using sdist $sdist (HOROVOD_SDIST, no download)"
else
    log "downloading horovod==$HOROVOD_VERSION sdist"
    dl_args=(download --no-deps --no-binary :all: --dest "$work/sdist" "horovod==$HOROVOD_VERSION")
    if [[ $builder == pip ]]; then
        "$PYTHON" -m pip "${dl_args[@]}"
    else
        uv tool run --quiet --from pip pip "${dl_args[@]}"
    fi
    sdist="$work/sdist/horovod-$HOROVOD_VERSION.tar.gz"
    [[ -f $sdist ]] || die "sdist not found after download: $(ls "$work/sdist")"
fi
tar -xzf "$sdist" -C "$work"
src="$work/horovod-$HOROVOD_VERSION"
[[ -f $src/setup.py ]] || die "unexpected sdist layout in $sdist"

# --- patch C++14 -> C++17 -------------------------------------------------------
for f in CMakeLists.txt horovod/torch/CMakeLists.txt; do
    grep -q 'set(CMAKE_CXX_STANDARD 14)' "$src/$f" \
        || die "patch pattern 'set(CMAKE_CXX_STANDARD 14)' not found in $f"
    sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/g' "$src/$f"
    grep -q 'set(CMAKE_CXX_STANDARD 17)' "$src/$f" || die "patch failed for $f"
    if grep -q 'CMAKE_CXX_STANDARD 14' "$src/$f"; then die "C++14 still set in $f"; fi
    log "patched $f: CMAKE_CXX_STANDARD 14 -> 17"
done

# patch once: fail loudly if a pattern is missing (another sdist), never patch blindly
patch_once() {  # FILE FROM TO
    grep -qF "$2" "$src/$1" || die "patch pattern '$2' not found in $1"
    python_replace "$src/$1" "$2" "$3"
    if grep -qF "$2" "$src/$1"; then die "patch failed for $1"; fi
    log "patched $1: $2 -> $3"
}
python_replace() {
    "$PYTHON" - "$@" <<'EOF'
import sys
path, old, new = sys.argv[1:]
text = open(path).read()
open(path, "w").write(text.replace(old, new))
EOF
}

# --- Python >= 3.12: no distutils -------------------------------------------------
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info >= (3, 12))'; then
    patch_once horovod/torch/CMakeLists.txt \
        'from distutils.sysconfig import get_python_inc; print(get_python_inc())' \
        "import sysconfig; print(sysconfig.get_paths()['include'])"
    patch_once horovod/runner/js_run.py \
        'from distutils.spawn import find_executable' \
        'from shutil import which as find_executable'
fi

# --- GPU build: the driver library by its soname ------------------------------------
if [[ -n ${HOROVOD_GPU_OPERATIONS:-} ]]; then
    patch_once horovod/torch/cuda_util.cc \
        'dlopen("libcuda.so", RTLD_LAZY)' 'dlopen("libcuda.so.1", RTLD_LAZY)'
fi

# --- build ------------------------------------------------------------------------
jobs=${HOROVOD_BUILD_JOBS:-$(nproc)}
bindir=$(dirname "$PYTHON")
export PATH="$bindir:$PATH"
export MAKEFLAGS="-j$jobs"            # setup.py defaults to -j8 when MAKEFLAGS is unset
export CMAKE_BUILD_PARALLEL_LEVEL="$jobs"
export CMAKE_POLICY_VERSION_MINIMUM=3.5
if [[ -x $bindir/cmake ]]; then export HOROVOD_CMAKE="$bindir/cmake"; fi
export HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1
export HOROVOD_WITHOUT_MPI=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1
for v in HOROVOD_GPU_OPERATIONS HOROVOD_GPU; do
    if [[ -z ${!v:-} ]]; then unset "$v"; fi
done
log "building wheel (jobs=$jobs, cmake=$("${HOROVOD_CMAKE:-cmake}" --version | head -n1), gpu_ops=${HOROVOD_GPU_OPERATIONS:-none}); this takes several minutes"
start=$SECONDS
mkdir -p "$work/dist"
if [[ $builder == pip ]]; then
    "$PYTHON" -m pip wheel --no-build-isolation --no-deps --wheel-dir "$work/dist" "$src"
else
    uv build --no-build-isolation --wheel --python "$PYTHON" --out-dir "$work/dist" "$src"
fi
built=("$work"/dist/horovod-"$HOROVOD_VERSION"-*.whl)
[[ -f ${built[0]} ]] || die "no wheel produced in $work/dist"
"$PYTHON" - "${built[0]}" <<'EOF' || die "wheel lacks the torch extension (horovod/torch/mpi_lib_v2*.so)"
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
sys.exit(0 if any(n.startswith("horovod/torch/mpi_lib_v2") and n.endswith(".so") for n in names) else 1)
EOF
log "built $(basename "${built[0]}") in $((SECONDS - start))s"

# Copy then rename, so WHEEL_DIR never holds a partial wheel.
cp "${built[0]}" "$WHEEL_DIR/.$(basename "${built[0]}").partial"
mv "$WHEEL_DIR/.$(basename "${built[0]}").partial" "$WHEEL_DIR/$(basename "${built[0]}")"
log "wrote $WHEEL_DIR/$(basename "${built[0]}")"
