# Greedy generation vs an independent PyTorch Llama (tests/reference/check_llama.py's
# model, its own loop without a cache): generate_test_checkpoint saves tiny checkpoints,
# `primus generate` decodes them, check_generate.py recomputes every step in float64.
add_executable(generate_test_checkpoint ${CMAKE_CURRENT_LIST_DIR}/make_checkpoint.cpp)
target_link_libraries(generate_test_checkpoint PRIVATE primus_lib)
set_target_properties(generate_test_checkpoint PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)
add_test(NAME generate.greedy_vs_pytorch
         COMMAND /usr/bin/python3 ${CMAKE_CURRENT_LIST_DIR}/check_generate.py
                 --primus $<TARGET_FILE:primus>
                 --make-checkpoint $<TARGET_FILE:generate_test_checkpoint>
                 --workdir ${CMAKE_BINARY_DIR}/generate_reference)
set_tests_properties(generate.greedy_vs_pytorch PROPERTIES TIMEOUT 300 LABELS "generate;parity")
