# The training loop through the `primus` binary: kill -9 at random moments and resume,
# SIGTERM saves; the resumed history equals an uninterrupted run bit for bit (tests/train/).
add_test(NAME train_kill_resume COMMAND ${CMAKE_CURRENT_LIST_DIR}/kill_resume.sh $<TARGET_FILE:primus> 20)
set_tests_properties(train_kill_resume PROPERTIES LABELS "train" TIMEOUT 600)
if(MPI_C_FOUND)
  # DP2, TP2+SP and a TP2 -> TP1 resume through `primus train` under mpirun (tests/train/).
  add_test(NAME train_parallel_layouts
           COMMAND ${CMAKE_CURRENT_LIST_DIR}/parallel_train.sh $<TARGET_FILE:primus> ${MPIEXEC_EXECUTABLE})
  set_tests_properties(train_parallel_layouts PROPERTIES LABELS "train;parallel" TIMEOUT 600 PROCESSORS 2
                       RESOURCE_LOCK primus_mpi)
endif()
