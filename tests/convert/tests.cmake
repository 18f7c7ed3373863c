# `primus convert` vs an independent HF-layout PyTorch Llama (tests/convert/check_hf_import.py):
# the script writes HF directories, converts them with the built `primus`, and compares the
# logits of our model loaded from the checkpoint (convert_logits_dump) with its own.
add_executable(convert_logits_dump ${CMAKE_CURRENT_SOURCE_DIR}/convert/convert_logits_dump.cpp)
target_link_libraries(convert_logits_dump PRIVATE primus_lib)
set_target_properties(convert_logits_dump PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)
add_test(NAME convert.hf_import_logits_vs_pytorch
         COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/convert/check_hf_import.py
                 --primus $<TARGET_FILE:primus>
                 --dump $<TARGET_FILE:convert_logits_dump>
                 --workdir ${CMAKE_BINARY_DIR}/convert_reference)
set_tests_properties(convert.hf_import_logits_vs_pytorch PROPERTIES TIMEOUT 300)
