#!/usr/bin/env bash
# Full-size SAE measurements for issue 4 ("What must be shown" 1, 3, 4, 6) on stories260K block 2's residual
# stream, TinyStories subset (/work/shared/data/text/tinystories_val_subset.txt) with the last 10% of stories
# held out. Re-runnable (finished steps are skipped); writes everything under $OUT and $OUT/summary.json.
#
#   bench/sae/run_full.sh                       # build/mlxterp, /work/shared/data, OUT=/tmp/mlxterp_sae_full
#   OUT=/tmp/x EPOCHS=2 THREADS=1 bench/sae/run_full.sh
#
# Steps:
#  1. `mlxterp cache` of model.layers.2 over the whole subset (float32).
#  2. (item 1) TopK (F = 1024, k = 32) and BatchTopK (k = 32) trained by mlxterp from that cache
#     (validation_split = 0.1: the last 10% of stories held out), then tests/reference/sae_topk_reference.py
#     trains the PyTorch reference on the same training tokens (the same cache, split the same way) with the
#     same batch, epochs, LR and warm-up, and evaluates both SAEs on the held-out stories one story at a time.
#     Training both from one cache is what makes "the same tokens" exact (streaming would redo the model
#     forward every epoch, which on this shared 2-core machine costs minutes per epoch).
#  3. (item 3, item 6 end-to-end) one streaming TopK run over the whole subset (STREAM_EPOCHS epochs, the model
#     runs as training consumes the activations), RSS logged at every metric sync (rss_mb in metrics.jsonl) and
#     sampled from /proc every 50 ms (stream_rss.tsv); flatness = peak RSS up to 25% of the steps vs peak over
#     the whole run, and the last quarter's median vs the second quarter's; peak RSS from /usr/bin/time -v.
#  4. (item 4) the cache-trained TopK run again with checkpoints every CKPT steps, SIGKILLed KILLS times at
#     random moments; after each kill the checkpoint on disk is verified complete and no temporary file is
#     left, and training continues with --resume; the final weights are compared bitwise with an
#     uninterrupted run with the same checkpoint_every.
#  6. Speed: SAE steps/s (time inside the SAE step, wall and process CPU), end-to-end tokens/s of the
#     streaming run, and the reference's step (wall and CPU) — compare CPU time on a shared machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
BIN=${MLXTERP:-$ROOT/build/mlxterp}
DATA=${MLXTERP_DATA:-/work/shared/data}
OUT=${OUT:-/tmp/mlxterp_sae_full}
EPOCHS=${EPOCHS:-4}
STREAM_EPOCHS=${STREAM_EPOCHS:-1}
LR=${LR:-1e-3}
THREADS=${THREADS:-1}  # one: with two on a shared 2-core machine OpenMP spin-waits (docs/sae-results.md)
CKPT=${CKPT:-200}
KILLS=${KILLS:-3}
PY=${PY:-/usr/bin/python3}
MODEL=$DATA/models/stories260K/stories260K.bin
TEXT=$DATA/text/tinystories_val_subset.txt
CHECK="$PY $ROOT/bench/sae/sae_checks.py"
mkdir -p "$OUT"
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

SAE=(--layer 2 --component resid_post --threads "$THREADS" --plain-progress
     --set expansion_factor=16 --set k=32 --set batch_size=256 --set learning_rate="$LR" --set warmup_steps=100
     --set lr_scheduler=cosine --set validation_split=0.1 --set text_batch_size=32 --set context_size=256
     --set seed=42)
# From the cache the auto shuffle buffer holds the whole training split when it fits in 512 MB (340,087 tokens
# here): a full random permutation every epoch, the reference's batch order. SHUFFLE=N sets the buffer instead.
SHUFFLE=${SHUFFLE:-}
CACHED=("${SAE[@]}" --data "$OUT/cache" --set num_epochs="$EPOCHS" ${SHUFFLE:+--set shuffle_buffer_tokens="$SHUFFLE"})

# 1. the cache
if [ ! -f "$OUT/cache/meta.json" ] || ! grep -q '"complete": *true' "$OUT/cache/meta.json"; then
  log "caching model.layers.2 activations"
  /usr/bin/time -v "$BIN" cache --model "$MODEL" --sites model.layers.2 --data "$TEXT" --out "$OUT/cache" \
    --store-dtype f32 --context-size 256 --text-batch-size 32 --threads "$THREADS" 2> "$OUT/cache.log"
fi

# 2. ours from the cache, then the reference on the same tokens
for arch in topk batchtopk; do
  if [ ! -f "$OUT/$arch/weights.safetensors" ]; then
    log "training $arch (from the cache)"
    rm -rf "$OUT/$arch"
    /usr/bin/time -v "$BIN" sae train "${CACHED[@]}" --set sae_type=$arch --out "$OUT/$arch" \
      --log-dir "$OUT/$arch/logs" > "$OUT/$arch.stdout" 2> "$OUT/$arch.stderr"
  fi
  if [ ! -f "$OUT/compare_$arch.json" ]; then
    log "PyTorch reference $arch"
    $PY "$ROOT/tests/reference/sae_topk_reference.py" --cache "$OUT/cache" --validation-split 0.1 \
      --site model.layers.2 --arch $arch --k 32 --expansion 16 --batch 256 --epochs "$EPOCHS" --lr "$LR" \
      --warmup 100 --threads "$THREADS" --ours "$OUT/$arch" --json "$OUT/compare_$arch.json" > /dev/null
  fi
done

# 4. SIGKILL + --resume (from the cache; reference run with the same checkpoint_every, uninterrupted)
if [ ! -f "$OUT/kill/weights.safetensors" ]; then
  log "uninterrupted run with checkpoint_every=$CKPT"
  rm -rf "$OUT/kill" "$OUT/nokill"
  "$BIN" sae train "${CACHED[@]}" --set sae_type=topk --set checkpoint_every="$CKPT" --out "$OUT/nokill" \
    > "$OUT/nokill.stdout" 2> "$OUT/nokill.stderr"
  mkdir -p "$OUT/kill"
  : > "$OUT/kill_checks.jsonl"
  total=$($PY -c "import json;print(json.load(open('$OUT/nokill/config.json'))['steps'])")
  resume=()
  for i in $(seq 1 "$KILLS"); do
    "$BIN" sae train "${CACHED[@]}" --set sae_type=topk --set checkpoint_every="$CKPT" --out "$OUT/kill" \
      --log-dir "$OUT/kill/logs" "${resume[@]}" > "$OUT/kill_$i.stdout" 2> "$OUT/kill_$i.stderr" &
    pid=$!
    # Kill at a random moment after (roughly) i/(KILLS+1) of the run.
    target=$(( total * i / (KILLS + 1) ))
    while kill -0 $pid 2>/dev/null; do
      step=$(grep -o '"step":[0-9]*' "$OUT/kill/logs/metrics.jsonl" 2>/dev/null | tail -1 | cut -d: -f2 || true)
      [ -n "${step:-}" ] && [ "$step" -ge "$target" ] && break
      sleep 0.1
    done
    sleep "0.$(( RANDOM % 10 ))"
    kill -9 $pid 2>/dev/null || true
    wait $pid 2>/dev/null || true
    log "SIGKILL $i near step $target"
    $CHECK checkpoint "$OUT/kill/checkpoint.safetensors" >> "$OUT/kill_checks.jsonl" || true
    tmp=$(ls -a "$OUT/kill" | grep -c '\.tmp' || true)
    echo "{\"kill\": $i, \"target_step\": $target, \"leftover_tmp_files\": $tmp}" >> "$OUT/kill_checks.jsonl"
    resume=(--resume "$OUT/kill")
  done
  "$BIN" sae train "${CACHED[@]}" --set sae_type=topk --set checkpoint_every="$CKPT" --out "$OUT/kill" \
    --log-dir "$OUT/kill/logs" "${resume[@]}" > "$OUT/kill_final.stdout" 2> "$OUT/kill_final.stderr"
fi
$CHECK same-weights "$OUT/nokill" "$OUT/kill" > "$OUT/kill_same.json" || true

# 3. streaming over the whole subset: RSS and end-to-end speed
if [ ! -f "$OUT/stream/weights.safetensors" ]; then
  log "streaming topk run ($STREAM_EPOCHS epoch(s) over the whole subset)"
  rm -rf "$OUT/stream"
  mkdir -p "$OUT/stream/logs"
  /usr/bin/time -v "$BIN" sae train "${SAE[@]}" --model "$MODEL" --data "$TEXT" --set num_epochs="$STREAM_EPOCHS" \
    --set sae_type=topk --out "$OUT/stream" --log-dir "$OUT/stream/logs" > "$OUT/stream.stdout" 2> "$OUT/stream.stderr" &
  tpid=$!
  # RSS sampled from outside every 50 ms (the trainer's own rss_mb is read only at metric syncs).
  cpid=""
  for _ in $(seq 100); do cpid=$(pgrep -P $tpid | head -1 || true); [ -n "$cpid" ] && break; sleep 0.02; done
  [ -n "$cpid" ] && $CHECK sample-rss "$cpid" "$OUT/stream/logs/metrics.jsonl" "$OUT/stream_rss.tsv" 0.05 &
  wait $tpid
  wait
fi
$CHECK rss "$OUT/stream/logs/metrics.jsonl" > "$OUT/rss_stream.json" || true
total_stream=$($PY -c "import json;print(json.load(open('$OUT/stream/config.json'))['steps'])")
$CHECK rss-samples "$OUT/stream_rss.tsv" "$total_stream" > "$OUT/rss_stream_sampled.json" || true

# Summary
$PY - "$OUT" <<'EOF'
import json, re, sys
out = sys.argv[1]

def timev(path):
    err = open(path).read()
    g = lambda k: float(re.search(re.escape(k) + r": ([0-9.:]+)", err).group(1)) if k != "wall" else None
    peak = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", err).group(1)) / 1024
    return {"peak_rss_mb": peak, "cpu_s": g("User time (seconds)") + g("System time (seconds)")}

S = {}
for arch in ["topk", "batchtopk"]:
    c = json.load(open(f"{out}/compare_{arch}.json"))
    cfg = json.load(open(f"{out}/{arch}/config.json"))
    t = cfg["timing"]
    S[arch] = {
        "train_tokens_reference": c["train_tokens"], "train_tokens_ours": cfg["data"].get("tokens_per_epoch"),
        "heldout_tokens": c["heldout_tokens"], "heldout_documents": c["heldout_documents"], "steps": c["steps"],
        "ours_heldout": c["ours"], "ours_dead_frac_window": cfg["final_metrics"]["dead_frac"],
        "reference_heldout": c["reference"],
        "speed": {
            "ours_sae_steps_per_s_wall": t["sae_steps_per_s"],
            "ours_sae_step_cpu_ms": 1e3 * t["sae_step_cpu_seconds"] / t["session_steps"],
            "ours_sae_step_wall_ms": 1e3 * t["sae_step_seconds"] / t["session_steps"],
            "reference_step_ms_wall": c["reference"]["step_ms"], "reference_step_cpu_ms": c["reference"]["step_cpu_ms"],
        },
        "process": dict(timev(f"{out}/{arch}.stderr"), wall_s=t["session_seconds"]),
    }
    sp = S[arch]["speed"]
    sp["speedup_wall"] = sp["reference_step_ms_wall"] / sp["ours_sae_step_wall_ms"]
    sp["speedup_cpu"] = sp["reference_step_cpu_ms"] / sp["ours_sae_step_cpu_ms"]
st = json.load(open(f"{out}/stream/config.json"))
S["stream"] = {"timing": st["timing"], "final_metrics": st["final_metrics"], "steps": st["steps"],
               "tokens_seen": st["tokens_seen"], "process": timev(f"{out}/stream.stderr"),
               "rss": json.load(open(f"{out}/rss_stream.json")),
               "rss_sampled_50ms": json.load(open(f"{out}/rss_stream_sampled.json"))}
S["kill_resume"] = {"checks": [json.loads(l) for l in open(f"{out}/kill_checks.jsonl") if l.strip()],
                    "final_vs_uninterrupted": json.load(open(f"{out}/kill_same.json"))}
json.dump(S, open(f"{out}/summary.json", "w"), indent=1)
print(json.dumps(S, indent=1))
EOF
