#!/usr/bin/env bash
# Runs a GoogleTest binary as N shards in parallel (GTEST_TOTAL_SHARDS / GTEST_SHARD_INDEX), prints each
# shard's failures and totals, and exits non-zero if any shard failed. Used by bench/run_gpu.sh.
#
#   bash bench/gtest_shards.sh BINARY N FILTER SCRATCH_DIR
set -uo pipefail
BIN=$1 N=$2 FILTER=$3 DIR=$4
mkdir -p "$DIR"
pids=()
for ((i = 0; i < N; ++i)); do
  GTEST_TOTAL_SHARDS=$N GTEST_SHARD_INDEX=$i "$BIN" --gtest_filter="$FILTER" --gtest_brief=1 --gtest_color=no \
    >"$DIR/shard$i.log" 2>&1 &
  pids+=($!)
done
rc=0
for ((i = 0; i < N; ++i)); do
  wait "${pids[$i]}"
  r=$?
  ((r != 0)) && rc=1
  # Failures with their messages, and the totals.
  grep -vE "^\[ +(OK|RUN) +\]|^Note: |^$" "$DIR/shard$i.log" | tail -60
  echo "shard $i/$N: exit $r; $(grep -E '^\[  PASSED  \]' "$DIR/shard$i.log" | head -1)"
done
exit $rc
