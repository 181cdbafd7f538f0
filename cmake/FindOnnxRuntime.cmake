# Locates ONNX Runtime's C/C++ API and defines the imported target onnxruntime::onnxruntime.
#
# Search order, the same as scripts/setup.sh: ONNXRUNTIME_ROOT (environment or cache variable),
# then the system paths, then the bundle that scripts/setup.sh assembles in
# third_party/onnxruntime.

set(ONNXRUNTIME_ROOT "$ENV{ONNXRUNTIME_ROOT}" CACHE PATH "ONNX Runtime install prefix (include/ and lib/)")
set(_ort_bundle "${CMAKE_SOURCE_DIR}/third_party/onnxruntime")

if(ONNXRUNTIME_ROOT)
  find_path(ONNXRUNTIME_INCLUDE_DIR onnxruntime_cxx_api.h
    PATHS "${ONNXRUNTIME_ROOT}" PATH_SUFFIXES include include/onnxruntime NO_DEFAULT_PATH)
  find_library(ONNXRUNTIME_LIBRARY NAMES onnxruntime libonnxruntime.so.1
    PATHS "${ONNXRUNTIME_ROOT}" PATH_SUFFIXES lib lib64 NO_DEFAULT_PATH)
else()
  find_path(ONNXRUNTIME_INCLUDE_DIR onnxruntime_cxx_api.h
    PATH_SUFFIXES onnxruntime
    PATHS "${_ort_bundle}/include")
  find_library(ONNXRUNTIME_LIBRARY NAMES onnxruntime libonnxruntime.so.1
    PATHS "${_ort_bundle}/lib")
endif()

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(OnnxRuntime
  REQUIRED_VARS ONNXRUNTIME_LIBRARY ONNXRUNTIME_INCLUDE_DIR
  REASON_FAILURE_MESSAGE "run scripts/setup.sh, or set ONNXRUNTIME_ROOT to an ONNX Runtime install")

if(OnnxRuntime_FOUND AND NOT TARGET onnxruntime::onnxruntime)
  add_library(onnxruntime::onnxruntime SHARED IMPORTED)
  set_target_properties(onnxruntime::onnxruntime PROPERTIES
    IMPORTED_LOCATION "${ONNXRUNTIME_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${ONNXRUNTIME_INCLUDE_DIR}")
  get_filename_component(ONNXRUNTIME_LIBRARY_DIR "${ONNXRUNTIME_LIBRARY}" DIRECTORY)
  message(STATUS "ONNX Runtime: ${ONNXRUNTIME_LIBRARY}")
endif()
