#!/usr/bin/env bash
# Builds and runs scripts/isa_throughput.cpp (AVX2 vector-integer instruction throughput per core
# cycle on this CPU); prints lscpu's model first. x86-64 with AVX2 only.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -q avx2 /proc/cpuinfo || { echo "isa_throughput: this CPU has no AVX2" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
g++ -O2 -mavx2 -o "$out/isa_throughput" scripts/isa_throughput.cpp
lscpu | grep -E "Model name|^Model:" || true
taskset -c 0 "$out/isa_throughput" 2>/dev/null || "$out/isa_throughput"
