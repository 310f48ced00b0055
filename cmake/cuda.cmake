# The CUDA backend: the kernel library fusedrnn_cuda and the Python module fusedrnn._cuda.
# Included by CMakeLists.txt after the CPU targets; _fr_cuda is AUTO, ON or OFF. AUTO builds the
# backend when a CUDA compiler and cuBLAS are found and says why not otherwise; ON fails instead.
set(FUSEDRNN_CUDA_ARCHITECTURES "80;90" CACHE STRING
    "GPU architectures of the CUDA backend (CMAKE_CUDA_ARCHITECTURES syntax); default A100, H100")
set(FUSEDRNN_CUBLAS_ROOT "" CACHE PATH
    "cuBLAS to link: a folder with include/cublas_v2.h and lib/libcublas.so*; empty: search")
# The environment variable is read at every configure (a cached value would outlive it).
set(_fr_cublas_root "${FUSEDRNN_CUBLAS_ROOT}")
if(NOT _fr_cublas_root)
  set(_fr_cublas_root "$ENV{FUSEDRNN_CUBLAS_ROOT}")
endif()

macro(_fr_cuda_not_built reason)
  if(_fr_cuda STREQUAL "ON")
    message(FATAL_ERROR "FUSEDRNN_CUDA=ON but ${reason}")
  endif()
  message(STATUS "fusedrnn: CUDA backend not built: ${reason}")
  return()
endmacro()

if(_fr_cuda STREQUAL "OFF")
  message(STATUS "fusedrnn: CUDA backend not built (FUSEDRNN_CUDA=OFF)")
  return()
endif()

include(CheckLanguage)
check_language(CUDA)
if(NOT CMAKE_CUDA_COMPILER)
  _fr_cuda_not_built("no CUDA compiler was found (put nvcc on PATH or set CUDACXX)")
endif()

# cuBLAS, in this order: FUSEDRNN_CUBLAS_ROOT (CMake or environment variable); the nvidia-cublas
# wheel of the Python that builds (pip's build isolation hides an installed wheel: pass its folder
# as FUSEDRNN_CUBLAS_ROOT, see cmake/find_cublas.py --root); the CUDA toolkit's own.
set(_fr_cublas_include "")
set(_fr_cublas_library "")
if(_fr_cublas_root)
  if(EXISTS "${_fr_cublas_root}/include/cublas_v2.h")
    set(_fr_cublas_include "${_fr_cublas_root}/include")
  endif()
  file(GLOB _fr_cublas_candidates "${_fr_cublas_root}/lib/libcublas.so*"
       "${_fr_cublas_root}/lib64/libcublas.so*")
  if(_fr_cublas_candidates)
    list(GET _fr_cublas_candidates 0 _fr_cublas_library)
  endif()
  if(NOT _fr_cublas_include OR NOT _fr_cublas_library)
    _fr_cuda_not_built("FUSEDRNN_CUBLAS_ROOT=${_fr_cublas_root} has no "
                       "include/cublas_v2.h and lib/libcublas.so*")
  endif()
else()
  execute_process(COMMAND "${Python_EXECUTABLE}" "${CMAKE_CURRENT_LIST_DIR}/find_cublas.py"
                  OUTPUT_VARIABLE _fr_wheel OUTPUT_STRIP_TRAILING_WHITESPACE
                  RESULT_VARIABLE _fr_wheel_rc)
  if(_fr_wheel_rc EQUAL 0)
    string(REPLACE "\n" ";" _fr_wheel "${_fr_wheel}")
    list(GET _fr_wheel 0 _fr_cublas_include)
    list(GET _fr_wheel 1 _fr_cublas_library)
  endif()
endif()

enable_language(CUDA)
find_package(CUDAToolkit REQUIRED)
if(NOT _fr_cublas_library)
  if(NOT TARGET CUDA::cublas)
    _fr_cuda_not_built("cuBLAS was found neither in the CUDA toolkit nor as the nvidia-cublas "
                       "wheel (pip install nvidia-cublas, or set FUSEDRNN_CUBLAS_ROOT)")
  endif()
  add_library(fusedrnn_cublas INTERFACE)
  target_link_libraries(fusedrnn_cublas INTERFACE CUDA::cublas)
  get_target_property(_fr_cublas_library CUDA::cublas LOCATION)
else()
  add_library(fusedrnn_cublas SHARED IMPORTED)
  set_target_properties(fusedrnn_cublas PROPERTIES IMPORTED_LOCATION "${_fr_cublas_library}"
                        INTERFACE_INCLUDE_DIRECTORIES "${_fr_cublas_include}")
endif()
message(STATUS "fusedrnn: CUDA backend: nvcc ${CMAKE_CUDA_COMPILER_VERSION}, cuBLAS "
               "${_fr_cublas_library}, architectures ${FUSEDRNN_CUDA_ARCHITECTURES}")

# The kernels: CUDA and C++ over the CUDA runtime (linked statically: the module then needs only
# the driver and cuBLAS at run time, and loads on a machine without a GPU to say so).
add_library(fusedrnn_cuda STATIC
  cuda/cublas_handle.cc cuda/device_info.cu cuda/device_memory.cc cuda/device_tape.cc
  cuda/sequence_cuda.cu)
set_target_properties(fusedrnn_cuda PROPERTIES
  CUDA_ARCHITECTURES "${FUSEDRNN_CUDA_ARCHITECTURES}" POSITION_INDEPENDENT_CODE ON)
target_include_directories(fusedrnn_cuda PUBLIC csrc/include PRIVATE csrc cuda)
target_sources(fusedrnn_cuda PRIVATE $<TARGET_OBJECTS:fusedrnn_common>)
target_link_libraries(fusedrnn_cuda PUBLIC fusedrnn_cublas CUDA::cudart_static)
target_compile_options(fusedrnn_cuda PRIVATE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra>
  $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra>)

# The Python module: glue only (DLPack in and out).
pybind11_add_module(_cuda MODULE src/cuda_module.cpp)
target_link_libraries(_cuda PRIVATE fusedrnn_cuda)
target_compile_definitions(_cuda PRIVATE FUSEDRNN_VERSION="${PROJECT_VERSION}")
# libcublas is found at run time next to the module when it came from the wheel installed in the
# same site-packages, else where it was at build time.
get_filename_component(_fr_cublas_dir "${_fr_cublas_library}" DIRECTORY)
set(_fr_rpath "${_fr_cublas_dir}")
if(_fr_cublas_dir MATCHES "site-packages/(.*)$")
  set(_fr_rpath "$ORIGIN/../${CMAKE_MATCH_1};${_fr_cublas_dir}")
endif()
set_target_properties(_cuda PROPERTIES INSTALL_RPATH "${_fr_rpath}")
install(TARGETS _cuda LIBRARY DESTINATION fusedrnn COMPONENT python)
