# Data pipeline script tests: an independent numpy reader of our .bin/.idx (Brown corpus
# end to end through `primus preprocess`), and Megatron's GPT indices recomputed with numpy.
add_executable(gpt_index_dump ${CMAKE_CURRENT_LIST_DIR}/gpt_index_dump.cpp)
target_link_libraries(gpt_index_dump PRIVATE primus_lib)
set_target_properties(gpt_index_dump PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)

add_test(NAME data_preprocess_brown_numpy_reader
         COMMAND /usr/bin/python3 ${CMAKE_CURRENT_LIST_DIR}/preprocess_brown_test.py
                 $<TARGET_FILE:primus> $<TARGET_FILE:tokenizer_dump>)
set_tests_properties(data_preprocess_brown_numpy_reader PROPERTIES TIMEOUT 600 LABELS "data")

add_test(NAME data_gpt_indices_vs_megatron_numpy
         COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/megatron_index_test.sh $<TARGET_FILE:primus> $<TARGET_FILE:gpt_index_dump>)
set_tests_properties(data_gpt_indices_vs_megatron_numpy PROPERTIES TIMEOUT 300 LABELS "data")
