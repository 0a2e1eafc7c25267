#!/usr/bin/env bash
# GPU benchmark of the workloads (falls back to CPU with a note): see bench/gpu_bench.py.
exec python "$(dirname "$0")/gpu_bench.py" "$@"
