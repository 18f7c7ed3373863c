# Packed-sequence ops vs an independent PyTorch reference (tests/ops/check_packed.py):
# packed_ops_dump runs document-masked attention and per-token RoPE on the CPU backend and
# writes inputs and outputs as safetensors; the script recomputes them in float64 torch with
# an explicit block-diagonal mask and explicit position ids.
add_executable(packed_ops_dump ${CMAKE_CURRENT_SOURCE_DIR}/ops/packed_dump.cpp)
target_link_libraries(packed_ops_dump PRIVATE primus_lib)
set_target_properties(packed_ops_dump PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)
add_test(NAME reference.packed_ops_vs_pytorch
         COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/ops/check_packed.py
                 --dump $<TARGET_FILE:packed_ops_dump>
                 --workdir ${CMAKE_BINARY_DIR}/reference_packed_ops)
set_tests_properties(reference.packed_ops_vs_pytorch PROPERTIES TIMEOUT 300)
