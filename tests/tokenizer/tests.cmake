# Tokenizer parity against HuggingFace tokenizers (Node + @anush008/tokenizers, installed by
# ./setup.sh into third_party/npm): the real Llama 3.1 tokenizer.json on the whole Brown
# corpus and tests/data/tokenizer_edge_cases.txt, plus small Metaspace/byte-fallback files.
add_executable(tokenizer_dump ${CMAKE_CURRENT_LIST_DIR}/tokenizer_dump.cpp)
target_link_libraries(tokenizer_dump PRIVATE primus_lib)
set_target_properties(tokenizer_dump PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)

find_program(PRIMUS_NODE node)
if(NOT PRIMUS_NODE)
  set(PRIMUS_NODE /usr/bin/node)  # the test then fails saying node is missing: run ./setup.sh
endif()
add_test(NAME tokenizer_parity_llama3_brown
         COMMAND ${PRIMUS_NODE} ${CMAKE_CURRENT_LIST_DIR}/parity.js --dump $<TARGET_FILE:tokenizer_dump>)
set_tests_properties(tokenizer_parity_llama3_brown PROPERTIES TIMEOUT 600 LABELS "tokenizer;parity")

set(PRIMUS_SPM_FIXTURES spm_style_prepend spm_style_metaspace)
if(ICU_FOUND)  # NFC normalizer (Qwen style) needs the ICU build
  list(APPEND PRIMUS_SPM_FIXTURES spm_style_nfc)
endif()
foreach(fixture ${PRIMUS_SPM_FIXTURES})
  add_test(NAME tokenizer_parity_${fixture}
           COMMAND ${PRIMUS_NODE} ${CMAKE_CURRENT_LIST_DIR}/parity.js --dump $<TARGET_FILE:tokenizer_dump>
                   --tokenizer ${CMAKE_SOURCE_DIR}/tests/data/tokenizer_${fixture}.json --quick)
  set_tests_properties(tokenizer_parity_${fixture} PROPERTIES TIMEOUT 300 LABELS "tokenizer;parity")
endforeach()

# GPT-2 layout (ByteLevel regex + prefix space, merges without ignore_merges) on the real
# Llama 3 vocabulary and merges, written to a temporary tokenizer.json by parity.js.
add_test(NAME tokenizer_parity_gpt2_style
         COMMAND ${PRIMUS_NODE} ${CMAKE_CURRENT_LIST_DIR}/parity.js --dump $<TARGET_FILE:tokenizer_dump> --quick
                 --gpt2-style)
set_tests_properties(tokenizer_parity_gpt2_style PROPERTIES TIMEOUT 300 LABELS "tokenizer;parity")
