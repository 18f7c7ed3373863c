# Chat templates (src/data/chat): parity of our Jinja renderer with Python's jinja2 configured
# as transformers' apply_chat_template configures it (tests/chat/check_chat_templates.py), on
# tests/data/chat_templates/ (Qwen2.5, Mistral, Llama 3.1 with tools, a feature-heavy ChatML;
# conversations.json; snippets.json) and the real Llama 3.1 tokenizer_config.json template
# when ./setup.sh installed it (skipped otherwise).
add_executable(chat_template_dump ${CMAKE_CURRENT_LIST_DIR}/chat_template_dump.cpp)
target_link_libraries(chat_template_dump PRIVATE primus_lib)
set_target_properties(chat_template_dump PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)
# The reference is Debian's python3-jinja2 (/usr/bin/python3); a python3 on PATH that has
# jinja2 is used when the system one lacks it (the test fails saying what to install otherwise).
set(PRIMUS_JINJA_PYTHON /usr/bin/python3)
execute_process(COMMAND ${PRIMUS_JINJA_PYTHON} -c "import jinja2" RESULT_VARIABLE _primus_jinja_rc
                OUTPUT_QUIET ERROR_QUIET)
if(NOT _primus_jinja_rc EQUAL 0)
  find_program(_primus_path_python3 NAMES python3)
  if(_primus_path_python3)
    execute_process(COMMAND ${_primus_path_python3} -c "import jinja2" RESULT_VARIABLE _primus_jinja_rc
                    OUTPUT_QUIET ERROR_QUIET)
    if(_primus_jinja_rc EQUAL 0)
      set(PRIMUS_JINJA_PYTHON ${_primus_path_python3})
    endif()
  endif()
endif()
add_test(NAME chat.template_parity
         COMMAND ${PRIMUS_JINJA_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/check_chat_templates.py
                 --dump $<TARGET_FILE:chat_template_dump>)
set_tests_properties(chat.template_parity PROPERTIES TIMEOUT 300 LABELS "chat;parity")
