# Reference parity vs an independent PyTorch Llama (tests/reference/check_llama.py):
# reference_llama_dump runs our model on tiny configs and writes weights, batch and
# outputs as safetensors; the script recomputes everything in float64 PyTorch.
add_executable(reference_llama_dump ${CMAKE_CURRENT_SOURCE_DIR}/reference/llama_dump.cpp)
target_link_libraries(reference_llama_dump PRIVATE primus_lib)
set_target_properties(reference_llama_dump PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)
add_test(NAME reference.llama_parity_vs_pytorch
         COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/reference/check_llama.py
                 --dump $<TARGET_FILE:reference_llama_dump>
                 --workdir ${CMAKE_BINARY_DIR}/reference_llama)
set_tests_properties(reference.llama_parity_vs_pytorch PROPERTIES TIMEOUT 300)
