# PEFTKIT_CUDA=AUTO|ON|OFF decides whether device code is built. CI has nvcc but no GPU: it compiles
# device code for every architecture we ship so that a CUDA compile error fails CI.
include(CheckLanguage)
set(PEFTKIT_WITH_CUDA OFF)
if(NOT PEFTKIT_CUDA STREQUAL "OFF")
  if(NOT CMAKE_CUDA_COMPILER AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES 80 89 90)
    endif()
    enable_language(CUDA)
    set(PEFTKIT_WITH_CUDA ON)
    # LibTorch's CMake config refuses CMAKE_CUDA_ARCHITECTURES (it warns and turns it off), so keep
    # our list in PEFTKIT_CUDA_ARCHITECTURES and set it per target.
    set(PEFTKIT_CUDA_ARCHITECTURES ${CMAKE_CUDA_ARCHITECTURES})
    unset(CMAKE_CUDA_ARCHITECTURES CACHE)
    unset(CMAKE_CUDA_ARCHITECTURES)
  elseif(PEFTKIT_CUDA STREQUAL "ON")
    message(FATAL_ERROR "PEFTKIT_CUDA=ON but no CUDA compiler (nvcc) was found; install the CUDA "
                        "toolkit or configure with -DPEFTKIT_CUDA=OFF")
  endif()
elseif(NOT PEFTKIT_CUDA MATCHES "^(AUTO|ON|OFF)$")
  message(FATAL_ERROR "PEFTKIT_CUDA must be AUTO, ON or OFF, not '${PEFTKIT_CUDA}'")
endif()

if(PEFTKIT_WITH_CUDA)
  set(CMAKE_CUDA_STANDARD 17)  # CMake 3.25 knows no CUDA20 flags for nvcc
  set(CMAKE_CUDA_STANDARD_REQUIRED ON)
  string(REGEX MATCH "^[0-9]+\\.[0-9]+" PEFTKIT_CUDA_TAG "${CMAKE_CUDA_COMPILER_VERSION}")
  # LibTorch's CMake config probes for a GPU unless told which architectures to target.
  list(JOIN PEFTKIT_CUDA_ARCHITECTURES ";" _archs)
  string(REGEX REPLACE "([0-9])([0-9])" "\\1.\\2" _torch_archs "${_archs}")
  set(TORCH_CUDA_ARCH_LIST "${_torch_archs}" CACHE STRING "Architectures for LibTorch's CUDA probe")
  message(STATUS "peftkit: CUDA ${CMAKE_CUDA_COMPILER_VERSION}, architectures ${PEFTKIT_CUDA_ARCHITECTURES}")
else()
  set(PEFTKIT_CUDA_TAG "cpu")
  if(NOT DEFINED TORCH_CUDA_ARCH_LIST)
    set(TORCH_CUDA_ARCH_LIST "8.0;8.9;9.0" CACHE STRING "Architectures for LibTorch's CUDA probe")
  endif()
  message(STATUS "peftkit: building without CUDA device code")
endif()
