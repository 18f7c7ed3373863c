# GRPO's proof task through the `primus` binary (tests/rl/grpo_task.sh): a short SFT leaves a
# tiny model answering ~30% of the letter-shift prompts; GRPO with the exact-match reward
# raises the mean reward clearly; a run stopped and resumed mid-RL equals the straight one, and
# so does one on 2 data-parallel ranks.
add_test(NAME rl_grpo_task COMMAND ${CMAKE_CURRENT_LIST_DIR}/grpo_task.sh $<TARGET_FILE:primus> ""
                                   ${MPIEXEC_EXECUTABLE})
set_tests_properties(rl_grpo_task PROPERTIES LABELS "train;posttrain" TIMEOUT 900 PROCESSORS 2)
