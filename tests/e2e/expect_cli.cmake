# Runs one linmoe command line and checks its exit status and output together (cmake -P).
#   -DCMD="<words separated by ;>" -DEXPECT_RC=<n> -DEXPECT_OUTPUT=<regex> [-DREJECT_OUTPUT=<regex>]
#   [-DWORKDIR=<dir>]
if(NOT DEFINED WORKDIR)
  set(WORKDIR ".")
endif()
string(REPLACE "|" ";" words "${CMD}")
execute_process(COMMAND ${words} WORKING_DIRECTORY ${WORKDIR}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 120)
set(all "${out}${err}")
message("${CMD}: exit ${rc}\n${all}")
if(NOT rc EQUAL EXPECT_RC)
  message(FATAL_ERROR "expected exit status ${EXPECT_RC}, got ${rc}")
endif()
if(NOT all MATCHES "${EXPECT_OUTPUT}")
  message(FATAL_ERROR "output does not match '${EXPECT_OUTPUT}'")
endif()
if(DEFINED REJECT_OUTPUT AND all MATCHES "${REJECT_OUTPUT}")
  message(FATAL_ERROR "output matches '${REJECT_OUTPUT}'")
endif()
