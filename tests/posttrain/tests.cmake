# Post-training's proof task through the `primus` binary (tests/posttrain/sft_dpo_task.sh):
# SFT on demonstrations with one flawed phrasing teaches a tiny model to shift the letters of
# held-out words for two phrasings and to echo them for the third (exact match ~0 -> ~0.7, read
# with `primus generate --chat`); DPO on preference pairs that reject the echo raises it (~0.9),
# once full (rewards/accuracies > 0.9) and once with LoRA. Two to three minutes on 2 idle CPU cores.
add_test(NAME posttrain_sft_dpo_task COMMAND ${CMAKE_CURRENT_LIST_DIR}/sft_dpo_task.sh $<TARGET_FILE:primus>)
set_tests_properties(posttrain_sft_dpo_task PROPERTIES LABELS "train;posttrain" TIMEOUT 900 PROCESSORS 2)
