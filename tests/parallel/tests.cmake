# Multi-rank tests of src/parallel: real MPI processes (Open MPI, oversubscribed on the
# CI's 2 cores), the launcher scripts, and failure behaviour. Included by tests/CMakeLists.txt.
set(PRIMUS_PARALLEL_TEST_DIR ${CMAKE_CURRENT_LIST_DIR})

# launch_probe stands in for `primus train` in the launcher tests (also tests/slurm).
add_executable(primus_launch_probe ${PRIMUS_PARALLEL_TEST_DIR}/launch_probe.cpp)
target_link_libraries(primus_launch_probe PRIVATE primus_lib)
set_target_properties(primus_launch_probe PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)

if(MPI_C_FOUND)
  add_executable(primus_mpi_failure_probe ${PRIMUS_PARALLEL_TEST_DIR}/mpi_failure_probe.cpp)
  target_link_libraries(primus_mpi_failure_probe PRIVATE primus_lib)
  set_target_properties(primus_mpi_failure_probe PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)

  # CI runs as root in a container: Open MPI refuses root unless told twice.
  set(PRIMUS_MPI_TEST_ENV OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
      OMPI_MCA_rmaps_base_oversubscribe=1)
  # A gtest binary (main: mpi_test_main.h) run under `mpirun -np 2` and `-np 4` as
  # parallel.<name>_np2/_np4, one BLAS thread per rank on the CI's 2 cores.
  function(primus_mpi_test name target source timeout)
    add_executable(${target} ${PRIMUS_PARALLEL_TEST_DIR}/${source})
    target_link_libraries(${target} PRIVATE primus_lib GTest::gtest)
    set_target_properties(${target} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)
    foreach(np 2 4)
      add_test(NAME parallel.${name}_np${np}
               COMMAND ${MPIEXEC_EXECUTABLE} -np ${np} --oversubscribe --bind-to none $<TARGET_FILE:${target}>)
      set_tests_properties(parallel.${name}_np${np} PROPERTIES
        ENVIRONMENT "${PRIMUS_MPI_TEST_ENV};OPENBLAS_NUM_THREADS=1" TIMEOUT ${timeout} PROCESSORS 2
        RESOURCE_LOCK primus_mpi)
    endforeach()
  endfunction()

  # Every collective of the MPI communicator, GradBuckets and the distributed optimizer's step.
  primus_mpi_test(mpi_collectives primus_mpi_tests test_mpi_collectives.cpp 180)
  # Tensor / sequence parallel Llama vs the single-rank model (TP2, TP2+SP; DP2 x TP2 at np 4).
  primus_mpi_test(tensor_parallel primus_tp_tests test_tensor_parallel.cpp 300)
  # Pipeline parallel Llama (1F1B, interleaved; x TP/SP, x DP at np 4) vs the single-rank model.
  primus_mpi_test(pipeline_parallel primus_pp_tests test_pipeline_parallel.cpp 300)
  # Expert parallelism: the token exchange (both dispatchers), and a tiny MoE model vs the
  # single-rank model with ranks that receive no tokens (EP2, EP4).
  primus_mpi_test(expert_parallel primus_ep_tests test_expert_parallel.cpp 180)
  # Context parallelism: the load-balanced chunks, attention_merge, and ring attention forward and
  # backward against one rank's full causal attention (CP2, CP4, two rings of 2 at np 4).
  primus_mpi_test(context_parallel primus_cp_tests test_context_parallel.cpp 120)

  add_test(NAME parallel.rank_failures
           COMMAND bash ${PRIMUS_PARALLEL_TEST_DIR}/run_failure_tests.sh
                   $<TARGET_FILE:primus_mpi_failure_probe> ${MPIEXEC_EXECUTABLE})
  set_tests_properties(parallel.rank_failures PROPERTIES
    ENVIRONMENT "OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1"
    TIMEOUT 180 PROCESSORS 2 RESOURCE_LOCK primus_mpi)

  add_test(NAME parallel.run_pretrain_launcher
           COMMAND bash ${PRIMUS_PARALLEL_TEST_DIR}/test_run_pretrain.sh $<TARGET_FILE:primus_launch_probe>)
  set_tests_properties(parallel.run_pretrain_launcher PROPERTIES
    ENVIRONMENT "OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1"
    TIMEOUT 180 PROCESSORS 2 RESOURCE_LOCK primus_mpi)
endif()
