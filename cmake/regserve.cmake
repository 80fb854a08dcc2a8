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
  if(REGSERVE_STDLIB_FIRST)
    target_link_options(${name} PRIVATE "${REGSERVE_STDLIB_FIRST}")
  endif()
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

# regserve_full_leak_stacks(TEST): under REGSERVE_SANITIZE, TEST (and the
# daemons it starts) use ASan's slow unwinder, so that leak stacks reach the
# library frames core/image/oiio_lsan.supp names; the default fast unwinder
# stops at the first frame built without frame pointers. Only for the tests
# that meet those leaks: the slow unwinder makes each start-up 5x longer.
function(regserve_full_leak_stacks name)
  if(REGSERVE_SANITIZE)
    set_property(TEST ${name} APPEND PROPERTY ENVIRONMENT
      "LSAN_OPTIONS=suppressions=${PROJECT_SOURCE_DIR}/core/image/oiio_lsan.supp"
      "ASAN_OPTIONS=fast_unwind_on_malloc=0")
  endif()
endfunction()

# regserve_program(NAME SOURCES ... DEPS ...) builds and installs a program.
function(regserve_program name)
  cmake_parse_arguments(A "" "" "SOURCES;DEPS" ${ARGN})
  add_executable(${name} ${A_SOURCES})
  target_compile_options(${name} PRIVATE ${REGSERVE_WARNINGS})
  target_link_libraries(${name} PRIVATE ${A_DEPS})
  if(REGSERVE_STDLIB_FIRST)
    target_link_options(${name} PRIVATE "${REGSERVE_STDLIB_FIRST}")
  endif()
  if(REGSERVE_TSAN)
    target_link_libraries(${name} PRIVATE regserve_tsan_absl)
  endif()
  install(TARGETS ${name} RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
endfunction()

# libstdc++ first in every executable's DT_NEEDED list. The PyTorch wheel's
# libtorch.so and libtorch_cpu.so (built by Red Hat's gcc-toolset, whose
# libstdc++ is partly static) export their own unversioned copies of
# libstdc++ functions, all of std::filesystem among them. The dynamic linker
# binds each reference to the first definition in load order, which starts
# with the executable's DT_NEEDED list; libtorch came first there (the
# driver adds libstdc++ after every library, and the compiler CMake uses on
# the GPU machine, /opt/gcc/bin/g++, has no shared libstdc++ on its search
# path, so regserved needed none), so regserved called torch's copy of
# std::filesystem::remove_all and crashed with SIGSEGV (docs/gpu.md). The shared
# libstdc++ is therefore named by its path at the front of every
# executable's link line; --no-as-needed keeps it even where the linker
# defaults to --as-needed, and push/pop-state restores whatever was in
# force. tests/e2e/stdlib_binding_test.cc checks the result.
set(REGSERVE_STDLIB_FIRST "")
if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang" AND CMAKE_SYSTEM_NAME STREQUAL "Linux")
  execute_process(COMMAND ${CMAKE_CXX_COMPILER} -print-file-name=libstdc++.so
    OUTPUT_VARIABLE _regserve_stdcxx OUTPUT_STRIP_TRAILING_WHITESPACE
    ERROR_QUIET)
  if(NOT IS_ABSOLUTE "${_regserve_stdcxx}" OR NOT EXISTS "${_regserve_stdcxx}")
    # A compiler without a shared libstdc++ of its own (it links
    # libstdc++.a): the system's, which is the one loaded at run time.
    find_library(REGSERVE_LIBSTDCXX_SO NAMES libstdc++.so.6
      PATHS ${CMAKE_CXX_IMPLICIT_LINK_DIRECTORIES}
            /usr/lib/${CMAKE_LIBRARY_ARCHITECTURE} /usr/lib/x86_64-linux-gnu
            /usr/lib/aarch64-linux-gnu /usr/lib64 /usr/lib)
    set(_regserve_stdcxx "${REGSERVE_LIBSTDCXX_SO}")
  endif()
  if(_regserve_stdcxx)
    set(REGSERVE_STDLIB_FIRST
      "-Wl,--push-state,--no-as-needed,${_regserve_stdcxx},--pop-state")
    message(STATUS "regserve: executables link ${_regserve_stdcxx} first")
    # Executables made with add_executable directly (benchmarks, tools);
    # regserve_program and regserve_test add it themselves as well.
    add_link_options(
      "$<$<STREQUAL:$<TARGET_PROPERTY:TYPE>,EXECUTABLE>:${REGSERVE_STDLIB_FIRST}>")
  else()
    message(WARNING "regserve: no shared libstdc++ found; executables that "
      "link LibTorch may bind libstdc++ functions to LibTorch's copies")
  endif()
endif()

# regserve_check_protobuf_target(): call after find_package(Protobuf) and
# find_package(Torch). A CUDA LibTorch from the PyTorch wheel defines
# protobuf::libprotobuf as an ALIAS of an empty INTERFACE library ("dummy")
# when that target does not exist yet; then nothing links libprotobuf (about
# a thousand undefined references). The top CMakeLists finds Protobuf first,
# so this only reports; should the target still be empty (another package
# found first), it is given the library FindProtobuf found.
function(regserve_check_protobuf_target)
  if(NOT TARGET protobuf::libprotobuf)
    message(FATAL_ERROR "regserve: no protobuf::libprotobuf target")
  endif()
  get_target_property(real protobuf::libprotobuf ALIASED_TARGET)
  if(NOT real)
    set(real protobuf::libprotobuf)
  endif()
  get_target_property(type ${real} TYPE)
  if(NOT type STREQUAL "INTERFACE_LIBRARY")
    return()
  endif()
  get_target_property(libs ${real} INTERFACE_LINK_LIBRARIES)
  if(libs)
    return()
  endif()
  if(Protobuf_LIBRARY_RELEASE)
    set(lib "${Protobuf_LIBRARY_RELEASE}")
  else()
    set(lib "${Protobuf_LIBRARY}")
  endif()
  if(NOT lib)
    message(FATAL_ERROR "regserve: protobuf::libprotobuf is an empty "
      "INTERFACE target (${real}) and FindProtobuf found no library")
  endif()
  message(STATUS "regserve: protobuf::libprotobuf was an empty INTERFACE "
    "target (${real}); linking ${lib}")
  set_property(TARGET ${real} APPEND PROPERTY INTERFACE_LINK_LIBRARIES "${lib}")
  set_property(TARGET ${real} APPEND PROPERTY INTERFACE_INCLUDE_DIRECTORIES
    "${Protobuf_INCLUDE_DIR}")
endfunction()

# regserve_protobuf_headers_first(): call after find_package(Torch) and
# before add_subdirectory(). The PyTorch wheel's torch/include holds an old
# copy of google/protobuf; as an imported target's directory it is passed as
# -isystem, which GCC searches before /usr/include, so every generated .pb.h
# would see the old headers ("PROTOBUF_LONGLONG was not declared"). Putting
# /usr/include itself first with -isystem breaks libstdc++'s #include_next,
# so a directory in the build tree holding only a link `google` to the
# system's google/ goes ahead of every target's include path instead.
function(regserve_protobuf_headers_first)
  file(REAL_PATH "${Protobuf_INCLUDE_DIR}" pb_dir)
  set(shadowing "")
  foreach(dir IN LISTS TORCH_INCLUDE_DIRS)
    if(EXISTS "${dir}/google/protobuf")
      file(REAL_PATH "${dir}" real_dir)
      if(NOT real_dir STREQUAL pb_dir)
        list(APPEND shadowing "${dir}")
      endif()
    endif()
  endforeach()
  if(NOT shadowing)
    return()
  endif()
  set(first "${PROJECT_BINARY_DIR}/regserve_protobuf_first")
  file(MAKE_DIRECTORY "${first}")
  file(REMOVE "${first}/google")
  file(CREATE_LINK "${pb_dir}/google" "${first}/google" SYMBOLIC)
  include_directories(BEFORE SYSTEM "${first}")
  message(STATUS "regserve: ${shadowing} has its own google/protobuf; "
    "${pb_dir}/google comes first (through ${first})")
endfunction()
