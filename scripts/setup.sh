#!/usr/bin/env bash
# Installs what peftkit builds and tests with, on Debian 12 or a derivative. Idempotent, and quick
# when everything is already there:
#   - Debian packages: compiler, CMake, Ninja, ccache, Boost 1.74 (DLL, Program_options), toml++,
#     spdlog, GoogleTest, nlohmann-json; Clang with libFuzzer and the sanitizers for the fuzz targets,
#     and clang-format for the format check;
#     Chromium (optional) to render the compare report in a browser test;
#   - LibTorch from the PyPI wheel torch==$PEFTKIT_TORCH_VERSION, with NumPy and safetensors for the
#     tests' fixtures and checks, in
#     the project-local virtual environment .venv (no system Python changes).
# Set PEFTKIT_SKIP_APT=1 to skip the Debian packages (you installed them another way).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
torch_version=${PEFTKIT_TORCH_VERSION:-2.11.0}
numpy_version=2.3.5
safetensors_version=0.7.0
packaging_version=25.0
venv="$root/.venv"

debs=(g++ cmake ninja-build ccache pkg-config libboost1.74-dev libboost-program-options1.74-dev
      libtomlplusplus-dev libspdlog-dev libgtest-dev nlohmann-json3-dev
      libgloo-dev                       # declarations of c10d's Gloo process group (core/dist/)
      clang libclang-rt-14-dev llvm-14  # Clang, libFuzzer and the sanitizers' symbolizer: scripts/fuzz.sh
      clang-format-14)                  # scripts/format.sh --check, run by scripts/test.sh
# Wanted by one test only (the compare report rendered in a real browser, which skips with a message
# without it): a failed install is a warning, not an error.
optional_debs=(chromium)

if [[ "${PEFTKIT_SKIP_APT:-0}" != 1 ]]; then
  missing=()
  for deb in "${debs[@]}"; do
    dpkg-query -W -f='${db:Status-Status}' "$deb" 2>/dev/null | grep -qx installed || missing+=("$deb")
  done
  if ((${#missing[@]})); then
    echo "setup: installing Debian packages: ${missing[*]}"
    sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
  for deb in "${optional_debs[@]}"; do
    dpkg-query -W -f='${db:Status-Status}' "$deb" 2>/dev/null | grep -qx installed && continue
    echo "setup: installing $deb (optional: the browser test of the compare report)"
    sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
    { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$deb"; } ||
      echo "setup: warning: $deb could not be installed; that test will skip and say so"
  done
fi

stamp="$venv/.peftkit-torch-$torch_version-numpy-$numpy_version-safetensors-$safetensors_version-packaging-$packaging_version"
if [[ ! -f "$stamp" ]]; then
  python=${PYTHON:-python3}
  if ! "$python" -m venv --help >/dev/null 2>&1; then
    echo "setup: $python cannot create virtual environments; installing python3-venv"
    sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
    $sudo apt-get install -y -qq python3-venv
  fi
  echo "setup: installing torch==$torch_version into $venv (a large download the first time)"
  [[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "torch==$torch_version" "numpy==$numpy_version" "safetensors==$safetensors_version" "packaging==$packaging_version"
  "$venv/bin/python" -c "import torch, sys; v = torch.__version__.split('+')[0]; \
sys.exit(0 if v == '$torch_version' else 'torch ' + v + ' installed, expected $torch_version')"
  touch "$stamp"
fi

# The RWKV World tokenizer's vocabulary, taken from the rwkv package on PyPI (not committed).
vocab="$root/data/rwkv_vocab_v20230424.txt"
vocab_sha256=8324476023347dec2964625ccb2075c864d250a9c6d9a74f36daba628de8c008
if [[ ! -f "$vocab" ]]; then
  echo "setup: fetching rwkv_vocab_v20230424.txt from the rwkv==0.8.32 wheel"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  "$venv/bin/pip" download -q --disable-pip-version-check --no-deps rwkv==0.8.32 -d "$tmp"
  mkdir -p "$root/data"
  "$venv/bin/python" - "$tmp"/rwkv-0.8.32-*.whl "$vocab.part" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel, open(sys.argv[2], "wb") as out:
    out.write(wheel.read("rwkv/rwkv_vocab_v20230424.txt"))
PY
  echo "$vocab_sha256  $vocab.part" | sha256sum -c --quiet - ||
    { rm -f "$vocab.part"; echo "setup: the vocabulary's checksum does not match" >&2; exit 1; }
  mv "$vocab.part" "$vocab"
fi
