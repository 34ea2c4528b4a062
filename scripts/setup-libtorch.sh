#!/usr/bin/env bash
# Makes libtorch 2.11.0 and Gloo's headers available to the build, once per machine.
#
# - If LIBTORCH is set, it is used as it is.
# - Otherwise torch==2.11.0 from PyPI is installed into a virtual environment in a per-user
#   cache folder keyed by the version, shared by every clone on the machine, and its
#   `torch/` folder is linked at `.libtorch` (ignored by git), which `.cargo/config.toml`
#   points the build at. A second run finds the marker file and does nothing.
set -euo pipefail

TORCH_VERSION="2.11.0"
root="$(cd "$(dirname "$0")/.." && pwd)"
link="$root/.libtorch"

need() {
  command -v "$1" >/dev/null 2>&1 || { echo "error: '$1' not found: install $2" >&2; exit 1; }
}

if [ -n "${LIBTORCH:-}" ]; then
  [ -f "$LIBTORCH/lib/libtorch_cpu.so" ] || {
    echo "error: LIBTORCH=$LIBTORCH has no lib/libtorch_cpu.so: point it at a libtorch $TORCH_VERSION folder" >&2
    exit 1
  }
  ln -sfn "$LIBTORCH" "$link"
fi

if [ -z "${LIBTORCH:-}" ]; then
  need python3 "Python 3 (e.g. apt install python3 python3-venv)"
  need g++ "a C++ compiler (e.g. apt install g++)"
  python3 -m pip --version >/dev/null 2>&1 || { echo "error: pip not found: install pip for python3 (e.g. apt install python3-pip)" >&2; exit 1; }

  cache="${XDG_CACHE_HOME:-$HOME/.cache}/reformer/torch-$TORCH_VERSION"
  marker="$cache/.installed"
  if [ ! -f "$marker" ]; then
    echo "Installing torch==$TORCH_VERSION from PyPI into $cache (one time, ~4.7 GB)..."
    # A lock so that two clones setting up at once do not install into the same folder.
    mkdir -p "$(dirname "$cache")"
    exec 9>"$cache.lock"
    flock 9
    if [ ! -f "$marker" ]; then
      rm -rf "$cache"
      python3 -m venv "$cache" || { echo "error: python3 -m venv failed: install python3-venv" >&2; exit 1; }
      "$cache/bin/pip" install --quiet --disable-pip-version-check "torch==$TORCH_VERSION"
      touch "$marker"
    fi
  fi

  # The CUDA toolkit headers (crt, cccl) that libtorch's NCCL process-group header needs
  # beyond what the wheel's CUDA packages ship, at the wheel's CUDA version: small, and
  # only read by the build.
  nccl_marker="$cache/.nccl-headers"
  if [ ! -f "$nccl_marker" ]; then
    echo "Installing the CUDA crt and cccl headers (for the NCCL backend) into $cache..."
    exec 9>"$cache.lock"
    flock 9
    if [ ! -f "$nccl_marker" ]; then
      "$cache/bin/pip" install --quiet --disable-pip-version-check --no-deps \
        "nvidia-cuda-crt==13.0.*" "nvidia-cuda-cccl==13.0.*"
      touch "$nccl_marker"
    fi
  fi

  torch_dir="$("$cache/bin/python" -c 'import importlib.util, os; print(os.path.dirname(importlib.util.find_spec("torch").origin))')"
  ln -sfn "$torch_dir" "$link"
fi

# Gloo's headers, which libtorch's c10d headers include but the wheel does not ship (its
# Gloo is compiled into libtorch_cpu): taken from Debian's libgloo-dev package, unpacked
# once next to the wheel (no root needed), linked at `.gloo`.
gloo="${XDG_CACHE_HOME:-$HOME/.cache}/reformer/gloo-headers"
if [ -n "${GLOO_INCLUDE:-}" ]; then
  [ -f "$GLOO_INCLUDE/gloo/context.h" ] || { echo "error: GLOO_INCLUDE=$GLOO_INCLUDE has no gloo/context.h" >&2; exit 1; }
  ln -sfn "$GLOO_INCLUDE" "$root/.gloo"
  exit 0
fi
if [ ! -f "$gloo/gloo/context.h" ]; then
  need apt-get "apt (Debian or Ubuntu), or set GLOO_INCLUDE to a folder holding gloo/context.h"
  need dpkg-deb "dpkg"
  echo "Fetching Gloo's headers (Debian package libgloo-dev) into $gloo..."
  work="$(mktemp -d)"
  fetch() { (cd "$work" && apt-get download libgloo-dev >/dev/null 2>&1); }
  # Without package lists the download fails; as root, fetch the lists once and retry.
  fetch || { [ "$(id -u)" = 0 ] && apt-get update -qq >/dev/null 2>&1 && fetch; } || {
    echo "error: 'apt-get download libgloo-dev' failed: run 'apt-get update' first, or set GLOO_INCLUDE" >&2
    exit 1
  }
  dpkg-deb -x "$work"/libgloo-dev_*.deb "$work/root"
  rm -rf "$gloo.partial" && mkdir -p "$gloo.partial"
  cp -r "$work/root/usr/include/gloo" "$gloo.partial/"
  rm -rf "$gloo" && mv "$gloo.partial" "$gloo"
  rm -rf "$work"
fi
ln -sfn "$gloo" "$root/.gloo"
