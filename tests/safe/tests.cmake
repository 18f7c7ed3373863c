# src/safe's cluster preflight and node smoke test (docs/SAFE.md). Included by tests/CMakeLists.txt.
#   safe.*                 unit tests (primus_safe_tests): formulas, outliers, verdicts, reports
#   safe.preflight_mpi_np4 `primus preflight --device cpu` on 4 MPI ranks as 2 emulated nodes,
#                          then alone; the JSON report's fields and busbw formulas are checked
#   safe.node_smoke        `primus node-smoke --device cpu`: pass, fail (alone and on 2 ranks)
#                          and the no-GPU exit codes
set(PRIMUS_SAFE_TEST_DIR ${CMAKE_CURRENT_LIST_DIR})
file(GLOB PRIMUS_SAFE_UNIT_TESTS CONFIGURE_DEPENDS ${PRIMUS_SAFE_TEST_DIR}/test_*.cpp)
add_executable(primus_safe_tests ${PRIMUS_SAFE_UNIT_TESTS})
target_link_libraries(primus_safe_tests PRIVATE primus_lib GTest::gtest GTest::gtest_main)
set_target_properties(primus_safe_tests PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)
gtest_discover_tests(primus_safe_tests TEST_PREFIX safe. DISCOVERY_TIMEOUT 60)

if(MPI_C_FOUND)
  add_test(NAME safe.preflight_mpi_np4
           COMMAND bash ${PRIMUS_SAFE_TEST_DIR}/preflight_mpi.sh $<TARGET_FILE:primus> ${MPIEXEC_EXECUTABLE})
  set_tests_properties(safe.preflight_mpi_np4 PROPERTIES
    ENVIRONMENT "OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1;OPENBLAS_NUM_THREADS=1"
    TIMEOUT 120 PROCESSORS 2 RESOURCE_LOCK primus_mpi)
  add_test(NAME safe.node_smoke
           COMMAND bash ${PRIMUS_SAFE_TEST_DIR}/node_smoke.sh $<TARGET_FILE:primus> ${MPIEXEC_EXECUTABLE})
  set_tests_properties(safe.node_smoke PROPERTIES
    ENVIRONMENT "OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1;OPENBLAS_NUM_THREADS=1"
    TIMEOUT 120 PROCESSORS 2 RESOURCE_LOCK primus_mpi)
endif()
