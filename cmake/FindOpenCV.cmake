# FindOpenCV: the OpenCV modules named in COMPONENTS, as imported targets
# opencv_<module> (the names OpenCV's own CMake package gives them).
#
#   find_package(OpenCV REQUIRED COMPONENTS core imgproc features2d calib3d)
#   target_link_libraries(foo PRIVATE opencv_features2d opencv_calib3d)
#
# Why a module: Debian 12 ships OpenCV's CMake package (OpenCVConfig.cmake)
# only in libopencv-dev, which depends on every module's -dev package (VTK
# and MPI among them, ~300 MB installed), and that package refuses to load
# when a module's library is missing. The per-module packages we install
# (libopencv-<module>-dev) have the headers and libraries but no CMake files.
# When OpenCV's own package is installed it is used instead.
#
# Sets OpenCV_FOUND, OpenCV_VERSION, OpenCV_INCLUDE_DIRS, OpenCV_LIBS.

find_package(OpenCV CONFIG QUIET COMPONENTS ${OpenCV_FIND_COMPONENTS})
if(OpenCV_FOUND)
  return()
endif()

find_path(OpenCV_INCLUDE_DIR opencv2/core.hpp PATH_SUFFIXES opencv4)
if(OpenCV_INCLUDE_DIR AND EXISTS
   "${OpenCV_INCLUDE_DIR}/opencv2/core/version.hpp")
  file(STRINGS "${OpenCV_INCLUDE_DIR}/opencv2/core/version.hpp" _ocv_ver
       REGEX "^#define CV_VERSION_(MAJOR|MINOR|REVISION) +[0-9]+")
  foreach(_part MAJOR MINOR REVISION)
    string(REGEX REPLACE ".*#define CV_VERSION_${_part} +([0-9]+).*" "\\1"
           _ocv_${_part} "${_ocv_ver}")
  endforeach()
  set(OpenCV_VERSION "${_ocv_MAJOR}.${_ocv_MINOR}.${_ocv_REVISION}")
endif()

set(OpenCV_LIBS)
foreach(_module ${OpenCV_FIND_COMPONENTS})
  find_library(OpenCV_${_module}_LIBRARY opencv_${_module})
  # A module's headers come with its -dev package, its library without.
  find_file(OpenCV_${_module}_HEADER opencv2/${_module}.hpp
            HINTS "${OpenCV_INCLUDE_DIR}" NO_DEFAULT_PATH)
  if(OpenCV_${_module}_LIBRARY AND OpenCV_${_module}_HEADER)
    set(OpenCV_${_module}_FOUND TRUE)
    if(NOT TARGET opencv_${_module})
      add_library(opencv_${_module} UNKNOWN IMPORTED)
      set_target_properties(opencv_${_module} PROPERTIES
        IMPORTED_LOCATION "${OpenCV_${_module}_LIBRARY}"
        INTERFACE_INCLUDE_DIRECTORIES "${OpenCV_INCLUDE_DIR}")
    endif()
    list(APPEND OpenCV_LIBS opencv_${_module})
  else()
    set(OpenCV_${_module}_FOUND FALSE)
  endif()
endforeach()
set(OpenCV_INCLUDE_DIRS "${OpenCV_INCLUDE_DIR}")

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(OpenCV
  REQUIRED_VARS OpenCV_INCLUDE_DIR
  VERSION_VAR OpenCV_VERSION
  HANDLE_COMPONENTS)
