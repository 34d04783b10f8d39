# `cmake --install` lays out bin/peftkit, lib/libpeftkit-core.so, lib/peftkit/plugins/*.so, the SDK
# headers and a CMake package, so an out-of-tree plugin does:
#   find_package(peftkit REQUIRED)
#   peftkit_plugin(NAME my-method KIND peft SRCS my_method.cpp)
include(CMakePackageConfigHelpers)

install(TARGETS peftkit RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(TARGETS peftkit_core EXPORT peftkitTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/core/include/peftkit DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(FILES ${PROJECT_BINARY_DIR}/include/peftkit/build_config.hpp
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/peftkit)

set(PEFTKIT_CMAKE_INSTALL_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/peftkit)
install(EXPORT peftkitTargets NAMESPACE peftkit:: DESTINATION ${PEFTKIT_CMAKE_INSTALL_DIR})
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/peftkitConfig.cmake.in
  ${PROJECT_BINARY_DIR}/peftkitConfig.cmake INSTALL_DESTINATION ${PEFTKIT_CMAKE_INSTALL_DIR})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/peftkitConfigVersion.cmake
  COMPATIBILITY SameMajorVersion)
install(FILES ${PROJECT_BINARY_DIR}/peftkitConfig.cmake ${PROJECT_BINARY_DIR}/peftkitConfigVersion.cmake
  ${PROJECT_SOURCE_DIR}/cmake/PeftkitPlugin.cmake DESTINATION ${PEFTKIT_CMAKE_INSTALL_DIR})
