# TensorBoard event files checked by an independent Python reader (tests/tensorboard/).
add_test(NAME tensorboard_tfevents_python
         COMMAND /usr/bin/python3 ${CMAKE_CURRENT_LIST_DIR}/test_tfevents.py
                 --tests-binary $<TARGET_FILE:primus_tests>)
set_tests_properties(tensorboard_tfevents_python PROPERTIES LABELS "tensorboard" TIMEOUT 120)
