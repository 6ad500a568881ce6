// The HF `tokenizers` peer of bench_tokenizer (the Rust library through its Node binding, e.g.
// `npm install tokenizers@0.23.2`; NODE_PATH or a node_modules above this file must hold it).
//   RAYON_NUM_THREADS=1 node tokenizer_peer.js TOKENIZER_JSON TEXT_FILE REPEATS
// Encodes the text line by line (newline kept), no special tokens, through encodeBatch in chunks of 1024
// lines (one call per line would mostly time the binding's per-call promise); RAYON_NUM_THREADS=1 keeps the
// batch on one thread. One warm-up pass, then the median of REPEATS passes. Prints {"tokens", "tokens_per_s", "tokens_per_cpu_s", "fingerprint"} (FNV-1a over the little-endian id bytes).
'use strict';
const fs = require('fs');
let mod;
try { mod = require('tokenizers'); } catch (e) { mod = require(process.env.MLXTERP_NODE_TOKENIZERS || '/tmp/npmtok2/node_modules/tokenizers'); }

async function main() {
  const [file, textFile, repeatsArg] = process.argv.slice(2);
  const tok = mod.Tokenizer.fromFile(file);
  const text = fs.readFileSync(textFile, 'utf8');
  const lines = text.match(/[^\n]*\n|[^\n]+$/g) || [];
  let n = 0;
  let h = 1469598103934665603n;
  const mask = (1n << 64n) - 1n;
  const chunks = [];
  for (let i = 0; i < lines.length; i += 1024) chunks.push(lines.slice(i, i + 1024));
  const encodeAll = async () => {
    const out = [];
    for (const c of chunks) for (const e of await tok.encodeBatch(c, { addSpecialTokens: false })) out.push(e);
    return out;
  };
  for (const e of await encodeAll()) {
    const ids = e.getIds();
    n += ids.length;
    for (const id of ids) {
      for (let b = 0; b < 4; ++b) {
        h ^= BigInt((id >>> (8 * b)) & 0xff);
        h = (h * 1099511628211n) & mask;
      }
    }
  }
  const secs = [], cpu = [];
  for (let r = 0; r < Number(repeatsArg || 5); ++r) {
    const t0 = process.hrtime.bigint();
    const c0 = process.cpuUsage();
    await encodeAll();
    const c = process.cpuUsage(c0);
    cpu.push((c.user + c.system) / 1e6);
    secs.push(Number(process.hrtime.bigint() - t0) / 1e9);
  }
  secs.sort((a, b) => a - b);
  cpu.sort((a, b) => a - b);
  process.stdout.write(JSON.stringify({ tokens: n, tokens_per_s: n / secs[secs.length >> 1],
    tokens_per_cpu_s: n / cpu[cpu.length >> 1], fingerprint: h.toString() }));
}
main().catch((e) => { process.stderr.write(String(e && e.stack ? e.stack : e) + '\n'); process.exit(1); });
