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

# The user's path end to end: import -> `primus train` (load + finetune) -> export, bit for
# bit at learning rate 0 (tests/convert/check_finetune_from_hf.py).
add_test(NAME convert.finetune_from_hf_round_trip
         COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/convert/check_finetune_from_hf.py
                 --primus $<TARGET_FILE:primus>
                 --source-dir ${CMAKE_SOURCE_DIR}
                 --workdir ${CMAKE_BINARY_DIR}/convert_finetune)
set_tests_properties(convert.finetune_from_hf_round_trip PROPERTIES TIMEOUT 300)

# DeepSeek-V2/V3 import vs an independent HF-layout DeepSeek in PyTorch (MLA with interleaved
# rotary rows, YaRN, V3's grouped sigmoid routing with the expert bias, V2's softmax routing).
add_test(NAME convert.hf_import_deepseek_logits_vs_pytorch
         COMMAND /usr/bin/python3 ${CMAKE_CURRENT_SOURCE_DIR}/convert/check_hf_import_deepseek.py
                 --primus $<TARGET_FILE:primus>
                 --dump $<TARGET_FILE:convert_logits_dump>
                 --workdir ${CMAKE_BINARY_DIR}/convert_deepseek)
set_tests_properties(convert.hf_import_deepseek_logits_vs_pytorch PROPERTIES TIMEOUT 300)
