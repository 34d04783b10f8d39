# One precompiled header of LibTorch's headers (cmake/pch/peftkit_pch.hpp), built once and reused by
# the core, the kernels' C++, the program, the benchmarks and the tests (-DPEFTKIT_PCH=ON).
# Off by default: it cut the GPU machine's cold build (16 cores) from 105 s to 68-91 s and a heavy
# source's compile to a third, but a cold build on the 2-core CI machine took 29 min with it
# (bench/RESULTS.md, 2026-12-02), against about 21 min measured without it on another day; until
# one machine has measured both, CI keeps the build its ccache already holds.
# Reuse needs the same compile flags as the target that built it; the plugins compile without it,
# since its declarations would carry default visibility into them and export LibTorch's inline
# functions that -fvisibility-inlines-hidden keeps inside (21 more exported symbols in lora.o).
option(PEFTKIT_PCH "Precompile LibTorch's headers once for the core, kernels, program and tests" OFF)
if(PEFTKIT_PCH AND PEFTKIT_FUZZ)
  message(FATAL_ERROR "PEFTKIT_PCH is for GCC builds; the fuzz build (Clang) refuses a reused header over differing defines")
endif()
if(PEFTKIT_PCH AND PEFTKIT_CCACHE)
  # ccache caches compiles that use a precompiled header only with this sloppiness; the .gch is
  # written moments before it is read.
  set(CMAKE_CXX_COMPILER_LAUNCHER ${CMAKE_COMMAND} -E env
      CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime ${PEFTKIT_CCACHE})
endif()
# Two builds of it: libraries compile with -fPIC, programs with -fPIE, and GCC refuses a header
# precompiled with the other one.
if(PEFTKIT_PCH)
  foreach(kind library program)
    set(target peftkit_pch_for_${kind})
    add_library(${target} OBJECT ${CMAKE_CURRENT_LIST_DIR}/pch/peftkit_pch.cpp)
    target_link_libraries(${target} PRIVATE torch)
    target_precompile_headers(${target} PRIVATE ${CMAKE_CURRENT_LIST_DIR}/pch/peftkit_pch.hpp)
    # -Wpedantic changes the predefined macros (GCC then refuses the header), so the same warnings.
    peftkit_warnings(${target})
  endforeach()
  set_target_properties(peftkit_pch_for_program PROPERTIES POSITION_INDEPENDENT_CODE OFF)
  target_compile_options(peftkit_pch_for_program PRIVATE -fPIE)
endif()

# Makes target compile with the shared precompiled header (nothing when PEFTKIT_PCH is OFF).
function(peftkit_precompiled target)
  if(PEFTKIT_PCH)
    get_target_property(type ${target} TYPE)
    if(type STREQUAL "EXECUTABLE")
      target_precompile_headers(${target} REUSE_FROM peftkit_pch_for_program)
    else()
      target_precompile_headers(${target} REUSE_FROM peftkit_pch_for_library)
    endif()
  endif()
endfunction()

# Sources (of the calling folder) that never see LibTorch compile without it: loading the 0.6 GB
# header costs them ten times their own compile (error.cpp: 0.9 s alone, 10 s with it), while a
# source that includes ATen compiles in a third of its time.
function(peftkit_without_pch)
  set_source_files_properties(${ARGN} PROPERTIES SKIP_PRECOMPILE_HEADERS ON)
endfunction()
