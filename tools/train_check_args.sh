#!/usr/bin/env bash
# Sourced by tools/gpu_train_check.sh (GPU machine) and tools/cpu_curve.sh (build machine): the one
# definition of the loss-curve check's training run, so that the CPU fp32 curve computed on the
# build machine and the CUDA bf16 curve computed on the GPU machine come from the same experiment.
#   train_check_args ITERS DATA_PREFIX TOKENIZER_JSON
# sets the array TRAIN_CHECK_ARGS (everything but the device, the precision and where the
# metrics go) and TRAIN_CHECK_CONFIG_ARGS (the same without the two host-specific paths: what
# the CPU curve's JSON records and the GPU side compares before it trusts the curve).
train_check_args() {
  local iters=$1 data=$2 tokenizer=$3
  TRAIN_CHECK_CONFIG_ARGS=(--config examples/megatron/llama_tiny-pretrain.yaml
    --set train_iters="$iters" --set lr_decay_iters="$iters"
    --set seq_length=128 --set micro_batch_size=4 --set global_batch_size=8 --set log_interval=1
    --set eval_iters=0 --set save=null --set watchdog_minutes=5)
  TRAIN_CHECK_ARGS=("${TRAIN_CHECK_CONFIG_ARGS[@]}" --set data_path="$data" --set tokenizer_model="$tokenizer")
}

# The per-device options: fp32 on the CPU, bf16 on CUDA.
train_check_device_args() {
  local dev=$1 bf16=false
  [[ $dev == cuda ]] && bf16=true
  TRAIN_CHECK_DEVICE_ARGS=(--set device="$dev" --set bf16=$bf16)
}
