#!/usr/bin/env bash
# One device call on a lent GPU machine: the CUDA backend's compile report and CPU comparisons,
# then `speedrun bench` and scripts/torch_reference.py back to back on identical shapes, and a
# markdown summary of both. Run from the repository root with the prebuilt binary carried:
#
#     bash scripts/gpu_session.sh            (device call: carry ["target/release/speedrun"])
#
# Everything it writes goes to $OUT (default ./gpu-out) and stays within the device tool's
# limit of 8 files back: summary.md, check.txt, session.log, speedrun-d12.json,
# torch-d12.json, all.tar.gz (every JSON and per-stage log), and ncu.txt with NCU=1.
#
# Settings (environment variables; the defaults fit in about 9 minutes on one H100):
#   MODELS="d12 d24 d36"   sizes to bench, in order, each only while time remains
#   ARCH=speedrun          architecture of both benches
#   OPTIMIZER=muon         optimizer of the hidden matrices in both (adamw or muon)
#   BATCH=16               sequences per micro-batch (ACCUM = TOKENS / (BATCH · SEQ_LEN))
#   SEQ_LEN=1024  TOKENS=524288
#   STEPS=5  WARMUP=2      timed and untimed steps of each bench
#   BUDGET=540             seconds for the whole script; a stage starts only if enough is left
#   CHECK=1  KERNELS=1     run `speedrun check --device cuda` / `speedrun kernels` (0: skip)
#   NCU=0                  1: profile a short speedrun bench with ncu into ncu.txt
#   TORCH_FLAGS=""         extra flags for torch_reference.py (e.g. --no-compile)
#   SPEEDRUN=target/release/speedrun  PYTHON=python3
#   DEVICE=cuda            cpu only to try the script without a GPU (MODELS=tiny)
set -uo pipefail

START=$SECONDS
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/gpu-session.XXXXXX)
LOG=$OUT/session.log
SPEEDRUN=${SPEEDRUN:-target/release/speedrun}
MODELS=${MODELS:-d12 d24 d36}
ARCH=${ARCH:-speedrun}
OPTIMIZER=${OPTIMIZER:-muon}
BATCH=${BATCH:-16}
SEQ_LEN=${SEQ_LEN:-1024}
TOKENS=${TOKENS:-524288}
STEPS=${STEPS:-5}
WARMUP=${WARMUP:-2}
BUDGET=${BUDGET:-540}
CHECK=${CHECK:-1}
KERNELS=${KERNELS:-1}
NCU=${NCU:-0}
TORCH_FLAGS=${TORCH_FLAGS:-}
# The kernel cache stays on the machine: it is no result.
export SPEEDRUN_KERNEL_CACHE=${SPEEDRUN_KERNEL_CACHE:-/tmp/speedrun-kernel-cache}
PYTHON=${PYTHON:-python3}
# cpu only to try the script on a machine without a GPU (with MODELS=tiny).
DEVICE=${DEVICE:-cuda}

exec > >(tee -a "$LOG") 2>&1
TEE_PID=$!

log() { printf '\n=== [%4ds] %s\n' "$((SECONDS - START))" "$*"; }
left() { echo $((BUDGET - (SECONDS - START))); }
declare -A STATUS=()
ORDER=()
# stage NAME SECONDS COMMAND…: runs COMMAND under a timeout of at most SECONDS (less if the
# budget has less left), its output into the log and $WORK/NAME.log; records its exit status.
stage() {
    local name=$1 limit=$2
    shift 2
    local remaining
    remaining=$(left)
    if ((remaining < 20)); then
        log "$name: skipped, ${remaining}s of the budget left"
        STATUS[$name]=skipped
        ORDER+=("$name")
        return 0
    fi
    ((limit > remaining)) && limit=$remaining
    log "$name (timeout ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$WORK/$name.log"
    local rc=${PIPESTATUS[0]}
    case $rc in
        0) STATUS[$name]=ok ;;
        124 | 137) STATUS[$name]="timed out after ${limit}s" ;;
        *) STATUS[$name]="failed (exit $rc)" ;;
    esac
    ORDER+=("$name")
    log "$name: ${STATUS[$name]}"
    return "$rc"
}

# The CUDA libraries speedrun loads at run time (NVRTC 13, cuBLASLt 13, cuSOLVER, NCCL): the
# toolkit's, else the pip wheels' next to PyTorch. Only speedrun's commands get them, not python's.
cuda_lib_dirs() {
    local dirs=()
    for d in "${CUDA_HOME:-/usr/local/cuda}/lib64" /usr/local/cuda/lib64; do
        [[ -d $d ]] && dirs+=("$d")
    done
    local wheels
    wheels=$("$PYTHON" - <<'EOF' 2>/dev/null
import glob, os, site
found = []
for sp in site.getsitepackages():
    for d in sorted(glob.glob(os.path.join(sp, "nvidia", "*", "lib"))):
        if any(glob.glob(os.path.join(d, lib)) for lib in ("libnvrtc.so.13*", "libcublasLt.so.13*", "libcusolver.so*", "libnccl.so.2*")):
            found.append(d)
print(":".join(found))
EOF
)
    [[ -n $wheels ]] && dirs+=("$wheels")
    local IFS=:
    echo "${dirs[*]}"
}
SPEEDRUN_LIBS=$(cuda_lib_dirs)
NVRTC_DIR=""
for d in ${SPEEDRUN_LIBS//:/ }; do
    if compgen -G "$d/libnvrtc.so.13*" >/dev/null; then NVRTC_DIR=$d; break; fi
done
# speedrun with those libraries: an array, so that `timeout` can run it (not a function).
SR_ENV=(env "LD_LIBRARY_PATH=$SPEEDRUN_LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    "SPEEDRUN_NVRTC_DIR=${SPEEDRUN_NVRTC_DIR:-$NVRTC_DIR}")
SR=("${SR_ENV[@]}" "$SPEEDRUN")

log "machine"
nvidia-smi || true
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv || true
command -v nvcc >/dev/null && nvcc --version | tail -2
"$PYTHON" -c 'import sys, torch; print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda, "| device", torch.cuda.get_device_name() if torch.cuda.is_available() else None)' || true
echo "speedrun: $SPEEDRUN"
echo "libraries for speedrun: ${SPEEDRUN_LIBS:-none found}; NVRTC from ${NVRTC_DIR:-the default search path}"
echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo '?') $(git status --porcelain 2>/dev/null | wc -l) changed files"
echo "settings: MODELS='$MODELS' ARCH=$ARCH OPTIMIZER=$OPTIMIZER BATCH=$BATCH SEQ_LEN=$SEQ_LEN TOKENS=$TOKENS STEPS=$STEPS WARMUP=$WARMUP BUDGET=$BUDGET NCU=$NCU"
HAVE_SPEEDRUN=1
if [[ ! -x $SPEEDRUN ]]; then
    echo "no executable $SPEEDRUN: carry target/release/speedrun; only the torch side runs"
    HAVE_SPEEDRUN=0
    STATUS[speedrun]="missing: $SPEEDRUN"
    ORDER+=(speedrun)
fi

if ((HAVE_SPEEDRUN)); then
    ((KERNELS)) && stage kernels 90 "${SR[@]}" kernels
    if ((CHECK)); then
        stage check 150 "${SR[@]}" check --device cuda
        [[ -f $WORK/check.log ]] && cp "$WORK/check.log" "$OUT/check.txt"
        echo "speedrun check --device cuda: ${STATUS[check]}" >>"$OUT/check.txt"
    fi
fi

ACCUM=$((TOKENS / (BATCH * SEQ_LEN)))
((ACCUM < 1)) && ACCUM=1
# The speedrun bench's stage limit per model: compile-free, but a slow backend may need long.
declare -A SR_LIMIT=([d12]=120 [d24]=150 [d36]=180 [d48]=240 [tiny]=60)
# torch.compile takes a minute or more on the first step.
declare -A TORCH_LIMIT=([d12]=180 [d24]=200 [d36]=240 [d48]=300 [tiny]=60)
BENCHED=()
for model in $MODELS; do
    need=$(( ${SR_LIMIT[$model]:-180} / 2 + ${TORCH_LIMIT[$model]:-240} / 2 ))
    if (($(left) < need)); then
        log "$model: skipped, $(left)s of the budget left (about ${need}s needed)"
        STATUS["bench-$model"]="skipped (budget)"
        ORDER+=("bench-$model")
        continue
    fi
    flags=(--arch "$ARCH" --model "$model" --batch "$BATCH" --seq-len "$SEQ_LEN"
        --accum "$ACCUM" --steps "$STEPS" --warmup "$WARMUP" --optimizer "$OPTIMIZER")
    if ((HAVE_SPEEDRUN)); then
        stage "speedrun-$model" "${SR_LIMIT[$model]:-180}" \
            "${SR[@]}" bench --device "$DEVICE" "${flags[@]}" --json "$WORK/speedrun-$model.json"
    fi
    # shellcheck disable=SC2086 # TORCH_FLAGS is a list of flags
    stage "torch-$model" "${TORCH_LIMIT[$model]:-240}" \
        "$PYTHON" scripts/torch_reference.py --device "$DEVICE" "${flags[@]}" \
        --json "$WORK/torch-$model.json" $TORCH_FLAGS
    BENCHED+=("$model")
done

if ((NCU)) && ((HAVE_SPEEDRUN)) && command -v ncu >/dev/null; then
    # A kernel-level summary of a short speedrun bench: one micro-batch, one step after one
    # warm-up step; profiling replays each kernel, so keep it small.
    model=${NCU_MODEL:-d12}
    stage ncu 120 "${SR_ENV[@]}" ncu --target-processes all --clock-control none --print-summary per-kernel \
        --section SpeedOfLight --launch-count "${NCU_KERNELS:-400}" \
        "$SPEEDRUN" bench --device cuda --arch "$ARCH" --model "$model" --batch "$BATCH" \
        --seq-len "$SEQ_LEN" --accum 1 --steps 1 --warmup 1 --optimizer "$OPTIMIZER" \
        --gemm-size 0
    [[ -f $WORK/ncu.log ]] && cp "$WORK/ncu.log" "$OUT/ncu.txt"
fi

log "summary"
jsons=()
for model in "${BENCHED[@]}"; do
    for impl in speedrun torch; do
        [[ -f $WORK/$impl-$model.json ]] && jsons+=("$WORK/$impl-$model.json")
    done
done
for f in "$WORK/speedrun-d12.json" "$WORK/torch-d12.json"; do
    [[ -f $f ]] && cp "$f" "$OUT/"
done
{
    echo "# GPU session: speedrun vs PyTorch"
    echo
    echo "$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)," \
        "$ARCH, matrices: $OPTIMIZER, $BATCH × $SEQ_LEN tokens × $ACCUM micro-batches" \
        "= $((BATCH * SEQ_LEN * ACCUM)) tokens per step, median of $STEPS steps after $WARMUP" \
        "warm-up steps. MFU = (6·N + 6·L·C·T)·tokens/s over the peak, N = 12·L·C² + V·C."
    echo
    if ((${#jsons[@]})); then
        "$PYTHON" scripts/torch_reference.py --summarize "${jsons[@]}" \
            || echo "(the summariser failed)"
    else
        echo "(no bench wrote its JSON)"
    fi
    echo
    echo "| stage | status |"
    echo "|---|---|"
    for name in "${ORDER[@]}"; do
        echo "| $name | ${STATUS[$name]} |"
    done
    echo
    echo "Total ${SECONDS}s of a ${BUDGET}s budget; logs and every JSON in all.tar.gz."
} >"$OUT/summary.md"
cat "$OUT/summary.md"

tar -czf "$OUT/all.tar.gz" -C "$WORK" . 2>/dev/null || true
FAILED=0
for name in "${ORDER[@]}"; do
    [[ ${STATUS[$name]} == ok || ${STATUS[$name]} == skipped* ]] || FAILED=1
done
log "done in $((SECONDS - START))s; $( ((FAILED)) && echo 'some stages failed' || echo 'every stage passed')"
# Let tee finish writing the log before the call ends.
exec >/dev/null 2>&1
wait "$TEE_PID" 2>/dev/null
exit "$FAILED"
