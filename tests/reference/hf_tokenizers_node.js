// Helper for make_tokenizer_goldens.py where Python `tokenizers` is not installed: the same Rust
// library (tokenizers 0.23.2) through its Node binding. Reads a JSON request on stdin:
//   {"module": "/path/to/node_modules/tokenizers", "jobs": [{"file": "tokenizer.json", "strings": [...],
//     "special_probe": "Hello world"}]}
// and writes {"version": ..., "results": [{"ids": [[...]], "decoded": [...], "with_special": [...]}]} on stdout.
'use strict';
const fs = require('fs');

async function main() {
  const req = JSON.parse(fs.readFileSync(0, 'utf8'));
  const mod = require(req.module);
  const version = require(require('path').join(req.module, 'package.json')).version;
  const results = [];
  for (const job of req.jobs) {
    const tok = mod.Tokenizer.fromFile(job.file);
    const ids = [], decoded = [];
    for (const s of job.strings) {
      const enc = await tok.encode(s, null, { addSpecialTokens: false });
      const v = Array.from(enc.getIds());
      ids.push(v);
      decoded.push(await tok.decode(v, false));
    }
    const ws = await tok.encode(job.special_probe, null, { addSpecialTokens: true });
    results.push({ ids, decoded, with_special: Array.from(ws.getIds()) });
  }
  process.stdout.write(JSON.stringify({ version, results }));
}

main().catch((e) => {
  process.stderr.write(String(e && e.stack ? e.stack : e) + '\n');
  process.exit(1);
});
