# The CUDA compile check (issue 14, item 8): where LibTorch has no CUDA (the
# Debian package, CI) but a CUDA toolkit is installed, the CUDA path is still
# compiled, as objects that nothing links, so that it cannot rot unseen:
# the kernel with nvcc (device warnings are errors), and the C++ files that
# use c10::cuda with REGSERVE_HAVE_CUDA=1 against Debian's LibTorch headers
# (which include c10/cuda but not its generated cuda_cmake_macros.h). It is
# compiled in the main build only: the sanitizer and analysis builds skip it.
# REGSERVE_CUDA_COMPILE_CHECK=OFF turns it off; without nvcc it is skipped.
option(REGSERVE_CUDA_COMPILE_CHECK
       "Compile (not link) the CUDA path when LibTorch lacks CUDA" ON)
set(REGSERVE_CUDA_CHECK OFF)
if(REGSERVE_CUDA_COMPILE_CHECK AND NOT REGSERVE_HAVE_CUDA
   AND NOT REGSERVE_SANITIZE AND NOT REGSERVE_TSAN AND NOT REGSERVE_FUZZ
   AND NOT REGSERVE_THREAD_SAFETY)
  # The toolkit's default place, for shells without it on PATH.
  if(NOT DEFINED ENV{CUDACXX} AND NOT CMAKE_CUDA_COMPILER
     AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES 90)
    endif()
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    set(REGSERVE_CUDA_CHECK ON)
    message(STATUS "regserve: CUDA compile check with nvcc "
                   "${CMAKE_CUDA_COMPILER_VERSION} (objects only, not linked)")
  else()
    message(STATUS "regserve: no nvcc found; CUDA compile check skipped")
  endif()
endif()

# regserve_cuda_check(NAME SOURCES ... DEPS ...): an object library of
# SOURCES compiled as with a CUDA LibTorch, with the project's warnings.
function(regserve_cuda_check name)
  if(NOT REGSERVE_CUDA_CHECK)
    return()
  endif()
  cmake_parse_arguments(A "" "" "SOURCES;DEPS" ${ARGN})
  add_library(regserve_${name}_cuda_check OBJECT ${A_SOURCES})
  target_include_directories(regserve_${name}_cuda_check PRIVATE
                             ${PROJECT_SOURCE_DIR})
  target_compile_definitions(regserve_${name}_cuda_check PRIVATE
                             REGSERVE_HAVE_CUDA=1 C10_CUDA_NO_CMAKE_CONFIGURE_FILE)
  # Host code: the project's warnings. Device code: nvcc's warnings as
  # errors; the host pass of a .cu file does not know `#pragma unroll`.
  target_compile_options(regserve_${name}_cuda_check PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:${REGSERVE_WARNINGS}>
    $<$<COMPILE_LANGUAGE:CUDA>:-Werror=all-warnings -fmad=false
      -Xcompiler=-Wall,-Wextra,-Werror,-Wno-unknown-pragmas>)
  target_link_libraries(regserve_${name}_cuda_check PRIVATE ${A_DEPS}
                        CUDA::cudart)
endfunction()
