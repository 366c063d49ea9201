#!/usr/bin/env bash
# Prepare .gpu/ for the training bench on a lent GPU machine (bench/gpu/run.sh runs it there).
#
#   bash bench/gpu/prepare.sh        # here, from the repo root, after `make setup`
#
# That machine has no network and a system python3 (3.12) with torch (CUDA), numpy, pandas,
# pyarrow, ... but no mlflow, horovod or cffi. .gpu/ (ignored via .git/info/exclude, carried to
# the machine with the working tree) gets:
#   inputs/  train.parquet, holdout.parquet (bench/train.py --write-inputs, 31 days)
#   sdist/   horovod-0.28.1.tar.gz (built there, with NCCL)
#   whl/     cp312 manylinux x86_64 wheels of mlflow-skinny (the version of
#            docker/training/requirements.txt), cffi, pycparser and every dependency of them
#            that the machine lacks (DEVICE_HAS below: its package list), one version each,
#            resolved by pip against the training lock (docker/training/requirements.txt)
#   whl-fallback/  the same resolution's versions of the dependencies the machine does have:
#            run.sh installs them over the machine's own only if `import mlflow.pytorch` fails
#            with whl/ alone (e.g. an older typing-extensions or protobuf there)
#
# Optional env: PYTHON (default python3: the pip used to resolve and download), DAYS (31).
# PIP_INDEX_URL / PIP_FIND_LINKS pass through (pip reads them itself).
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
DAYS=${DAYS:-31}
OUT=.gpu
HOROVOD_VERSION=0.28.1
log() { echo "[prepare] $*"; }
die() { echo "[prepare] ERROR: $*" >&2; exit 1; }

[[ -x .venv/bin/python ]] || die "no control-plane venv (.venv): run make setup first"
MLFLOW_VERSION=$(sed -n 's/^mlflow-skinny==\([^ ]*\)$/\1/p' docker/training/requirements.txt)
[[ -n $MLFLOW_VERSION ]] || die "no mlflow-skinny pin in docker/training/requirements.txt"

# What the GPU machine's python3 already has (pip names, as listed by its owner).
DEVICE_HAS="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage
cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops
equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio
h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio iniconfig
interface-meta jax jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning
lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions
nanobind narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti
nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand
nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13
nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas
pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil
pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest
pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore
threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric
torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect
urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp"

PLATFORM_ARGS=(--only-binary=:all: --python-version 3.12 --implementation cp
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)

mkdir -p "$OUT"
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
touch "$exclude"
grep -qxF '/.gpu/' "$exclude" || { echo '/.gpu/' >> "$exclude"; log "added /.gpu/ to $exclude"; }
git check-ignore -q "$OUT" || die "$OUT is not ignored by git"

# --- inputs -----------------------------------------------------------------------------
log "inputs: bench/train.py --write-inputs $OUT/inputs --days $DAYS"
.venv/bin/python bench/train.py --write-inputs "$OUT/inputs" --days "$DAYS"

# --- horovod sdist ----------------------------------------------------------------------
if [[ ! -f $OUT/sdist/horovod-$HOROVOD_VERSION.tar.gz ]]; then
    log "sdist: horovod==$HOROVOD_VERSION"
    "$PYTHON" -m pip download --quiet --no-deps --no-binary :all: "horovod==$HOROVOD_VERSION" -d "$OUT/sdist"
fi
[[ -f $OUT/sdist/horovod-$HOROVOD_VERSION.tar.gz ]] || die "no horovod sdist in $OUT/sdist"

# --- wheels -----------------------------------------------------------------------------
tmp=$(mktemp -d "${TMPDIR:-/tmp}/prepare_gpu.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
log "resolving mlflow-skinny==$MLFLOW_VERSION cffi pycparser for cp312 manylinux x86_64"
"$PYTHON" -m pip install --quiet --dry-run --ignore-installed --target "$tmp/target" \
    --report "$tmp/report.json" "${PLATFORM_ARGS[@]}" -c docker/training/requirements.txt \
    "mlflow-skinny==$MLFLOW_VERSION" cffi pycparser
DEVICE_HAS=$DEVICE_HAS "$PYTHON" - "$tmp/report.json" "$tmp/need.txt" "$tmp/have.txt" <<'EOF'
import json, os, re, sys

def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()

has = {norm(n) for n in os.environ["DEVICE_HAS"].split()}
pins = sorted((norm(i["metadata"]["name"]), i["metadata"]["version"]) for i in json.load(open(sys.argv[1]))["install"])
need = [f"{n}=={v}" for n, v in pins if n not in has]
have = [f"{n}=={v}" for n, v in pins if n in has]
open(sys.argv[2], "w").write("\n".join(need) + "\n")
open(sys.argv[3], "w").write("\n".join(have) + "\n")
print(f"[prepare] {len(pins)} packages: {len(need)} missing there, {len(have)} there already")
EOF
rm -rf "$OUT/whl" "$OUT/whl-fallback"
log "wheels the machine lacks: $(tr '\n' ' ' < "$tmp/need.txt")"
# shellcheck disable=SC2046
"$PYTHON" -m pip download --quiet --no-deps "${PLATFORM_ARGS[@]}" -d "$OUT/whl" $(cat "$tmp/need.txt")
log "fallback wheels (only if the machine's own versions do not import): $(tr '\n' ' ' < "$tmp/have.txt")"
# shellcheck disable=SC2046
"$PYTHON" -m pip download --quiet --no-deps "${PLATFORM_ARGS[@]}" -d "$OUT/whl-fallback" $(cat "$tmp/have.txt")

# one wheel per package, one per pin
"$PYTHON" - "$OUT/whl" "$tmp/need.txt" "$OUT/whl-fallback" "$tmp/have.txt" <<'EOF'
import collections, os, re, sys

for folder, pins in zip(sys.argv[1::2], sys.argv[2::2]):
    wanted = {re.sub(r"[-_.]+", "-", p.split("==")[0]).lower() for p in open(pins).read().split()}
    names = collections.Counter(
        re.sub(r"[-_.]+", "-", f.split("-")[0]).lower() for f in os.listdir(folder) if f.endswith(".whl")
    )
    dup = [n for n, c in names.items() if c > 1]
    missing = wanted - set(names)
    if dup or missing:
        sys.exit(f"[prepare] ERROR: {folder}: duplicates {dup}, missing {sorted(missing)}")
EOF

log "$(ls "$OUT"/whl/*.whl | wc -l) wheels in $OUT/whl, $(ls "$OUT"/whl-fallback/*.whl | wc -l) in $OUT/whl-fallback"
du -sh "$OUT"/*
du -sh "$OUT"
size_kib=$(du -sk "$OUT" | cut -f1)
(( size_kib < 50 * 1024 )) || die "$OUT is $((size_kib / 1024)) MiB: over the 50 MiB budget"
git status --porcelain --ignored "$OUT" | grep -q '^!!' || die "$OUT is not ignored by git"
log "done: $ROOT/$OUT ($((size_kib / 1024)) MiB); on the GPU machine: bash bench/gpu/run.sh (carry .gpu)"
