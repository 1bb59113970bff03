#!/usr/bin/env bash
# Triton's perf_analyzer, runnable on these CPU machines: `benchmarks/perf_analyzer.sh [perf_analyzer args …]`.
#
# The working binary ships in the tritonclient==2.51.0 wheel (`pip install perf-analyzer` is a placeholder where glibc
# is older than 2.38). That wheel pins numpy<2 and protobuf<5, so it lives in its own tools venv, created on first use
# (SPADE_TOOLS_VENV, default ~/.cache/spade-deploy/perf-analyzer). The binary links libb64.so.0d and libcudart.so.12
# even for CPU-only runs: both are symlinked from the nvidia_pytriton.libs folder of the main environment (the one
# whose python runs this script: PYTHON, default `python3` on PATH) into the venv's lib/ on LD_LIBRARY_PATH.
# Only the venv is written; the main environment is read.
set -euo pipefail

PYTHON=${PYTHON:-python3}
TOOLS=${SPADE_TOOLS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/spade-deploy/perf-analyzer}
TRITONCLIENT_VERSION=2.51.0

if [[ ! -x "$TOOLS/bin/perf_analyzer" ]]; then
    echo "perf_analyzer.sh: creating the tools venv $TOOLS (tritonclient==$TRITONCLIENT_VERSION) …" >&2
    "$PYTHON" -m venv "$TOOLS"
    "$TOOLS/bin/pip" install --quiet "tritonclient==$TRITONCLIENT_VERSION" >&2
fi

if [[ ! -e "$TOOLS/lib/libb64.so.0d" || ! -e "$TOOLS/lib/libcudart.so.12" ]]; then
    libs=$("$PYTHON" - <<'EOF'
import importlib.util, pathlib, sys
spec = importlib.util.find_spec("pytriton")
if spec is None or spec.origin is None:
    sys.exit("perf_analyzer.sh: nvidia-pytriton is not installed in this python's environment (pip install .[serve]); "
             "its nvidia_pytriton.libs folder provides libb64 and libcudart")
print(pathlib.Path(spec.origin).parents[1] / "nvidia_pytriton.libs")
EOF
)
    mkdir -p "$TOOLS/lib"
    for pair in "libb64-*.so.0d:libb64.so.0d" "libcudart-*.so.12*:libcudart.so.12"; do
        pattern=${pair%%:*}
        name=${pair##*:}
        found=$(compgen -G "$libs/$pattern" | head -n 1 || true)
        if [[ -z "$found" ]]; then
            echo "perf_analyzer.sh: no $pattern in $libs" >&2
            exit 1
        fi
        ln -sf "$found" "$TOOLS/lib/$name"
    done
fi

export LD_LIBRARY_PATH="$TOOLS/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$TOOLS/bin/perf_analyzer" "$@"
