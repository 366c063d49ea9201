#!/usr/bin/env bash
# Training bench on a lent GPU machine (no network; system python3 with CUDA torch, no mlflow or
# horovod). Run there from the repo root, after bench/gpu/prepare.sh made .gpu/ here:
#
#   bash bench/gpu/run.sh            # carry .gpu; results in $OUT (default /tmp/gpuout)
#
# 1. installs .gpu/whl (mlflow-skinny and what it needs) into $SITE with pip --target --no-index
#    (and .gpu/whl-fallback over the machine's own packages only if mlflow does not import);
# 2. prints the GPU, torch/CUDA, nvcc, gcc, cmake and NCCL versions ($OUT/env.txt);
# 3. builds horovod 0.28.1 from .gpu/sdist with docker/training/build_horovod.sh: NCCL GPU
#    collectives, kernels for this GPU's arch only (HOROVOD_BUILD_CUDA_CC_LIST from nvidia-smi,
#    90 for an H100; horovod's default is every arch `nvcc --help` lists: 12 with CUDA 13.0, each
#    kernel file compiled 12 times), Gloo, no MPI/TF/MXNet, time-boxed ($HVD_BUILD_TIMEOUT s),
#    log in $OUT/build.log; installs the wheel into $SITE;
# 4. runs bench/train.py: plain PyTorch on the GPU, Horovod np=1 on the GPU (when it built and
#    imports; np=2 only with 2+ GPUs) and plain PyTorch on the CPU (--compare-cpu) as the
#    same-machine reference, alternating, $REPEAT times each -> $OUT/train_gpu.json, train_gpu.log.
#    Without horovod it still runs plain GPU vs plain CPU.
#
# Threads: every mode gets $THREADS (4) torch/OpenMP threads per process (bench/train.py --threads,
# the same in every mode so modes compare). On the GPU they only feed the batches; for the CPU
# baseline 4 threads of a 16-core machine is a fair figure for a 32-unit MLP on batches of 256
# (more threads barely help a model this small) without a one-thread handicap.
# Epochs: $EPOCHS (10), not the CPU default 3: the first epoch carries CUDA's one-time start-up
# (context, cuBLAS handles, kernels), and the timed loop must be long enough to dwarf it.
#
# Env: OUT, SITE (/tmp/site), PYTHON (python3), HVD_GPU (auto|1|0: train on the GPU; auto = when
# nvidia-smi lists one; 0 = --device cpu, np=2 too: to test this script without a GPU),
# HVD_BUILD (auto|nccl|cpu: horovod's collectives; auto = nccl when a CUDA toolkit (nvcc with
# cuda_runtime.h beside it) and the NCCL headers are found, which compiles the GPU build even
# without a GPU), HVD_BUILD_TIMEOUT (330), BUDGET (530: seconds for the whole script), REPEAT (3),
# THREADS (4), EPOCHS (10).
set -uo pipefail

cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpuout}
SITE=${SITE:-/tmp/site}
PYTHON=${PYTHON:-python3}
HVD_GPU=${HVD_GPU:-auto}
HVD_BUILD=${HVD_BUILD:-auto}
HVD_BUILD_TIMEOUT=${HVD_BUILD_TIMEOUT:-330}
BUDGET=${BUDGET:-530}
REPEAT=${REPEAT:-3}
THREADS=${THREADS:-4}
EPOCHS=${EPOCHS:-10}
mkdir -p "$OUT"
exec > >(tee "$OUT/run.log") 2>&1
log() { echo "[run.sh +$SECONDS s] $*"; }
left() { echo $((BUDGET - SECONDS)); }

[[ -d .gpu/whl && -d .gpu/sdist && -f .gpu/inputs/train.parquet ]] \
    || { log "ERROR: .gpu/ is incomplete: run bash bench/gpu/prepare.sh first, carry .gpu"; exit 2; }
PY=$(command -v "$PYTHON") || { log "ERROR: no $PYTHON"; exit 2; }

if [[ $HVD_GPU == auto ]]; then
    if nvidia-smi -L >/dev/null 2>&1; then HVD_GPU=1; else HVD_GPU=0; fi
fi
DEVICE=cpu
if [[ $HVD_GPU == 1 ]]; then DEVICE=cuda; fi
log "python $PY, HVD_GPU=$HVD_GPU (--device $DEVICE), HVD_BUILD=$HVD_BUILD, OUT=$OUT, SITE=$SITE, budget ${BUDGET}s"

# --- 1. wheels ----------------------------------------------------------------------------------
rm -rf "$SITE"
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .gpu/whl/*.whl \
    || { log "ERROR: installing .gpu/whl failed"; exit 3; }
export PYTHONPATH=$SITE
export PATH="$SITE/bin:$PATH"
MLFLOW_OK=1
if ! "$PY" -c 'import mlflow, mlflow.pytorch; print("mlflow", mlflow.__version__)'; then
    log "mlflow does not import with the machine's packages: adding .gpu/whl-fallback over them"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" --upgrade \
        .gpu/whl-fallback/*.whl .gpu/whl/*.whl
    "$PY" -c 'import mlflow, mlflow.pytorch; print("mlflow", mlflow.__version__)' || MLFLOW_OK=0
fi
log "wheels installed (mlflow importable: $MLFLOW_OK)"

# --- 2. what this machine is ----------------------------------------------------------------------
# nvcc of a whole toolkit: cuda_runtime.h and libcudart beside it (a wrapper script such as
# /usr/local/bin/nvcc would make CMake look for the toolkit in /usr/local)
NVCC=""
for c in "${CUDA_HOME:-/nonexistent}/bin/nvcc" /usr/local/cuda/bin/nvcc /usr/local/cuda-*/bin/nvcc \
    "$(command -v nvcc || true)" \
    "$("$PY" -c 'import nvidia, os; print(os.path.dirname(list(nvidia.__path__)[0]))' 2>/dev/null)/nvidia/cu13/bin/nvcc"; do
    for n in "$c" "$(readlink -f "$c" 2>/dev/null)"; do
        if [[ -n $n && -x $n && -f $(dirname "$(dirname "$n")")/include/cuda_runtime.h ]]; then NVCC=$n; break 2; fi
    done
done
NCCL_DIR=$("$PY" -c 'import importlib.util as u; print(list(u.find_spec("nvidia.nccl").submodule_search_locations)[0])' 2>/dev/null || true)
# horovod's extension needs libnccl.so.2 (torch loads the same one first; this makes sure)
if [[ -n $NCCL_DIR ]]; then export LD_LIBRARY_PATH="$NCCL_DIR/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; fi
{
    echo "== nvidia-smi"; nvidia-smi 2>&1 || echo "(no nvidia-smi)"
    echo "== torch"
    "$PY" -c 'import sys, torch; print("python", sys.version.split()[0]); print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(), "gpus", torch.cuda.device_count()); print("gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-"); print("nccl (torch)", torch.cuda.nccl.version() if torch.cuda.is_available() else "-")' 2>&1
    echo "== nvcc ($NVCC)"; [[ -n $NVCC ]] && "$NVCC" --version | tail -n 2
    echo "== gcc"; gcc --version 2>&1 | head -n 1
    echo "== cmake"; "$(dirname "$PY")/cmake" --version 2>/dev/null | head -n 1 || cmake --version | head -n 1
    echo "== nccl dir: $NCCL_DIR"; ls "$NCCL_DIR/lib" "$NCCL_DIR/include" 2>&1 | tr '\n' ' '; echo
    echo "== packages"; "$PY" -m pip list 2>/dev/null | grep -i -E '^(torch|numpy|pandas|pyarrow|protobuf|typing.extensions|setuptools|cmake|packaging|click|anyio|requests) '
    echo "== cpus: $(nproc), load: $(cut -d' ' -f1-3 /proc/loadavg)"
} 2>&1 | tee "$OUT/env.txt"

# --- 3. horovod ---------------------------------------------------------------------------------------
HVD_OK=0
build_env=(HOROVOD_SDIST="$PWD/$(ls .gpu/sdist/horovod-0.28.1.tar.gz)" HOROVOD_BUILD_JOBS="$(nproc)" MAKEFLAGS="-j$(nproc)"
    HOROVOD_WITH_PYTORCH=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1
    HOROVOD_WITH_GLOO=1)
if [[ $HVD_BUILD == auto ]]; then
    HVD_BUILD=nccl
    if [[ -z $NVCC ]]; then log "no CUDA toolkit (nvcc + cuda_runtime.h) found: no GPU horovod build"; HVD_BUILD=cpu; fi
    if [[ ! -f ${NCCL_DIR:-/nonexistent}/include/nccl.h ]]; then log "no NCCL headers (nvidia.nccl): no GPU horovod build"; HVD_BUILD=cpu; fi
fi
if [[ $HVD_BUILD == nccl ]]; then
    cuda_home=$(dirname "$(dirname "$NVCC")")
    # the pip package ships libnccl.so.2 only: the linker needs a libnccl.so beside it
    nccl_lib=$NCCL_DIR/lib
    if [[ ! -e $nccl_lib/libnccl.so ]]; then
        nccl_lib=$(mktemp -d /tmp/nccl-lib.XXXXXX)
        ln -s "$NCCL_DIR/lib/libnccl.so.2" "$nccl_lib/libnccl.so"
    fi
    cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' .')
    [[ $cc =~ ^[0-9]+$ ]] || cc=90
    build_env+=(HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_CUDA_HOME="$cuda_home" CUDA_HOME="$cuda_home"
        PATH="$cuda_home/bin:$PATH" HOROVOD_BUILD_CUDA_CC_LIST="$cc"
        HOROVOD_NCCL_HOME="$NCCL_DIR" HOROVOD_NCCL_INCLUDE="$NCCL_DIR/include" HOROVOD_NCCL_LIB="$nccl_lib"
        HOROVOD_NCCL_LINK=SHARED HOROVOD_WITHOUT_NVTX=1)
    log "building horovod with NCCL (nvcc $NVCC, sm_$cc, NCCL $NCCL_DIR), timeout ${HVD_BUILD_TIMEOUT}s"
else
    log "building horovod for the CPU (Gloo), timeout ${HVD_BUILD_TIMEOUT}s"
fi
rm -rf /tmp/hvd-wheel
env "${build_env[@]}" timeout -k 10 "$HVD_BUILD_TIMEOUT" \
    bash docker/training/build_horovod.sh "$PY" /tmp/hvd-wheel > "$OUT/build.log" 2>&1
build_rc=$?
grep -E '^\[build_horovod\]|CMake Error|error:|FATAL|No such file|undefined reference' "$OUT/build.log" | head -n 40
if [[ $build_rc -ne 0 ]]; then
    log "horovod build FAILED (rc=$build_rc$([[ $build_rc == 124 ]] && echo ', timed out')); last lines of build.log:"
    tail -n 25 "$OUT/build.log"
elif "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" --upgrade \
    /tmp/hvd-wheel/horovod-*.whl \
    && "$PY" -c 'import horovod, horovod.torch as hvd; print("horovod", horovod.__version__, "nccl", hvd.nccl_built(), "cuda", hvd.cuda_built(), "gloo", hvd.gloo_built())'; then
    HVD_OK=1
    if [[ $DEVICE == cuda ]] && ! "$PY" -c 'import sys, horovod.torch as hvd; sys.exit(not hvd.cuda_built())'; then
        log "horovod built but without CUDA support: Horovod modes skipped"; HVD_OK=0
    fi
else
    log "horovod built but does not install/import"
fi
log "horovod usable: $HVD_OK"

# --- 4. bench ------------------------------------------------------------------------------------------
modes=plain
if [[ $HVD_OK == 1 && $MLFLOW_OK == 1 ]]; then
    modes=plain,horovod_np1
    gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
    if [[ $DEVICE == cpu || ${gpus:-0} -ge 2 ]]; then modes=$modes,horovod_np2; fi
fi
bench() {  # MODES
    local t
    t=$(( $(left) - 5 ))
    if (( t < 30 )); then log "no time left for the bench ($t s)"; return 1; fi
    log "bench: --modes $1 --device $DEVICE --compare-cpu --repeat $REPEAT --threads $THREADS --epochs $EPOCHS (timeout ${t}s)"
    rm -rf /tmp/mlruns
    timeout -k 5 "$t" "$PY" bench/train.py --python "$PY" --pythonpath "$SITE" --inputs .gpu/inputs \
        --tracking-uri file:///tmp/mlruns --device "$DEVICE" --compare-cpu --modes "$1" \
        --repeat "$REPEAT" --threads "$THREADS" --epochs "$EPOCHS" --run-timeout 150 --keep-going \
        --json "$OUT/train_gpu.json" 2>&1 | tee "$OUT/train_gpu.log"
    return "${PIPESTATUS[0]}"
}
bench "$modes"
rc=$?
if [[ $rc -ne 0 && $modes != plain ]]; then
    log "bench with $modes failed (rc=$rc): plain modes only"
    mv "$OUT/train_gpu.log" "$OUT/train_gpu_failed.log" 2>/dev/null
    bench plain
    rc=$?
fi
log "done (rc=$rc, ${SECONDS}s); files: $(ls "$OUT" | tr '\n' ' ')"
exec >/dev/null 2>&1
wait  # for tee to finish run.log
exit "$rc"
