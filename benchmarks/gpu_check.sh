#!/usr/bin/env bash
# One prepared check for a GPU machine without a package registry (designed to finish within 8 minutes on
# one H200): installs the project's wheel and any wheels in DIR offline, prints the environment, runs
# `pytest -m gpu` and benchmarks/gpu_bench.py, and writes OUT_DIR/summary.json and OUT_DIR/summary.md.
#
#   benchmarks/gpu_check.sh OUT_DIR [--wheels DIR] [--dry-run]
#
# Prepare on a machine with a registry, then copy the checkout (with dist/ and DIR) to the GPU machine:
#   python -m pip wheel --no-deps -w dist .                 # the project's wheel (dist/nemocompress-*.whl)
#   MAMBA_SKIP_CUDA_BUILD=TRUE CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE \
#     python -m pip wheel mamba-ssm causal-conv1d --no-deps --no-build-isolation -w wheels/   # optional
#   python -m pip download einops --no-deps -d wheels/      # mamba-ssm imports it
# The project's wheel is looked for in DIR, then in dist/; without one the checkout itself is put on
# PYTHONPATH. Wheels are installed with `pip install --no-index --no-deps`: nothing comes from a registry,
# and the image's torch, transformers and accelerate stay as they are.
#
# mamba-ssm's Mamba-2 chunk scan, state update and gated norm are Triton kernels, so a wheel built with
# MAMBA_SKIP_CUDA_BUILD=TRUE (no nvcc needed) still carries them; transformers picks them up when
# `import mamba_ssm` succeeds, else it runs its PyTorch path (the script says which, in one line).
# causal-conv1d is CUDA C++ only: its CUDA-less wheel has no kernels and transformers falls back to
# torch's conv1d for it.
#
# --dry-run: the same wiring on the CPU in seconds (what the default test suite runs): installs nothing,
# runs the gpu tests with no device visible (each is imported and skips with its reason), and the
# benchmarks at toy sizes on the CPU.
set -uo pipefail

usage() { echo "usage: $0 OUT_DIR [--wheels DIR] [--dry-run]" >&2; exit 2; }
[ $# -ge 1 ] || usage
OUT=$1; shift
WHEELS=""; DRY=0
while [ $# -gt 0 ]; do
    case "$1" in
        --wheels) [ $# -ge 2 ] || usage; WHEELS=$2; shift 2 ;;
        --dry-run) DRY=1; shift ;;
        *) usage ;;
    esac
done
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$ROOT"
if [ -n "$WHEELS" ] && [ ! -d "$WHEELS" ]; then echo "gpu_check: --wheels $WHEELS is not a folder" >&2; exit 2; fi

# ------------------------------------------------------------------ 1. install (offline, no dependencies)
project_wheel=$(ls ${WHEELS:+"$WHEELS"/nemocompress-*.whl} dist/nemocompress-*.whl 2>/dev/null | head -n 1)
others=()
if [ -n "$WHEELS" ]; then
    for w in "$WHEELS"/*.whl; do [ -e "$w" ] && [[ "$(basename "$w")" != nemocompress-* ]] && others+=("$w"); done
fi
to_install=(${project_wheel:+"$project_wheel"} "${others[@]}")
if [ ${#to_install[@]} -gt 0 ]; then
    if [ $DRY -eq 1 ]; then
        echo "dry run: would run pip install --no-index --no-deps ${to_install[*]}"
    else
        "$PY" -m pip install --quiet --no-index --no-deps "${to_install[@]}" || { echo "gpu_check: offline install failed" >&2; exit 1; }
    fi
fi
if [ -z "$project_wheel" ] || [ $DRY -eq 1 ]; then
    echo "nemocompress: from the checkout $ROOT (PYTHONPATH)"
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
fi

# ------------------------------------------------------------------ 2. the environment
"$PY" - <<'EOF'
import importlib, importlib.metadata as md, torch
def v(d):
    try: return md.version(d)
    except md.PackageNotFoundError: return "absent"
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
print(f"GPU: {gpu} | torch {torch.__version__} (CUDA {torch.version.cuda}) | transformers {v('transformers')} | "
      f"accelerate {v('accelerate')} | triton {v('triton')} | nemocompress {v('nemocompress')}")
try:
    importlib.import_module("mamba_ssm")
    print(f"mamba-ssm {v('mamba-ssm')}: kernels importable, transformers uses them for Mamba-2 layers on CUDA")
except Exception as e:
    print(f"mamba-ssm kernels absent ({type(e).__name__}: {str(e)[:80]}): transformers' PyTorch path is used")
missing = [r.split(">")[0].split("=")[0].strip() for r in (md.requires("nemocompress") or []) if "extra ==" not in r]
missing = [m for m in missing if v(m) == "absent"]
if missing:
    print(f"warning: not installed here: {', '.join(missing)} (add their wheels to --wheels DIR if a step needs them)")
EOF

# ------------------------------------------------------------------ 3. pytest -m gpu, 4. benchmarks, 5. summary
status=0
if [ $DRY -eq 1 ]; then
    # no device visible: every gpu test is collected, imported and skipped with its reason
    CUDA_VISIBLE_DEVICES="" NEMOCOMPRESS_TEST_DEVICE=cuda "$PY" -m pytest -p no:cacheprovider -q -rs -m gpu \
        tests/gpu --junitxml="$OUT/pytest.xml" > "$OUT/pytest.log" 2>&1 || status=1
    tail -n 1 "$OUT/pytest.log"
    "$PY" benchmarks/gpu_bench.py --device cpu --toy --out "$OUT" || status=1
else
    timeout 270 "$PY" -m pytest -p no:cacheprovider -q -rs -m gpu tests/gpu --junitxml="$OUT/pytest.xml" \
        2>&1 | tee "$OUT/pytest.log" | tail -n 30
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
    timeout 170 "$PY" benchmarks/gpu_bench.py --device cuda --out "$OUT" 2>&1 | tee "$OUT/bench.log" | grep -v '^Loading\|^Writing'
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
    "$PY" benchmarks/gpu_bench.py --summarize-only --out "$OUT" || status=1
fi
echo "gpu_check: summary in $OUT/summary.md (exit $status)"
exit $status
