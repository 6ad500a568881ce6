#!/usr/bin/env bash
# Full-size SAE runs for issue 4 ("What must be shown" 1, 3, 4, 6) on stories260K block 2's residual stream,
# TinyStories subset with the last 10% of stories held out. Re-runnable; writes everything under $OUT and a
# summary to $OUT/summary.json (+ prints it).
#
#   bench/sae/run_full.sh                       # build/mlxterp, /work/shared/data, OUT=/tmp/mlxterp_sae_full
#   OUT=/tmp/x EPOCHS=2 THREADS=2 bench/sae/run_full.sh
#
# What it does:
#  1. `mlxterp cache` of model.layers.2 over the whole subset (float32), for the PyTorch reference.
#  2. TopK (F = 1024, k = 32) and BatchTopK (k = 32) trained by mlxterp in streaming mode over the whole subset
#     (validation_split = 0.1: the last 10% of stories held out), RSS logged at every metric sync, peak RSS by
#     /usr/bin/time; then tests/reference/sae_topk_reference.py trains the PyTorch reference on the same training
#     tokens (the cache, split the same way) with the same batch, epochs, LR schedule and seed-independent recipe
#     and evaluates both SAEs on the held-out stories one story at a time.
#  3. RSS growth between 25% and 100% of the steps of the streaming TopK run.
#  4. The TopK run again with checkpoints every CKPT steps, SIGKILLed at random moments (KILLS times), each
#     time the checkpoint on disk is verified complete and training continues with --resume; the final weights
#     are compared bitwise with the uninterrupted run.
#  6. Speed: SAE steps/s (time inside the SAE step) and end-to-end tokens/s of the streaming runs, and the
#     reference's step, in wall time and in process CPU time (compare CPU time on a shared machine).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
BIN=${MLXTERP:-$ROOT/build/mlxterp}
DATA=${MLXTERP_DATA:-/work/shared/data}
OUT=${OUT:-/tmp/mlxterp_sae_full}
EPOCHS=${EPOCHS:-4}
LR=${LR:-1e-3}
THREADS=${THREADS:-2}
CKPT=${CKPT:-150}
KILLS=${KILLS:-3}
PY=${PY:-/usr/bin/python3}
MODEL=$DATA/models/stories260K/stories260K.bin
TEXT=$DATA/text/tinystories_val_subset.txt
CHECK="$PY $ROOT/bench/sae/sae_checks.py"
mkdir -p "$OUT"
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

COMMON=(--model "$MODEL" --layer 2 --component resid_post --data "$TEXT" --threads "$THREADS" --plain-progress
        --set expansion_factor=16 --set k=32 --set batch_size=256 --set num_epochs="$EPOCHS"
        --set learning_rate="$LR" --set warmup_steps=100 --set lr_scheduler=cosine --set validation_split=0.1
        --set text_batch_size=32 --set context_size=256 --set seed=42)

# 1. the cache for the reference
if [ ! -f "$OUT/cache/meta.json" ] || ! grep -q '"complete": true' "$OUT/cache/meta.json"; then
  log "caching model.layers.2 activations"
  "$BIN" cache --model "$MODEL" --sites model.layers.2 --data "$TEXT" --out "$OUT/cache" --store-dtype f32 \
    --context-size 256 --text-batch-size 32 --threads "$THREADS" 2> "$OUT/cache.log"
fi

# 2. our runs, streaming, with RSS; then the reference on the same tokens
for arch in topk batchtopk; do
  if [ ! -f "$OUT/$arch/weights.safetensors" ]; then
    log "training $arch (streaming)"
    rm -rf "$OUT/$arch"
    /usr/bin/time -v "$BIN" sae train "${COMMON[@]}" --set sae_type=$arch --out "$OUT/$arch" \
      --log-dir "$OUT/$arch/logs" > "$OUT/$arch.stdout" 2> "$OUT/$arch.stderr"
  fi
  if [ ! -f "$OUT/compare_$arch.json" ]; then
    log "PyTorch reference $arch"
    $PY "$ROOT/tests/reference/sae_topk_reference.py" --cache "$OUT/cache" --validation-split 0.1 \
      --site model.layers.2 --arch $arch --k 32 --expansion 16 --batch 256 --epochs "$EPOCHS" --lr "$LR" \
      --warmup 100 --threads "$THREADS" --ours "$OUT/$arch" --json "$OUT/compare_$arch.json" > /dev/null
  fi
done

# 3. RSS
$CHECK rss "$OUT/topk/logs/metrics.jsonl" > "$OUT/rss_topk.json" || true

# 4. SIGKILL + --resume
if [ ! -f "$OUT/kill/weights.safetensors" ]; then
  rm -rf "$OUT/kill"
  mkdir -p "$OUT/kill"
  : > "$OUT/kill_checks.jsonl"
  total=$($PY -c "import json;print(json.load(open('$OUT/topk/config.json'))['steps'])")
  resume=()
  for i in $(seq 1 "$KILLS"); do
    "$BIN" sae train "${COMMON[@]}" --set sae_type=topk --set checkpoint_every="$CKPT" --out "$OUT/kill" \
      --log-dir "$OUT/kill/logs" "${resume[@]}" > "$OUT/kill_$i.stdout" 2> "$OUT/kill_$i.stderr" &
    pid=$!
    # Kill at a random moment after (roughly) i/(KILLS+1) of the run.
    target=$(( total * i / (KILLS + 1) ))
    while kill -0 $pid 2>/dev/null; do
      step=$(grep -o '"step":[0-9]*' "$OUT/kill/logs/metrics.jsonl" 2>/dev/null | tail -1 | cut -d: -f2 || true)
      [ -n "${step:-}" ] && [ "$step" -ge "$target" ] && break
      sleep 0.2
    done
    sleep "0.$(( RANDOM % 10 ))$(( RANDOM % 10 ))"
    kill -9 $pid 2>/dev/null || true
    wait $pid 2>/dev/null || true
    log "SIGKILL $i near step $target"
    $CHECK checkpoint "$OUT/kill/checkpoint.safetensors" >> "$OUT/kill_checks.jsonl"
    tmp=$(ls "$OUT/kill" | grep -c '\.tmp\.' || true)
    echo "{\"kill\": $i, \"leftover_tmp_files\": $tmp}" >> "$OUT/kill_checks.jsonl"
    resume=(--resume "$OUT/kill")
  done
  "$BIN" sae train "${COMMON[@]}" --set sae_type=topk --set checkpoint_every="$CKPT" --out "$OUT/kill" \
    --log-dir "$OUT/kill/logs" "${resume[@]}" > "$OUT/kill_final.stdout" 2> "$OUT/kill_final.stderr"
fi
$CHECK same-weights "$OUT/topk" "$OUT/kill" > "$OUT/kill_same.json" || true

# Summary
$PY - "$OUT" <<'EOF'
import json, os, re, sys
out = sys.argv[1]
S = {}
for arch in ["topk", "batchtopk"]:
    c = json.load(open(f"{out}/compare_{arch}.json"))
    cfg = json.load(open(f"{out}/{arch}/config.json"))
    t = cfg["timing"]
    err = open(f"{out}/{arch}.stderr").read()
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", err)
    S[arch] = {
        "train_tokens_reference": c["train_tokens"], "train_tokens_ours": cfg["data"]["tokens_per_epoch"],
        "heldout_tokens": c["heldout_tokens"], "heldout_documents": c["heldout_documents"], "steps": c["steps"],
        "ours_heldout": {k: c["ours"][k] for k in ["fvu", "l0", "never_active_heldout"]},
        "ours_dead_frac_window": cfg["final_metrics"]["dead_frac"],
        "reference_heldout": {k: c["reference"][k] for k in ["fvu", "l0", "never_active_heldout"]},
        "reference_dead_frac_window": c["reference"]["dead_frac_window"],
        "ours_threshold": c["ours"].get("threshold"), "reference_threshold": c["reference"].get("threshold"),
        "speed": {
            "ours_sae_steps_per_s_wall": t["sae_steps_per_s"],
            "ours_sae_step_cpu_ms": 1e3 * t["sae_step_cpu_seconds"] / t["session_steps"],
            "ours_end_to_end_tokens_per_s_wall": t["tokens_per_s"],
            "ours_end_to_end_tokens_per_cpu_s": t["tokens_per_cpu_s"],
            "reference_step_ms_wall": c["reference"]["step_ms"], "reference_step_cpu_ms": c["reference"]["step_cpu_ms"],
            "reference_steps_per_s_wall": c["reference"]["steps_per_s"],
        },
        "peak_rss_mb_time_v": int(peak.group(1)) / 1024 if peak else None,
        "process_wall_s": t["session_seconds"], "process_cpu_s_time_v": sum(
            float(re.search(p + r" \(seconds\): ([0-9.]+)", err).group(1)) for p in ["User time", "System time"]),
        "peak_rss_mb_self": t["peak_rss_mb"],
    }
    sp = S[arch]["speed"]
    sp["speedup_wall"] = sp["reference_step_ms_wall"] / (1e3 / sp["ours_sae_steps_per_s_wall"])
    sp["speedup_cpu"] = sp["reference_step_cpu_ms"] / sp["ours_sae_step_cpu_ms"]
S["rss"] = json.load(open(f"{out}/rss_topk.json"))
S["kill_resume"] = {"checks": [json.loads(l) for l in open(f"{out}/kill_checks.jsonl") if l.strip()],
                    "final_vs_uninterrupted": json.load(open(f"{out}/kill_same.json"))}
json.dump(S, open(f"{out}/summary.json", "w"), indent=1)
print(json.dumps(S, indent=1))
EOF
