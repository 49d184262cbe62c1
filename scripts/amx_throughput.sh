#!/usr/bin/env bash
# Builds and runs scripts/amx_throughput.cpp (the AMX-BF16 tile, B-conversion and fold costs behind
# linear_w4_weight_only's AMX tiles); prints lscpu's model first. x86-64 with AMX-BF16 only.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -q amx_bf16 /proc/cpuinfo || { echo "amx_throughput: this CPU has no AMX-BF16" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
g++ -O2 -mavx512f -mavx512bw -mavx512vbmi -o "$out/amx_throughput" scripts/amx_throughput.cpp
lscpu | grep -E "Model name|^Model:" || true
taskset -c 0 "$out/amx_throughput" 2>/dev/null || "$out/amx_throughput"
