# Runs the runtime probe under mpirun and checks how it ended (cmake -P, so the test can check
# the exit status and the output together, and a hang fails by its own timeout).
#   -DMPIEXEC= -DNP= -DPROBE= -DMODE= -DEXPECT_RC=<n|nonzero> -DEXPECT_OUTPUT=<regex>
#   [-DREJECT_OUTPUT=<regex>]
execute_process(
  COMMAND ${MPIEXEC} -n ${NP} --oversubscribe ${PROBE} ${MODE}
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 60)
set(all "${out}${err}")
message("probe ${MODE} on ${NP} ranks: exit ${rc}\n${all}")
if(rc MATCHES "timeout|Process terminated")
  message(FATAL_ERROR "probe ${MODE} did not end: ${rc}")
endif()
if(EXPECT_RC STREQUAL "nonzero")
  if(rc EQUAL 0)
    message(FATAL_ERROR "probe ${MODE}: expected a failing exit status, got 0")
  endif()
elseif(NOT rc EQUAL EXPECT_RC)
  message(FATAL_ERROR "probe ${MODE}: expected exit status ${EXPECT_RC}, got ${rc}")
endif()
if(NOT all MATCHES "${EXPECT_OUTPUT}")
  message(FATAL_ERROR "probe ${MODE}: output does not match '${EXPECT_OUTPUT}'")
endif()
if(DEFINED REJECT_OUTPUT AND all MATCHES "${REJECT_OUTPUT}")
  message(FATAL_ERROR "probe ${MODE}: output matches '${REJECT_OUTPUT}'")
endif()
