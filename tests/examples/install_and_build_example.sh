# Sourced by the example tests: installs peftkit from BUILD_DIR into $work/prefix and builds the
# example at EXAMPLE_SOURCE_DIR out of tree against it into $work/build. Defines $work (removed on
# exit) and fail().
#   source install_and_build_example.sh BUILD_DIR EXAMPLE_SOURCE_DIR TORCH_CMAKE_DIR
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

cmake --install "$1" --prefix "$work/prefix" >/dev/null
# The host's compiler: the ABI tag refuses a plugin another compiler built (the sanitizer folder's
# host is Clang's).
host_cxx=$(sed -n 's/^CMAKE_CXX_COMPILER:[A-Z]*=//p' "$1/CMakeCache.txt")
cmake -S "$2" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER="$host_cxx" \
      -DCMAKE_PREFIX_PATH="$work/prefix" -DTorch_DIR="$3" >"$work/configure.log" 2>&1 ||
  { cat "$work/configure.log"; fail "configuring the example against the installed SDK"; }
cmake --build "$work/build" >"$work/build.log" 2>&1 || { cat "$work/build.log"; fail "building the example"; }
