#!/usr/bin/env bash
# Makes QEMU's user-mode x86-64 emulator available, once per machine, for running the
# binary on emulated CPUs (tests/emulated_cpus.rs): Debian's qemu-user-static package,
# downloaded with apt-get and unpacked (no root needed to unpack) into the per-user
# cache. Prints the emulator's path.
set -euo pipefail

cache="${XDG_CACHE_HOME:-$HOME/.cache}/reformer/qemu"
emulator="$cache/usr/bin/qemu-x86_64-static"
if [ ! -x "$emulator" ]; then
  command -v apt-get >/dev/null 2>&1 || { echo "apt-get not found: qemu-user-static comes from Debian's packages" >&2; exit 1; }
  mkdir -p "$(dirname "$cache")"
  exec 9>"$cache.lock"
  flock 9
  if [ ! -x "$emulator" ]; then
    download=$(mktemp -d)
    trap 'rm -rf "$download"' EXIT
    if ! (cd "$download" && apt-get download qemu-user-static >/dev/null 2>&1); then
      # A fresh machine may have no package lists yet (refreshing them needs root).
      apt-get update -qq >/dev/null 2>&1 || true
      (cd "$download" && apt-get download qemu-user-static >/dev/null) || {
        echo "apt-get download qemu-user-static failed" >&2
        exit 1
      }
    fi
    rm -rf "$cache.partial"
    dpkg -x "$download"/qemu-user-static_*.deb "$cache.partial"
    rm -rf "$cache"
    mv "$cache.partial" "$cache"
  fi
fi
echo "$emulator"
