#!/usr/bin/env bash
# Full-size SAE evaluation and dashboard for issue 8 ("What must be shown"), outside the test suite.
#
#   bench/sae_eval/stories260k.sh                   # build/mlxterp, /work/shared/data, OUT=/tmp/mlxterp_sae_eval
#   OUT=/tmp/x EPOCHS=2 THREADS=2 bench/sae_eval/stories260k.sh
#   SAE=/tmp/mlxterp_sae_full/topk bench/sae_eval/stories260k.sh   # evaluate an SAE trained elsewhere
#
# 1. Trains a TopK SAE (1024 latents = 16 x 64, k = 32) on stories260K block 2's residual stream with the recipe of
#    bench/sae/run_full.sh: TinyStories subset, validation_split = 0.1 (the last 10% of stories held out).
# 2. `mlxterp sae eval` on the held-out 10% (the default when --data is the training file), saving the evaluated
#    sequences; the same SAE exported to SAELens and sparsify formats and evaluated again (their sites come from
#    a TransformerLens hook name / a sparsify hookpoint).
# 3. tests/reference/sae_eval_reference.py (PyTorch, float64, one sequence at a time) on the same sequences.
# 4. A 1024-feature dashboard over the whole subset with /usr/bin/time -v (wall time, peak RSS), and
#    headless-Chromium screenshots of the index and a feature view (plus the page's own #selftest).
# Writes $OUT/summary.json and prints it.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
BIN=${MLXTERP:-$ROOT/build/mlxterp}
DATA=${MLXTERP_DATA:-/work/shared/data}
OUT=${OUT:-/tmp/mlxterp_sae_eval}
EPOCHS=${EPOCHS:-4}
THREADS=${THREADS:-2}
PY=${PY:-/usr/bin/python3}
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
MODEL=$DATA/models/stories260K/stories260K.bin
HF=$DATA/models/stories260K/hf
TEXT=$DATA/text/tinystories_val_subset.txt
SAE=${SAE:-$OUT/topk}
mkdir -p "$OUT"
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

if [ ! -f "$SAE/weights.safetensors" ]; then
  log "training the TopK SAE ($EPOCHS epochs)"
  "$BIN" sae train --model "$MODEL" --layer 2 --component resid_post --data "$TEXT" --threads "$THREADS" --plain-progress \
    --set expansion_factor=16 --set k=32 --set batch_size=256 --set num_epochs="$EPOCHS" --set learning_rate=1e-3 \
    --set warmup_steps=100 --set lr_scheduler=cosine --set validation_split=0.1 --set text_batch_size=32 \
    --set context_size=256 --set seed=42 --out "$SAE" > "$OUT/train.stdout" 2> "$OUT/train.stderr"
fi

log "sae eval (native)"
/usr/bin/time -v "$BIN" sae eval --sae "$SAE" --model "$MODEL" --data "$TEXT" --threads "$THREADS" \
  --json "$OUT/eval.json" --save-tokens "$OUT/heldout_tokens.jsonl" > "$OUT/eval.stdout" 2> "$OUT/eval.time"
cat "$OUT/eval.stdout"

for fmt in saelens sparsify; do
  rm -rf "$OUT/$fmt"
  "$BIN" sae export --sae "$SAE" --format $fmt --out "$OUT/$fmt" --quiet
  log "sae eval ($fmt)"
  "$BIN" sae eval --sae "$OUT/$fmt" --model "$MODEL" --data "$TEXT" --holdout 0.1 --threads "$THREADS" --quiet \
    --json "$OUT/eval_$fmt.json"
done

log "PyTorch reference on the same held-out sequences"
"$PY" "$ROOT/tests/reference/sae_eval_reference.py" --model-dir "$HF" --sae "$SAE" --site model.layers.2 \
  --tokens "$OUT/heldout_tokens.jsonl" --out "$OUT/reference.json" > /dev/null

log "dashboard: every latent over the whole subset"
rm -rf "$OUT/dash"
/usr/bin/time -v "$BIN" sae features --sae "$SAE" --model "$MODEL" --data "$TEXT" --threads "$THREADS" \
  --html "$OUT/dash" > "$OUT/dash.stdout" 2> "$OUT/dash.time"
cat "$OUT/dash.stdout"

if [ -x "$CHROMIUM" ]; then
  FEATURE=$("$PY" -c "
import json; s = open('$OUT/dash/data/index.js').read(); j = json.loads(s[s.index('=') + 1:s.rindex(';')])
f = j['fields']; rows = sorted(j['rows'], key=lambda r: -r[f.index('max')]); print(rows[len(rows) // 10][f.index('id')])")
  shot() {  # name url-hash
    "$CHROMIUM" --headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking \
      --user-data-dir="$OUT/chromium-profile" --hide-scrollbars --window-size=1400,1100 --virtual-time-budget=3000 \
      --screenshot="$OUT/$1.png" "file://$OUT/dash/index.html$2" > /dev/null 2>&1 || true
  }
  shot index "" ; shot feature "#feature=$FEATURE"; shot index_sorted "#sort=max&dir=desc&q=the"
  "$CHROMIUM" --headless --no-sandbox --disable-gpu --no-first-run --user-data-dir="$OUT/chromium-profile" \
    --virtual-time-budget=5000 --dump-dom "file://$OUT/dash/index.html#selftest" 2>/dev/null \
    | "$PY" -c "import sys,re,html; m=re.search(r'<pre id=\"selftest-result\">(.*?)</pre>', sys.stdin.read(), re.S); print(html.unescape(m.group(1)) if m else '{\"ok\": false}')" \
    > "$OUT/selftest.json"
fi

"$PY" - "$OUT" <<'EOF'
import json, re, sys
out = sys.argv[1]
def peak(path):
    t = open(path).read()
    kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", t).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", t).group(1)
    s = 0.0
    for part in wall.split(":"):
        s = s * 60 + float(part)
    return {"peak_rss_mb": round(kb / 1024, 1), "wall_s": round(s, 2)}
e, r = json.load(open(f"{out}/eval.json")), json.load(open(f"{out}/reference.json"))
summary = {
    "sae": e["sae"], "data": e["data"],
    "ours": {"reconstruction": {k: e["reconstruction"][k] for k in ("mse", "fvu", "explained_variance", "cosine")},
             "sparsity": {k: e["sparsity"][k] for k in ("l0", "dead_features", "practically_dead_features", "dense_features")},
             "downstream": e["downstream"], "quality_score": e["original_report"]["quality_score"],
             "verdict": e["original_report"]["verdict"]},
    "pytorch_reference": {"downstream": r["downstream"], "reconstruction": r["reconstruction"], "tokens": r["tokens"]},
    "ce_loss_recovered": {"ours": e["downstream"]["ce_loss_score"], "pytorch": r["downstream"]["ce_loss_score"]},
    "formats": {f: json.load(open(f"{out}/eval_{f}.json"))["downstream"]["ce_loss_score"] for f in ("saelens", "sparsify")},
    "eval_run": peak(f"{out}/eval.time"),
    "dashboard_run": peak(f"{out}/dash.time"),
}
try:
    summary["dashboard_selftest"] = json.load(open(f"{out}/selftest.json"))
except Exception as ex:
    summary["dashboard_selftest"] = str(ex)
json.dump(summary, open(f"{out}/summary.json", "w"), indent=2)
print(json.dumps(summary, indent=2))
EOF
