#!/usr/bin/env bash
# Generation on the lent GPU (issue 20), in one call, from the repo root there, after a bundle
# made here (gpu_bundle.sh puts the HF peer hf_generate_bench.py in its py/; bench_generate is
# optional: without it `primus bench generate` runs the same benchmark):
#   BUNDLE_CONFIGURE=0 BUNDLE_TARGETS="primus primus_gpu_tests bench_generate" tools/gpu_bundle.sh build-gen2
# (the peer is also looked for in gpu_bundle/ and ../shared/anchors/)
# then, on the GPU machine (device tool, carry ["gpu_bundle"]):  OUT=$OUT bash tools/gpu_generate.sh
#
# Stages (GEN_STAGES, default "tests bench hf cli"):
#   tests  primus_gpu_tests GenerateCuda* + GenerateDevice* (device sampling == host sampling,
#          GQA split-K decode attention == decode_attention_cpu, greedy ids == the CPU decoder)
#   bench  bench_generate --shape 1b (Llama-3.2-1B, random bf16 weights) at each batch of BATCHES
#          (default "16 64"), PROMPT (128) prompt tokens, NEW (256) new tokens, greedy: device
#          sampling with CUDA graphs, without graphs, and the old host-sampling path for
#          comparison; one sampled run (T 0.7, top-p 0.9) at the first batch
#   hf     the peer hf_generate_bench.py (transformers generate, dynamic and static cache) at the
#          same batches, prompt and new tokens
#   cli    primus generate on the peer's saved weights and prompts (convert hf-to-primus), the
#          first batch: the same weights and prompts as HF's row
# Each step runs under a timeout, a failing step does not stop the others; logs and JSON under
# $OUT (big files under $WORK); the last lines are a summary table. The device tool allows 10
# minutes a call: run "tests bench" and "hf cli" as two calls on the warm machine, e.g.
#   GEN_STAGES="tests bench" OUT=$OUT bash tools/gpu_generate.sh
#   GEN_STAGES="hf cli" OUT=$OUT bash tools/gpu_generate.sh
set -u -o pipefail
ROOT=$(pwd)
# shellcheck source=tools/gpu_env.sh
source "$ROOT/tools/gpu_env.sh" || exit 1
OUT=${OUT:-/tmp/primus_generate}
# Large files (the peer's saved 1B model, the converted checkpoint: ~2.5 GB each) go to WORK,
# not OUT (the device tool sends OUT back).
WORK=${WORK:-/tmp/primus_generate_work}
mkdir -p "$OUT" "$WORK"
STAGES=${GEN_STAGES:-tests bench hf cli}
BATCHES=${BATCHES:-16 64}
PROMPT=${PROMPT:-128}
NEW=${NEW:-256}
ROWS=()  # summary rows: "system|batch|new tok/s|decode tok/s|ms/step|roofline"
STATUS=()

peer=""
for p in "$PY/hf_generate_bench.py" "$ROOT/gpu_bundle/hf_generate_bench.py" "$ROOT/../shared/anchors/hf_generate_bench.py"; do
  if [[ -f "$p" ]]; then peer=$p; break; fi
done

# field FILE KEY: the first JSON line of FILE that has KEY, its value (rounded), or "-".
field() {
  python3 - "$1" "$2" <<'PY' 2>/dev/null || echo "-"
import json, sys
for line in open(sys.argv[1]):
    line = line.strip()
    if not line.startswith("{"):
        continue
    try:
        j = json.loads(line)
    except ValueError:
        continue
    if sys.argv[2] in j:
        v = j[sys.argv[2]]
        print(round(v, 3) if isinstance(v, float) else v)
        break
else:
    print("-")
PY
}

if [[ " $STAGES " == *" tests "* ]]; then
  t0=$SECONDS
  timeout 400 "$B/primus_gpu_tests" --gtest_filter='GenerateCuda*:GenerateDevice*' >"$OUT/gpu_tests.log" 2>&1
  rc=$?
  line="gpu tests: rc=$rc in $((SECONDS - t0)) s: $(grep -E '^\[  (PASSED|FAILED)  \]' "$OUT/gpu_tests.log" | tr '\n' ' ')"
  echo "$line"
  grep -E '^\[  FAILED|Failure|greedy \]' "$OUT/gpu_tests.log" | head -20
  STATUS+=("$line")
fi

# bench_generate when the bundle has it, else the same benchmark as `primus bench generate`.
if [[ -x "$B/bench_generate" ]]; then BENCH=("$B/bench_generate"); else BENCH=("$B/primus" bench generate); fi
bench() {  # name batch [bench options...]
  local name=$1 batch=$2
  shift 2
  local log="$OUT/bench_${name}_b${batch}.json"
  timeout 500 "${BENCH[@]}" --shape 1b --device cuda --batch "$batch" --prompt-len "$PROMPT" --new-tokens "$NEW" \
    --rounds 3 --warmup 1 "$@" >"$log" 2>"$OUT/bench_${name}_b${batch}.err"
  local rc=$?
  echo "bench $name batch $batch: rc=$rc $(grep -m1 '^{' "$log")"
  local gf
  gf=$(field "$log" graph_failure)
  [[ -n "$gf" && "$gf" != "-" ]] && echo "  CUDA graph capture failed: $gf"
  [[ $rc != 0 ]] && tail -5 "$OUT/bench_${name}_b${batch}.err"
  STATUS+=("bench $name b$batch rc=$rc")
  ROWS+=("primus $name|$batch|$(field "$log" new_tokens_per_s)|$(field "$log" decode_tokens_per_s)|$(field "$log" decode_ms_per_step)|$(field "$log" roofline_fraction) of $(field "$log" roofline_ms_per_step) ms")
}
if [[ " $STAGES " == *" bench "* ]]; then
  for b in $BATCHES; do
    bench device-greedy "$b"
    bench device-greedy-nograph "$b" --no-cuda-graphs
    bench host-greedy "$b" --host-sampling
  done
  first=${BATCHES%% *}
  bench device-T0.7-p0.9 "$first" --temperature 0.7 --top-p 0.9
fi

if [[ " $STAGES " == *" hf "* ]]; then
  if [[ -z "$peer" ]]; then
    echo "hf: hf_generate_bench.py not found (bundle py/, gpu_bundle/ or ../shared/anchors/)"
    STATUS+=("hf: peer missing")
  else
    for b in $BATCHES; do
      mkdir -p "$WORK/hf_b$b"
      timeout 420 python3 "$peer" "$WORK/hf_b$b" "$b" "$PROMPT" "$NEW" >"$OUT/hf_b$b.log" 2>"$OUT/hf_b$b.err"
      rc=$?
      echo "hf batch $b: rc=$rc $(grep '^{' "$OUT/hf_b$b.log" | tr '\n' ' ')"
      [[ $rc != 0 ]] && tail -5 "$OUT/hf_b$b.err"
      grep -i "static cache failed" "$OUT/hf_b$b.log"
      STATUS+=("hf b$b rc=$rc")
      dyn=$(python3 -c 'import json,sys
for l in open(sys.argv[1]):
    if l.startswith("{"):
        j=json.loads(l)
        if j.get("system")==sys.argv[2]: print(j["new_tokens_per_s"]); break
else: print("-")' "$OUT/hf_b$b.log" hf-transformers-generate 2>/dev/null || echo -)
      sta=$(python3 -c 'import json,sys
for l in open(sys.argv[1]):
    if l.startswith("{"):
        j=json.loads(l)
        if j.get("system")==sys.argv[2]: print(j["new_tokens_per_s"]); break
else: print("-")' "$OUT/hf_b$b.log" hf-generate-static-cache 2>/dev/null || echo -)
      ROWS+=("HF generate, dynamic cache|$b|$dyn|-|-|-")
      ROWS+=("HF generate, static compiled cache|$b|$sta|-|-|-")
    done
  fi
fi

if [[ " $STAGES " == *" cli "* ]]; then
  b=${BATCHES%% *}
  if [[ -f "$WORK/hf_b$b/prompts.json" && -d "$WORK/hf_b$b/hf" ]]; then
    rm -rf "$WORK/primus_1b"
    timeout 300 "$B/primus" convert hf-to-primus --hf-dir "$WORK/hf_b$b/hf" --output "$WORK/primus_1b" >"$OUT/convert.log" 2>&1
    rc=$?
    echo "convert hf-to-primus: rc=$rc"
    args=()
    while read -r ids; do args+=(--prompt-ids "$ids"); done < <(python3 -c 'import json,sys
for p in json.load(open(sys.argv[1])): print(",".join(map(str, p)))' "$WORK/hf_b$b/prompts.json")
    timeout 300 "$B/primus" generate --load "$WORK/primus_1b" --device cuda "${args[@]}" --max-new-tokens "$NEW" \
      --quiet --output-json "$OUT/cli_b$b.json" >"$OUT/cli_b$b.log" 2>&1
    rc=$?
    echo "primus generate (HF weights and prompts) batch $b: rc=$rc $(python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print({k: j[k] for k in ("tokens_per_s", "decode_tokens_per_s", "prefill_tokens_per_s", "decode_ms_per_step", "roofline_ms_per_step_3_35TBps")})' "$OUT/cli_b$b.json" 2>/dev/null)"
    [[ $rc != 0 ]] && tail -5 "$OUT/cli_b$b.log"
    STATUS+=("cli b$b rc=$rc")
    python3 - "$OUT/cli_b$b.json" "$OUT/hf_b$b.log" "$PROMPT" <<'PY' 2>/dev/null
import json, sys
cli = json.load(open(sys.argv[1]))
hf = [json.loads(l) for l in open(sys.argv[2]) if l.startswith("{")]
first = next((j["first_ids"] for j in hf if "first_ids" in j), None)
print("first 8 ids of prompt 0: primus", cli["generated_ids"][0][:8], "HF", first)
PY
    ROWS+=("primus generate CLI (HF weights)|$b|$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["tokens_per_s"],1))' "$OUT/cli_b$b.json" 2>/dev/null || echo -)|$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["decode_tokens_per_s"],1))' "$OUT/cli_b$b.json" 2>/dev/null || echo -)|-|-")
  else
    echo "cli: no HF weights/prompts in $WORK/hf_b$b (run the hf stage first, on the same machine)"
    STATUS+=("cli: skipped")
  fi
fi

echo
echo "== generation, Llama-3.2-1B shape, prompt $PROMPT, $NEW new tokens, bf16, $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1) =="
printf '%-38s | %5s | %12s | %12s | %8s | %s\n' "system" "batch" "new tok/s" "decode tok/s" "ms/step" "roofline fraction"
for r in "${ROWS[@]}"; do
  IFS='|' read -r s b n d m f <<<"$r"
  printf '%-38s | %5s | %12s | %12s | %8s | %s\n' "$s" "$b" "$n" "$d" "$m" "$f"
done
echo "steps: ${STATUS[*]}"
