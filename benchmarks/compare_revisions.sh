#!/usr/bin/env bash
# Run benchmarks on two revisions, interleaved (A, B, A, B), so both see the same machine state.
#   bash benchmarks/compare_revisions.sh REV_A REV_B [ROUNDS] [OUT]
# Writes OUT/<bench>.log (default /tmp/cityenv-compare); each block starts with "### <bench> <tree>".
# Uses ./.venv (run `bash .ci/setup` first); each revision is checked out in a git worktree and
# imported through PYTHONPATH. The 1.2M-panorama retrieval database is built once and shared.
set -uo pipefail
cd "$(dirname "$0")/.."
A=${1:?first revision}; B=${2:?second revision}; ROUNDS=${3:-2}; OUT=${4:-/tmp/cityenv-compare}
P=$PWD/.venv/bin/python
mkdir -p "$OUT"
for rev in "$A" "$B"; do
  tree="$OUT/tree-$(git rev-parse --short "$rev")"
  [ -d "$tree" ] || git worktree add -q --detach "$tree" "$rev"
done
TA="$OUT/tree-$(git rev-parse --short "$A")"; TB="$OUT/tree-$(git rev-parse --short "$B")"
run() { # bench tree args...
  local name=$1 tree=$2; shift 2
  echo "### $name $tree $(date +%T) load $(cut -d' ' -f1 /proc/loadavg)"
  (cd "$tree" && PYTHONPATH=$tree timeout 1800 "$P" "$@" 2>&1 | grep -v "it/s\]\|s/it\]")
}
both() { # bench args...
  local name=$1; shift
  for _ in $(seq "$ROUNDS"); do run "$name" "$TA" "$@"; run "$name" "$TB" "$@"; done >"$OUT/$name.log"
}
both splat benchmarks/bench_splat.py --runs 30
both render benchmarks/bench_render.py
both env benchmarks/bench_env.py
both worldmodel benchmarks/bench_worldmodel.py --preset small --size 128x128 --chunks 5
[ -d "$OUT/db" ] || run build "$TB" benchmarks/bench_retrieval.py --panoramas 1200000 \
  --path "$OUT/db" --keep --queries 10 >"$OUT/build.log"
both retrieval benchmarks/bench_retrieval.py --path "$OUT/db" --queries 200
echo "logs in $OUT"
