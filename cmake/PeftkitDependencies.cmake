# Every dependency of the design card, found the same way on a developer machine, in CI and on the GPU
# machine. scripts/setup.sh installs them; LibTorch comes from the project's .venv unless the caller
# passes its own CMAKE_PREFIX_PATH.
set(PEFTKIT_VENV ${PROJECT_SOURCE_DIR}/.venv CACHE PATH "Virtual environment that carries the torch wheel")
if(EXISTS ${PEFTKIT_VENV}/bin/python3)
  execute_process(
    COMMAND ${PEFTKIT_VENV}/bin/python3 -c "import torch.utils; print(torch.utils.cmake_prefix_path)"
    OUTPUT_VARIABLE _torch_prefix OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE _torch_rc)
  if(_torch_rc EQUAL 0)
    list(APPEND CMAKE_PREFIX_PATH ${_torch_prefix})
  endif()
endif()

find_package(Torch REQUIRED)
find_package(Boost 1.74 REQUIRED COMPONENTS program_options)
find_package(spdlog REQUIRED)
find_package(tomlplusplus 3.3 REQUIRED)
find_package(nlohmann_json REQUIRED)
find_package(Threads REQUIRED)
if(PEFTKIT_BUILD_TESTS)
  find_package(GTest REQUIRED)
endif()

# LibTorch's imported target carries its include folder, which holds a newer fmt than Debian's spdlog
# was built against: only the logging target (core/log) may see spdlog, and it never sees LibTorch.
# Installed binaries find LibTorch where they were linked against it (the wheel's torch/lib).
get_filename_component(PEFTKIT_TORCH_LIB_DIR "${TORCH_LIBRARY}" DIRECTORY)
message(STATUS "peftkit: LibTorch ${Torch_VERSION} from ${TORCH_INSTALL_PREFIX}")
