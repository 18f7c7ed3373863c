#!/usr/bin/env node
// HuggingFace tokenizers (Rust, via @anush008/tokenizers) side of bench_tokenizer: encodes
// every "text" of a JSONL file one document at a time, warm-up pass first, and prints JSON
// with tokens per CPU-second. Run with RAYON_NUM_THREADS=1 so the library uses one core.
// usage: node tokenizer_hf.js TOKENIZER_JSON DOCS_JSONL REPEATS
'use strict';
const fs = require('fs');
const path = require('path');
const { Tokenizer } = require(path.join(__dirname, '..', 'third_party', 'npm', 'node_modules', '@anush008', 'tokenizers'));

(async () => {
  const [tokPath, docsPath, repeatsArg] = process.argv.slice(2);
  const tok = Tokenizer.fromFile(tokPath);
  const docs = fs.readFileSync(docsPath, 'utf8').split('\n').filter((l) => l.length).map((l) => JSON.parse(l).text);
  const bytes = docs.reduce((a, d) => a + Buffer.byteLength(d), 0);
  const repeats = Number(repeatsArg || 3);
  let tokens = 0;
  for (const d of docs) tokens += (await tok.encode(d, null, { addSpecialTokens: false })).getLength();  // warm-up
  let best = null;
  for (let r = 0; r < repeats; ++r) {
    const c0 = process.cpuUsage(), t0 = process.hrtime.bigint();
    let n = 0;
    for (const d of docs) n += (await tok.encode(d, null, { addSpecialTokens: false })).getLength();
    const cpu = (process.cpuUsage(c0).user + process.cpuUsage(c0).system) / 1e6;
    const wall = Number(process.hrtime.bigint() - t0) / 1e9;
    if (!best || cpu < best.cpu) best = { cpu, wall, n };
  }
  console.log(JSON.stringify({ tokens: best.n, bytes, cpu_seconds: best.cpu, wall_seconds: best.wall,
                               tokens_per_cpu_second: best.n / best.cpu, mb_per_cpu_second: bytes / 1e6 / best.cpu }));
})();
