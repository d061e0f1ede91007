#!/usr/bin/env bash
# The GPU checks of issue 12, item 5, as one script for a lent GPU machine without network that
# has python3 with torch (CUDA) but not mcvae's other dependencies. Run from the repository root:
#
#   make device-wheels            # here, beforehand: wheels/device/*.whl (git-ignored; carry it)
#   bash bench/gpu_check.sh       # there: install the wheels, CUDA tests, throughput benchmark
#
# 1. installs the wheels in wheels/device/ that are not installed yet
#    (pip install --no-index --no-deps; without a usable pip, unpacked onto PYTHONPATH instead);
# 2. python3 -m pytest tests/models/test_cuda.py -m cuda;
# 3. bench/gpu_throughput.py --device cuda (standard and research profiles, amp and channels-last
#    on and off), stopping new settings when the time budget runs low.
# Everything is bounded by `timeout`, about 8 minutes in all (GPU_CHECK_SECONDS). The log and the
# benchmark's JSON land in bench/results/ and, when $OUT is set, are copied there.
# Exit status: 0 when the tests passed and the benchmark ran; 1 otherwise (results still copied).

set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TOTAL=${GPU_CHECK_SECONDS:-480}
RESULTS=bench/results
mkdir -p "$RESULTS"
LOG=$RESULTS/gpu_check.log
exec > >(tee "$LOG") 2>&1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONDONTWRITEBYTECODE=1
status=0
left() { echo $((TOTAL - SECONDS)); }

copy_out() {
    if [ -n "${OUT:-}" ]; then
        mkdir -p "$OUT"
        cp -f "$RESULTS"/gpu_throughput_cuda.json "$RESULTS"/gpu_check_pytest.xml "$OUT"/ 2>/dev/null
        sync; cp -f "$LOG" "$OUT"/ 2>/dev/null
    fi
}
trap copy_out EXIT

echo "== gpu_check $(date -u '+%Y-%m-%d %H:%M:%S UTC'), budget ${TOTAL} s"
timeout 60 "$PY" - <<'EOF' || { echo "torch with CUDA is needed"; exit 1; }
import torch
print("torch", torch.__version__, "CUDA", torch.version.cuda, "cuDNN", torch.backends.cudnn.version())
print("cuda available:", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device:", torch.cuda.get_device_name(0))
EOF

echo "== wheels"
shopt -s nullglob
wheels=(wheels/device/*.whl)
if [ ${#wheels[@]} -eq 0 ]; then
    echo "no wheels in wheels/device/ (make device-wheels, and carry wheels/device)"
fi
missing=()
for w in "${wheels[@]}"; do
    dist=$(basename "$w"); dist=${dist%%-*}
    if "$PY" -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" "$dist" 2>/dev/null; then
        echo "present: $dist $("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$dist")"
    else
        missing+=("$w")
    fi
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]##*/}"
    if ! timeout 120 "$PY" -m pip install --no-index --no-deps --disable-pip-version-check "${missing[@]}"; then
        echo "pip install failed or no pip: unpacking the wheels onto PYTHONPATH instead"
        site=wheels/device/site
        timeout 120 "$PY" - "$site" "${missing[@]}" <<'EOF'
import sys, zipfile
for wheel in sys.argv[2:]:
    zipfile.ZipFile(wheel).extractall(sys.argv[1])
EOF
        export PYTHONPATH="$PWD/$site:$PYTHONPATH"
    fi
fi
timeout 120 "$PY" -c "import monai, pydantic, safetensors, pytest, models.vae, models.training; print('imports ok: monai', monai.__version__, 'pydantic', pydantic.VERSION)" || status=1

echo "== tests/models/test_cuda.py ($(left) s left)"
timeout $(( $(left) < 180 ? $(left) : 180 )) "$PY" -m pytest tests/models/test_cuda.py -m cuda -q -rs \
    -p no:cacheprovider --junitxml="$RESULTS/gpu_check_pytest.xml" || status=1

echo "== bench/gpu_throughput.py ($(left) s left)"
bench_limit=$(( $(left) - 10 ))
if [ "$bench_limit" -gt 30 ]; then
    timeout "$bench_limit" "$PY" bench/gpu_throughput.py --device cuda --budget-s $(( bench_limit - 90 > 10 ? bench_limit - 90 : 10 )) || status=1
else
    echo "no time left for the benchmark"; status=1
fi
echo "== done in ${SECONDS} s, status ${status}"
exit $status
