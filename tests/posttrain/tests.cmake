# Post-training's proof task through the `primus` binary (tests/posttrain/sft_dpo_task.sh):
# SFT teaches a tiny model to reverse held-out letter strings (exact match ~0 -> > 50%, read
# with `primus generate --chat`), then DPO with LoRA on preference pairs reaches
# rewards/accuracies > 0.9 without lowering it. A few minutes on 2 CPU cores.
add_test(NAME posttrain_sft_dpo_task COMMAND ${CMAKE_CURRENT_LIST_DIR}/sft_dpo_task.sh $<TARGET_FILE:primus>)
set_tests_properties(posttrain_sft_dpo_task PROPERTIES LABELS "train;posttrain" TIMEOUT 900 PROCESSORS 2)
