# The training loop through the `primus` binary: kill -9 at random moments and resume,
# SIGTERM saves; the resumed history equals an uninterrupted run bit for bit (tests/train/).
add_test(NAME train_kill_resume COMMAND ${CMAKE_CURRENT_LIST_DIR}/kill_resume.sh $<TARGET_FILE:primus> 20)
set_tests_properties(train_kill_resume PROPERTIES LABELS "train" TIMEOUT 600)
