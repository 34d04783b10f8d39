#!/usr/bin/env bash
# Tests under AddressSanitizer + UndefinedBehaviorSanitizer: a build (host code, no device code;
# the CI set's programs, or everything with --all) in build-sanitize/ (or $PEFTKIT_SANITIZE_DIR)
# at -O1 with line tables only (the sanitizers' reports keep file and line; the build takes half
# the time of -O2 -g), then ctest there. Clang builds it when it is installed: every source then
# also carries libFuzzer's coverage and the folder holds the fuzz targets too (scripts/fuzz.sh
# builds and runs them here), so CI compiles the sanitized sources once. Any sanitizer report fails
# the test that caused it; ctest's JUnit file ($build/ctest-junit.xml) feeds scripts/reliability.py.
# Leak checking is the fuzz targets' part: here the processes share LibTorch's process-lifetime
# allocations.
#   scripts/sanitize.sh                      the CI set: every parser, the plugin loader and the
#                                            trainer loop
#   scripts/sanitize.sh --all                the whole suite (about 14 minutes more on 2 cores)
#   scripts/sanitize.sh --build TARGET...    only build these targets (scripts/fuzz.sh does so)
#   scripts/sanitize.sh ARGS...              ctest arguments of your own
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${PEFTKIT_SANITIZE_DIR:-$root/build-sanitize}
# The CI set, by test suite: tensor files (.pth, zip, safetensors), recipes and options, the
# tokenizer's vocabulary, every dataset format, adapters and state files of other tools, model
# files and size bombs, plugin loading, the quantizers' pre-quantized files, and the trainer loop
# (kill loop, resume of every method, full disk, read-only folder). Only the programs that hold
# them are built (with the program and every plugin they run).
ci_set='^(x060\.)?(TensorIoTest|Crc32|RecipeTest|ClosestMatch|ResolveDevice|OptionSchema|OptionValueText|Options|WorldTokenizer|JsonlTest|BinidxTest|NumpyDatasetTest|TextTest|DummyTest|AdapterCommandsTest|ModelCommands|StateFile|PluginRegistry|AbiTag|PluginSearchPath|Quantizers|TrainerTest|Trainer/ResumeEveryMethod)\.'
ci_targets="tensor_io_test recipe_test options_test world_tokenizer_test jsonl_dataset_test
  binidx_dataset_test numpy_dataset_test text_dataset_test dummy_dataset_test adapter_commands_test
  model_commands_test rwkv_model_test plugin_registry_test quantizers_test trainer_test peftkit
  peftkit-plugins"
build_only=0
case ${1:-} in
  --all) shift; selection=() targets="" ;;
  --build) shift; build_only=1 selection=() targets="$*" ;;
  "") selection=(-R "$ci_set") targets=$ci_targets ;;
  *) selection=() targets="" ;;
esac
if [[ -z ${CXX:-} ]] && command -v clang++ >/dev/null; then export CC=clang CXX=clang++; fi
PEFTKIT_BUILD_DIR="$build" PEFTKIT_BUILD_TYPE=RelWithDebInfo PEFTKIT_BUILD_TARGETS="$targets" \
  "$root/scripts/build.sh" -DPEFTKIT_SANITIZE=ON -DPEFTKIT_CUDA=OFF \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG"
((build_only)) && exit 0
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:check_initialization_order=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
ctest --test-dir "$build" --output-on-failure -j "$(nproc)" --output-junit "$build/ctest-junit.xml" \
  "${selection[@]}" "$@"
