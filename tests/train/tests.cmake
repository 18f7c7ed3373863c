# The training loop through the `primus` binary: kill -9 at random moments and resume,
# SIGTERM saves; the resumed history equals an uninterrupted run bit for bit (tests/train/).
add_test(NAME train_kill_resume COMMAND ${CMAKE_CURRENT_LIST_DIR}/kill_resume.sh $<TARGET_FILE:primus> 20)
set_tests_properties(train_kill_resume PROPERTIES LABELS "train" TIMEOUT 600)
# The same for a tiny MoE model: sigmoid routing with the aux-loss-free expert bias (updated
# after every step, saved with the model), the sequence aux loss, the z-loss and token dropping.
add_test(NAME train_kill_resume_moe
         COMMAND ${CMAKE_CURRENT_LIST_DIR}/kill_resume.sh $<TARGET_FILE:primus> 10
                 --set num_experts=4 --set moe_router_topk=2 --set moe_ffn_hidden_size=64
                 --set moe_router_score_function=sigmoid --set moe_router_enable_expert_bias=true
                 --set moe_router_bias_update_rate=0.01 --set moe_router_load_balancing_type=seq_aux_loss
                 --set moe_aux_loss_coeff=0.01 --set moe_z_loss_coeff=0.001 --set moe_expert_capacity_factor=1.25)
set_tests_properties(train_kill_resume_moe PROPERTIES LABELS "train;moe" TIMEOUT 600)
# Post-training (tiny_chat-posttrain.yaml, token-id chat data): packed SFT with LoRA, and DPO
# (its reference log-probs are computed before the first step and must survive the kills).
add_test(NAME train_kill_resume_sft_lora
         COMMAND ${CMAKE_COMMAND} -E env KILL_RESUME_EXP=${CMAKE_CURRENT_LIST_DIR}/tiny_chat-posttrain.yaml
                 ${CMAKE_CURRENT_LIST_DIR}/kill_resume.sh $<TARGET_FILE:primus> 8
                 --set data_path=${CMAKE_CURRENT_LIST_DIR}/tiny_chat_ids.jsonl --set peft=lora --set lora_dim=4)
set_tests_properties(train_kill_resume_sft_lora PROPERTIES LABELS "train;posttrain" TIMEOUT 600)
add_test(NAME train_kill_resume_dpo
         COMMAND ${CMAKE_COMMAND} -E env KILL_RESUME_EXP=${CMAKE_CURRENT_LIST_DIR}/tiny_chat-posttrain.yaml
                 ${CMAKE_CURRENT_LIST_DIR}/kill_resume.sh $<TARGET_FILE:primus> 8
                 --set data_path=${CMAKE_CURRENT_LIST_DIR}/tiny_pairs_ids.jsonl --set dpo=true --set packing=false)
set_tests_properties(train_kill_resume_dpo PROPERTIES LABELS "train;posttrain" TIMEOUT 600)
if(MPI_C_FOUND)
  # DP2, TP2+SP and a TP2 -> TP1 resume through `primus train` under mpirun (tests/train/).
  add_test(NAME train_parallel_layouts
           COMMAND ${CMAKE_CURRENT_LIST_DIR}/parallel_train.sh $<TARGET_FILE:primus> ${MPIEXEC_EXECUTABLE})
  set_tests_properties(train_parallel_layouts PROPERTIES LABELS "train;parallel" TIMEOUT 600 PROCESSORS 2
                       RESOURCE_LOCK primus_mpi)
endif()
if(MPI_C_FOUND)
  # SIGTERM to examples/run_pretrain.sh (mpirun and env launchers) saves a checkpoint and exits 0.
  add_test(NAME train_launcher_stop COMMAND ${CMAKE_CURRENT_LIST_DIR}/launcher_stop.sh $<TARGET_FILE:primus>)
  set_tests_properties(train_launcher_stop PROPERTIES LABELS "train;parallel" TIMEOUT 300 PROCESSORS 2
                       RESOURCE_LOCK primus_mpi)
endif()
