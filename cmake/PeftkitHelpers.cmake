# Declarative helpers so that every folder's CMakeLists.txt is a short list:
#   peftkit_plugin(NAME lora KIND peft SRCS lora.cpp ...)
#   peftkit_test(NAME options_test SRCS options_test.cpp DEPS ...)
# peftkit_plugin is also exported with the installed package for out-of-tree plugins.

include(${CMAKE_CURRENT_LIST_DIR}/PeftkitPlugin.cmake)

# Warnings for our own code only (third-party headers are SYSTEM includes).
function(peftkit_warnings target)
  target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic>)
endfunction()

# Every test process runs LibTorch on one thread: ctest already runs one test per core (-j nproc),
# and pools of several threads per test spin against each other (two 20-s tests at once took 31 %
# less time so on the 2-core machine). A test of threading sets [run] threads itself. (A property
# of its own, not a second ENVIRONMENT entry: gtest_discover_tests splits list values.)
set(PEFTKIT_TEST_THREADS ENVIRONMENT_MODIFICATION "OMP_NUM_THREADS=set:1")

# A GoogleTest executable registered with ctest through gtest_discover_tests. SERIAL: a GoogleTest
# filter of its tests that take a shared resource whole (a test that fills the GPU's memory on
# purpose); ctest runs those alone, the others as usual.
function(peftkit_test)
  cmake_parse_arguments(T "" "NAME;SERIAL" "SRCS;DEPS;DEFINES" ${ARGN})
  add_executable(${T_NAME} ${T_SRCS})
  target_link_libraries(${T_NAME} PRIVATE GTest::gtest GTest::gtest_main ${T_DEPS})
  target_compile_definitions(${T_NAME} PRIVATE ${T_DEFINES})
  target_include_directories(${T_NAME} PRIVATE ${PROJECT_SOURCE_DIR}/tests)
  set_target_properties(${T_NAME} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/tests)
  peftkit_warnings(${T_NAME})
  include(GoogleTest)
  # A hung test fails after 5 minutes instead of eating CI's time (the slowest takes ~40 s).
  set(properties ENVIRONMENT "PEFTKIT_SOURCE_DIR=${PROJECT_SOURCE_DIR}" ${PEFTKIT_TEST_THREADS}
    TIMEOUT 300)
  if(T_SERIAL)
    gtest_discover_tests(${T_NAME} DISCOVERY_TIMEOUT 120 TEST_FILTER "-${T_SERIAL}"
      PROPERTIES ${properties})
    gtest_discover_tests(${T_NAME} DISCOVERY_TIMEOUT 120 TEST_FILTER "${T_SERIAL}"
      PROPERTIES ${properties} RUN_SERIAL TRUE)
  else()
    gtest_discover_tests(${T_NAME} DISCOVERY_TIMEOUT 120 PROPERTIES ${properties})
  endif()
endfunction()
