# Helpers shared by every regserve target.

set(REGSERVE_WARNINGS -Wall -Wextra -Werror)

# REGSERVE_THREAD_SAFETY (clang only): clang's thread-safety analysis, so
# that the compiler checks the ABSL_GUARDED_BY / ABSL_EXCLUSIVE_LOCKS_REQUIRED
# / ABSL_LOCKS_EXCLUDED annotations; with -Werror above, a field read without
# its mutex held fails the build. Run by scripts/test.sh's tsa stage. Only
# our targets get the flag (REGSERVE_WARNINGS). Dependencies' headers are
# not checked: they are in /usr/include or come through imported targets,
# whose include directories CMake passes as -isystem, and the generated
# protobuf code is SYSTEM too (proto/CMakeLists.txt). Clang 14 with Debian
# 12's libstdc++, Abseil, LibTorch 1.13, gRPC and Protobuf headers compiles
# cleanly this way, so no -Wno-... is needed.
# Only absl::Mutex / MutexLock are annotated: std::mutex in libstdc++ has no
# capability attributes, so code locked with std::lock_guard is not checked.
option(REGSERVE_THREAD_SAFETY "Check thread-safety annotations (clang)" OFF)
if(REGSERVE_THREAD_SAFETY)
  if(NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "REGSERVE_THREAD_SAFETY needs clang: "
                        "CC=clang CXX=clang++ cmake -DREGSERVE_THREAD_SAFETY=ON")
  endif()
  list(APPEND REGSERVE_WARNINGS -Wthread-safety)
endif()
if(REGSERVE_SANITIZE)
  add_compile_options(-fsanitize=address,undefined -fno-omit-frame-pointer)
  add_link_options(-fsanitize=address,undefined)
endif()
if(REGSERVE_TSAN)
  if(REGSERVE_SANITIZE OR REGSERVE_FUZZ)
    message(FATAL_ERROR "REGSERVE_TSAN cannot be combined with ASan builds")
  endif()
  add_compile_options(-fsanitize=thread -fno-omit-frame-pointer)
  add_link_options(-fsanitize=thread)
  if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
    # GCC warns that TSan cannot model atomic_thread_fence, which Abseil's
    # flag headers use (a seqlock read at start-up only).
    list(APPEND REGSERVE_WARNINGS -Wno-tsan)
  endif()
  # Makes TSan see Debian's (uninstrumented) Abseil Mutex/CondVar/
  # Notification; linked into every test and program below.
  add_library(regserve_tsan_absl OBJECT
    ${PROJECT_SOURCE_DIR}/tests/robustness/tsan/absl_sync_annotations.cc)
  target_link_libraries(regserve_tsan_absl PUBLIC absl::synchronization
                        ${CMAKE_DL_LIBS})
endif()
if(REGSERVE_FUZZ)
  # Every target gets coverage instrumentation and the sanitizers, so that
  # libFuzzer sees inside our libraries; only fuzz programs link libFuzzer.
  add_compile_options(-fsanitize=fuzzer-no-link,address,undefined
                      -fno-omit-frame-pointer)
  add_link_options(-fsanitize=address,undefined)
endif()

# regserve_library(NAME SOURCES ... DEPS ... [PUBLIC_DEPS ...])
# Declares regserve_NAME with alias regserve::NAME.
function(regserve_library name)
  cmake_parse_arguments(A "" "" "SOURCES;DEPS" ${ARGN})
  add_library(regserve_${name} ${A_SOURCES})
  add_library(regserve::${name} ALIAS regserve_${name})
  target_include_directories(regserve_${name} PUBLIC ${PROJECT_SOURCE_DIR})
  target_compile_options(regserve_${name} PRIVATE ${REGSERVE_WARNINGS})
  target_link_libraries(regserve_${name} PUBLIC ${A_DEPS})
endfunction()

# regserve_test(NAME SOURCES ... DEPS ... [LABELS ...])
# A GoogleTest program registered with CTest. Labels: unit, golden, e2e, gpu.
function(regserve_test name)
  if(NOT REGSERVE_BUILD_TESTS)
    return()
  endif()
  cmake_parse_arguments(A "" "TIMEOUT" "SOURCES;DEPS;LABELS" ${ARGN})
  add_executable(${name} ${A_SOURCES})
  target_compile_options(${name} PRIVATE ${REGSERVE_WARNINGS})
  target_link_libraries(${name} PRIVATE ${A_DEPS} GTest::gtest GTest::gmock
                        GTest::gtest_main)
  if(REGSERVE_TSAN)
    target_link_libraries(${name} PRIVATE regserve_tsan_absl)
  endif()
  add_test(NAME ${name} COMMAND ${name})
  if(NOT A_LABELS)
    set(A_LABELS unit)
  endif()
  if(NOT A_TIMEOUT)
    set(A_TIMEOUT 600)
  endif()
  set_tests_properties(${name} PROPERTIES LABELS "${A_LABELS}"
    TIMEOUT ${A_TIMEOUT}
    ENVIRONMENT "REGSERVE_TEST_DATA=${PROJECT_SOURCE_DIR}/tests/data;REGSERVE_BINARY_DIR=${PROJECT_BINARY_DIR}")
endfunction()

# regserve_program(NAME SOURCES ... DEPS ...) builds and installs a program.
function(regserve_program name)
  cmake_parse_arguments(A "" "" "SOURCES;DEPS" ${ARGN})
  add_executable(${name} ${A_SOURCES})
  target_compile_options(${name} PRIVATE ${REGSERVE_WARNINGS})
  target_link_libraries(${name} PRIVATE ${A_DEPS})
  if(REGSERVE_TSAN)
    target_link_libraries(${name} PRIVATE regserve_tsan_absl)
  endif()
  install(TARGETS ${name} RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
endfunction()
