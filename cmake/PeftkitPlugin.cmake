# peftkit_plugin(NAME <name> KIND <peft|dataset|quantizer> SRCS <files...> [DEPS <targets...>]
#                [OUTPUT_DIR <dir>] [NO_INSTALL])
# Builds one plugin as a MODULE library named peftkit-<kind>-<name>.so, the pattern the host scans for.
# Symbols are hidden except the handshake, so two plugins never interpose each other's helpers.
function(peftkit_plugin)
  cmake_parse_arguments(P "NO_INSTALL" "NAME;KIND;OUTPUT_DIR" "SRCS;DEPS" ${ARGN})
  if(NOT P_KIND MATCHES "^(peft|dataset|quantizer)$")
    message(FATAL_ERROR "peftkit_plugin(${P_NAME}): KIND must be peft, dataset or quantizer, not '${P_KIND}'")
  endif()
  set(target peftkit-${P_KIND}-${P_NAME})
  add_library(${target} MODULE ${P_SRCS})
  target_link_libraries(${target} PRIVATE peftkit::core ${P_DEPS})
  if(NOT P_OUTPUT_DIR)
    if(DEFINED PEFTKIT_PLUGIN_OUTPUT_DIR)
      set(P_OUTPUT_DIR ${PEFTKIT_PLUGIN_OUTPUT_DIR})
    else()
      set(P_OUTPUT_DIR ${CMAKE_CURRENT_BINARY_DIR})
    endif()
  endif()
  set_target_properties(${target} PROPERTIES
    PREFIX ""
    OUTPUT_NAME ${target}
    LIBRARY_OUTPUT_DIRECTORY ${P_OUTPUT_DIR}
    CXX_VISIBILITY_PRESET hidden
    CUDA_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON)
  if(COMMAND peftkit_warnings)
    peftkit_warnings(${target})
  endif()
  if(NOT P_NO_INSTALL AND DEFINED PEFTKIT_PLUGIN_INSTALL_DIR)
    install(TARGETS ${target} LIBRARY DESTINATION ${PEFTKIT_PLUGIN_INSTALL_DIR})
    # The plugins peftkit ships, as one target (scripts/quickstart.sh builds only the program and them).
    if(TARGET peftkit-plugins)
      add_dependencies(peftkit-plugins ${target})
    endif()
  endif()
endfunction()
