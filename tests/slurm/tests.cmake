# The Slurm launcher against a real Slurm started by the test itself (slurm-wlm, installed
# by setup.sh). Fails, saying to run ./setup.sh, when Slurm is missing.
add_test(NAME slurm.run_slurm_pretrain
         COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/test_slurm_launcher.sh $<TARGET_FILE:primus_launch_probe>)
set_tests_properties(slurm.run_slurm_pretrain PROPERTIES TIMEOUT 150 PROCESSORS 2 RESOURCE_LOCK primus_mpi)
