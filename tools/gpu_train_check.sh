#!/usr/bin/env bash
# On the GPU machine: the same training run on the CPU path (fp32) and the CUDA path (bf16),
# same init and data, and how far their loss curves are apart (issue #5's end-to-end check).
# The Brown corpus and the tokenizer travel in the bundle's data/ (tools/gpu_bundle.sh).
#   bash tools/gpu_train_check.sh [ITERS]        (default 200; logs and curves in $OUT)
set -u -o pipefail
ITERS=${1:-200}
ROOT=$(pwd)
source "$ROOT/tools/gpu_env.sh" || exit 1
OUT=${OUT:-/tmp/primus_train_check}
mkdir -p "$OUT"
DATA=$BUNDLE_DIR/data
common=(--config examples/megatron/llama_tiny-pretrain.yaml --set data_path="$DATA/brown_llama3_text_document"
        --set tokenizer_model="$DATA/tokenizer.json" --set train_iters="$ITERS" --set lr_decay_iters="$ITERS"
        --set seq_length=128 --set micro_batch_size=4 --set global_batch_size=8 --set log_interval=1
        --set eval_iters=0 --set save=null --set watchdog_minutes=5)
for dev in cpu cuda; do
  bf16=false; [[ $dev == cuda ]] && bf16=true
  ( t0=$SECONDS
    PRIMUS_EXP_NAME=check_$dev timeout 500 "$B/primus" train "${common[@]}" --set device=$dev --set bf16=$bf16 \
      --set tensorboard_dir="$OUT/tb_$dev" >"$OUT/train_$dev.log" 2>&1
    echo "train on $dev: rc=$? in $((SECONDS - t0)) s" ) &
done
wait
python3 - "$OUT/tb_cpu/metrics.jsonl" "$OUT/tb_cuda/metrics.jsonl" <<'PY'
import json, sys
def curve(p):
    out = {}
    try:
        for line in open(p):
            r = json.loads(line)
            if r.get("type") == "train": out[r["iteration"]] = r["lm_loss"]
    except FileNotFoundError:
        pass
    return out
cpu, gpu = curve(sys.argv[1]), curve(sys.argv[2])
common = sorted(set(cpu) & set(gpu))
if not common:
    print(json.dumps({"error": "no common iterations", "cpu": len(cpu), "cuda": len(gpu)})); sys.exit(1)
d = [abs(cpu[i] - gpu[i]) for i in common]
last = common[-50:]
res = {"iterations": len(common), "cpu_first": cpu[common[0]], "cpu_last": cpu[common[-1]],
       "cuda_first": gpu[common[0]], "cuda_last": gpu[common[-1]], "max_abs_diff": max(d),
       "mean_abs_diff": sum(d) / len(d),
       "mean_abs_diff_last50": sum(abs(cpu[i] - gpu[i]) for i in last) / len(last),
       "max_rel_diff": max(abs(cpu[i] - gpu[i]) / abs(cpu[i]) for i in common)}
print(json.dumps(res))
ok = res["max_rel_diff"] < 0.02
print("CPU fp32 vs CUDA bf16 loss curves " + ("agree" if ok else "DISAGREE") + " (max relative difference %.3g)" % res["max_rel_diff"])
sys.exit(0 if ok else 1)
PY
