#!/usr/bin/env bash
# The one script for a lent GPU machine (DESIGN.md, "When a GPU is lent"): build, GPU tests, full benchmarks.
#
#   bash benchmarks/gpu_suite.sh          # from the repo root; writes to $OUT (default bench-out/gpu)
#
# Steps, in order; each one's exit status is recorded and a failing step does not stop the next:
#   build         nvidia-smi, then MAX_JOBS=16 BIGMODEL_CUDA_ARCHS=<this GPU> pip install --no-build-isolation
#                 --no-deps -e .  (if that fails: again without the CUDA extension, so Triton still runs)
#   wheels        pip install --no-index --no-deps wheels/*.whl, only if wheels/ holds any (the GPU box has no
#                 network): peers for side-by-side rows, e.g. Liger-Kernel (`pip download liger-kernel --no-deps -d
#                 wheels/` where there is network). wheels/ is git-ignored: the device call must carry it
#                 (carry=["wheels"]); without it the liger rows are skipped with their reason
#   tests         python -m pytest -m cuda tests
#   bench         python -m bigmodel bench --out $OUT $BENCH_ARGS   (the GPU suite: the numbers to commit); its
#                 "auto" rows make measured auto time its candidates, in a fresh cache (BIGMODEL_CACHE_DIR under
#                 /tmp), copied to $OUT/autotune-*.json: commit it, then `python benchmarks/seed_table.py` seeds
#                 the dispatch table from it
#   pytest-bench  pytest-benchmark over benchmarks/, quick sizes, the cases matching PYBENCH_K (default
#                 "fwd+bwd and triton": one path per bench_*.py file, ~33 cases; it shows the suites run on a GPU,
#                 the numbers to commit come from bench; its table goes to bench.log)
# Files in $OUT - the device tool brings back at most 8, so exactly these 8:
#   build.log (nvidia-smi + versions + pip -v output + the wheels installed), tests.log, tests.xml (junit), bench.log,
#   <date>-<gpu>.json / .md / .png (commit under benchmarks/results/), autotune-<versions>.json (auto's choices)
# The end of stdout is a short summary: the benchmark table, then each step's status.
#
# Knobs: STEPS (default "build wheels tests bench pytest-bench"), SUITE_S (default 570: the whole script ends inside one
# 600 s device call), BUILD_S / TESTS_S / PYBENCH_S (per-step caps; bench gets the time that is left), PYTHON,
# BENCH_ARGS (more `bigmodel bench` options, e.g. "--ops train_step,linear_act" or "--dtype bf16,fp16"),
# PYBENCH_K (pytest -k for pytest-bench; "" = every case), BIGMODEL_BENCH_FULL=1 (adds attention's flex provider).
#
# What bench runs first: cases go by tier across all ops (benchmarks/cases.py all_cases; each op's tiers are in its
# builder), so a run cut short at --max-seconds still has the headline number of every op; the report sorts rows
# back by op and shape, and lists the cases not reached as "not run". Estimates for an H100, bf16 (not measured
# yet; ~0.3-0.5 s a case, ~1 s for GEMMs):
#   tier 0 (~150 s, 240 cases)  DESIGN.md's headline comparisons, in this order: train_step torch + bigmodel
#          (GPT-2 small, 8 x 1024 tokens, tokens/s), linear_act fwd+bwd torch / cublas / triton / cuda at 3 sizes,
#          layer_norm fwd, bwd and softmax fwd, bwd (torch, triton, cuda), attention fwd, fwd+bwd at L 1k/4k/16k
#          (torch, sdpa-flash, sdpa-cudnn, triton, cuda); the Llama-family ops (benchmarks/llama_cases.py, 36
#          cases, ~15 s): rms_norm, add_rms_norm 16384x4096, rotary (8, 32, 2048, 128), swiglu 16384x14336 fwd and bwd,
#          gated_feed_forward 16384x4096x14336 fwd+bwd, each on torch, triton, cuda, liger; the loss ops
#          (benchmarks/loss_cases.py, 12 cases, ~40 s: their checks against the fp32 reference take seconds):
#          cross_entropy 16384x128256 fwd and fwd+bwd, linear_cross_entropy 16384x4096x128256 fwd+bwd, with peak memory;
#          last, attention's issue-15 features (benchmarks/attention_extras_cases.py, 34 cases, 26 that run, ~30-60 s:
#          Triton compiles their kernel variants on first use): attention_varlen (16 packed sequences of 128-2048
#          tokens, GQA 32:8, D 128), attention_window (window 4096, L 16k) and attention_softcap (cap 50, L 8k), fwd and
#          fwd+bwd, causal, on torch (SDPA padded / masked, eager softcap), torch-varlen, flash_attn, triton, cuda, auto
#   tier 1 (~300 s, 400 cases)  train_step torch.compile (compiles GPT-2's training graph, ~1 min),
#          bigmodel-triton / -cuda; the other modes and sizes of the core providers of every op (feed_forward,
#          gelu, relu, the fwd-only 8192x8192x32768 GEMM), addmm_activation; attention bwd and L 512/2k/8k; the
#          Llama-family ops' other sizes and modes, geglu, auto (264 cases, ~2.5 min); the loss ops' other sizes (V 32k
#          / 256k, d_model 2048), modes and providers: auto, bigmodel-torch, torch-no-upcast (117 cases, ~4 min); the
#          attention extras' other shapes: varlen D 64, window L 8k (B 2), softcap Gemma-2-9B heads 16:8, D 256 (34 cases)
#   tier 2 (~300 s, 281 cases)  torch.compile of the ops (a compile per shape and grad mode); attention's
#          sdpa-efficient, sdpa-math, eager; torch.compile of the Llama-family ops (60 cases, ~5 min more) and of the
#          loss ops (21 cases, ~2 min)
#   tier 3  flex (BIGMODEL_BENCH_FULL=1 only)
# After the build and the tests, bench usually has 150-250 s: tier 0, then the start of tier 1. For more: STEPS="build
# bench" (bench then gets ~300 s or more), or a second call with BENCH_ARGS="--ops ..." for the ops still missing
# (e.g. STEPS="build bench" BENCH_ARGS="--ops attention_varlen,attention_window,attention_softcap": all 68 of theirs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

OUT=${OUT:-$PWD/bench-out/gpu}
PY=${PYTHON:-python3}
STEPS=${STEPS:-build wheels tests bench pytest-bench}
SUITE_S=${SUITE_S:-570}
BUILD_S=${BUILD_S:-240}
TESTS_S=${TESTS_S:-120}
PYBENCH_S=${PYBENCH_S:-60}
PYBENCH_QUICK=${PYBENCH_QUICK:-1}
PYBENCH_K=${PYBENCH_K-fwd+bwd and triton}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
declare -A STATUS

wants() { [[ " $STEPS " == *" $1 "* ]]; }
left() { echo $((SUITE_S - SECONDS)); }  # seconds left of the whole suite's budget
cap() { local t=$(($1 < $(left) ? $1 : $(left))); echo $((t < 10 ? 10 : t)); }  # step limit: never 0 (= none)
banner() { echo; echo "=== $1 [$(date +%T), ${SECONDS}s]"; }

# ---------------------------------------------------------------------------------------------- device + build
banner "device"
{
  nvidia-smi || echo "nvidia-smi failed"
  "$PY" -c "import sys, torch, triton; print('python', sys.version.split()[0], '| torch', torch.__version__, \
'| CUDA', torch.version.cuda, '| triton', triton.__version__)" || true
  nvcc --version 2>/dev/null | tail -n 1 || echo "nvcc not found"
} > "$OUT/build.log" 2>&1
cat "$OUT/build.log"
# Compute capability of this GPU, e.g. "90": build only for it (minutes saved).
ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' .' || true)
[[ -n "$ARCH" ]] || ARCH=$("$PY" -c "import torch; print('%d%d' % torch.cuda.get_device_capability())" 2>/dev/null || true)

if wants build; then
  banner "build: pip install -e . (BIGMODEL_CUDA_ARCHS=${ARCH:-setup.py default}, MAX_JOBS=16)"
  rc=0
  MAX_JOBS=16 BIGMODEL_CUDA_ARCHS=${ARCH:-80;90} timeout "$(cap "$BUILD_S")" \
    "$PY" -m pip install --no-build-isolation --no-deps --no-index -v -e . >> "$OUT/build.log" 2>&1 || rc=$?
  STATUS[build]=$rc
  if [[ $rc != 0 ]]; then
    echo "build failed (exit $rc; see build.log): installing without bigmodel._C so the other paths still run"
    BIGMODEL_SKIP_CUDA_BUILD=1 "$PY" -m pip install --no-build-isolation --no-deps --no-index -e . \
      >> "$OUT/build.log" 2>&1 || echo "the fallback install failed too"
  fi
  grep -E "warning|error|spill" "$OUT/build.log" | grep -v "^ *$" | tail -n 15 || true
  "$PY" -c "import bigmodel._C as c; print('bigmodel._C:', c.__file__)" 2>&1 | tail -n 1 || true
fi

# ---------------------------------------------------------------------------------------------- peer wheels
if wants wheels; then
  shopt -s nullglob
  WHEELS=(wheels/*.whl)
  shopt -u nullglob
  if (( ${#WHEELS[@]} )); then
    banner "wheels: pip install --no-index --no-deps ${WHEELS[*]}"
    rc=0
    { echo "=== wheels"; "$PY" -m pip install --no-index --no-deps "${WHEELS[@]}"; } >> "$OUT/build.log" 2>&1 || rc=$?
    STATUS[wheels]=$rc
    [[ $rc == 0 ]] || echo "installing the wheels failed (exit $rc; see build.log): their rows are skipped"
    "$PY" -c "import importlib.metadata as m; print('liger-kernel', m.version('liger-kernel'))" 2>/dev/null \
      | tee -a "$OUT/build.log" || true
  else
    echo "no wheels/*.whl (carry wheels/ to the device for Liger-Kernel's rows): skipped"
    STATUS[wheels]=0
  fi
fi

# ---------------------------------------------------------------------------------------------- GPU tests
if wants tests; then
  banner "tests: pytest -m cuda tests"
  rc=0
  # The extension was just built: a cuda-backend test that finds it missing fails instead of skipping.
  [[ "${STATUS[build]:-0}" == 0 ]] && export BIGMODEL_REQUIRE_CUDA_EXT=1
  timeout "$(cap "$TESTS_S")" "$PY" -m pytest -m cuda tests -q -p no:cacheprovider \
    --junitxml="$OUT/tests.xml" > "$OUT/tests.log" 2>&1 || rc=$?
  STATUS[tests]=$rc
  tail -n 12 "$OUT/tests.log"
fi

# ---------------------------------------------------------------------------------------------- benchmarks
if wants bench; then
  # The full suite gets what is left, less the pytest-benchmark step and the summary; it starts no new case
  # 40 s before its limit, and SIGINT (not SIGTERM) lets it write the cases it finished.
  reserve=15
  if wants pytest-bench; then reserve=$((reserve + PYBENCH_S)); fi
  budget=$(($(left) - reserve))
  budget=$((budget < 60 ? 60 : budget))
  banner "bench: bigmodel bench --out \$OUT ${BENCH_ARGS:-} (${budget}s)"
  rc=0
  export BIGMODEL_CACHE_DIR=/tmp/bigmodel-gpu-suite-cache
  rm -rf "$BIGMODEL_CACHE_DIR"
  # shellcheck disable=SC2086  # BENCH_ARGS: several words
  timeout -s INT -k 20 "$budget" "$PY" -m bigmodel bench --out "$OUT" --max-seconds $((budget - 40)) ${BENCH_ARGS:-} \
    > "$OUT/bench.log" 2>&1 || rc=$?
  STATUS[bench]=$rc
  cp "$BIGMODEL_CACHE_DIR"/autotune-*.json "$OUT"/ 2>/dev/null || echo "no autotune cache was written"
  grep -E "^\[.*(error|ERROR)|failed|Traceback" "$OUT/bench.log" | tail -n 10 || true
  tail -n 3 "$OUT/bench.log"
fi

if wants pytest-bench; then
  banner "pytest-bench: pytest benchmarks -k '$PYBENCH_K' (BIGMODEL_BENCH_QUICK=$PYBENCH_QUICK)"
  rc=0
  BIGMODEL_BENCH_QUICK=$PYBENCH_QUICK timeout -s INT -k 20 "$(cap "$PYBENCH_S")" \
    "$PY" -m pytest benchmarks -q -p no:cacheprovider ${PYBENCH_K:+-k "$PYBENCH_K"} \
    --benchmark-columns=median,iqr,rounds >> "$OUT/bench.log" 2>&1 \
    || rc=$?
  STATUS[pytest-bench]=$rc
  tail -n 3 "$OUT/bench.log"
fi

# ---------------------------------------------------------------------------------------------- summary
banner "summary"
REPORT=$(ls "$OUT"/*.json 2>/dev/null | grep -v autotune- | head -n 1 || true)
if [[ -n "$REPORT" ]]; then
  "$PY" -m benchmarks.report --summary "$REPORT" || true
else
  echo "no benchmark report in $OUT"
fi
if [[ -f "$OUT/tests.xml" ]]; then
  "$PY" - "$OUT/tests.xml" <<'EOF' || true
import sys
import xml.etree.ElementTree as ET

root = ET.parse(sys.argv[1]).getroot()
suite = root if root.tag == "testsuite" else root.find("testsuite")
print(f"cuda tests: {suite.get('tests')} run, {suite.get('failures')} failed, {suite.get('errors')} errors, "
      f"{suite.get('skipped')} skipped")
for case in suite.iter("testcase"):
    if case.find("failure") is not None or case.find("error") is not None:
        print(f"  FAILED {case.get('classname')}::{case.get('name')}")
EOF
fi
worst=0
for s in build wheels tests bench pytest-bench; do
  printf "%-13s %s\n" "$s" "$(wants "$s" && echo "exit ${STATUS[$s]:-not reached}" || echo "not asked")"
  [[ "${STATUS[$s]:-0}" == 0 ]] || worst=1
done
echo "files in \$OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
echo "suite: ${SECONDS}s"
exit $worst
