#!/usr/bin/env bash
# One entry point for a fresh Debian 12 machine (run as root, or with sudo available):
#   bash scripts/dev.sh demo    install everything, then run the demo
#   bash scripts/dev.sh test    install everything, then run the whole test suite
#   bash scripts/dev.sh bench   install everything, then run the benchmarks
# Idempotent: packages and the virtual environment are only installed when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(fuse3 libfuse3-dev pkg-config exfatprogs exfat-fuse gocryptfs rclone swtpm swtpm-tools tpm2-tools
              e2fsprogs util-linux procps
              python3 python3-venv python3-dev gcc udev systemd patch)

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

install_system() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "==> installing Debian packages: ${missing[*]}"
    as_root apt-get update -qq
    # udev's tools check the generated rules (udevadm test); its daemon must not start
    # here: a policy-rc.d that refuses every service start, only for this install.
    local policy_made=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
      as_root chmod 755 /usr/sbin/policy-rc.d
      policy_made=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    if [ "$policy_made" = 1 ]; then as_root rm -f /usr/sbin/policy-rc.d; fi
  fi
}

# The system's Debian python3 (with venv support from python3-venv), not the first python3
# in PATH: a private interpreter there (pyenv, a user's own build) gives the venv, and so
# /usr/bin/pqcfs, a path other users may not be allowed to run. $PYTHON overrides.
PYTHON="${PYTHON:-/usr/bin/python3}"

install_python() {
  if [ ! -x .venv/bin/python ]; then
    if ! "$PYTHON" -c "import venv, ensurepip" 2>/dev/null; then
      echo "==> $PYTHON can not make a virtual environment (install python3-venv, or set PYTHON=...)" >&2
      exit 1
    fi
    echo "==> creating .venv with $PYTHON ($("$PYTHON" --version 2>&1))"
    "$PYTHON" -m venv .venv
  fi
  if ! .venv/bin/python -c "import pqcfs, pyfuse3, kyber_py, pytest, shtab, argparse_manpage" 2>/dev/null \
     || [ pyproject.toml -nt .venv/.installed ] || ! patched_pyfuse3; then
    echo "==> installing pqcfs into .venv"
    .venv/bin/pip install -q --upgrade pip >/dev/null
    install_pyfuse3
    .venv/bin/pip install -q -e '.[test]'
    touch .venv/.installed
  fi
}

# pyfuse3 3.5.0 with patches/ applied (a fallocate handler, docs/posix.md; a worker that
# waits for the next request outside trio's loop, docs/benchmarks.md; FUSE_HANDLE_KILLPRIV_V2,
# docs/posix.md), built from its source release once per patch set and kept as a wheel in
# the user's cache. The patches apply in the order of their names.
PYFUSE3_VERSION=3.5.0
patches_tag() { cat patches/pyfuse3-"$PYFUSE3_VERSION"-*.patch | sha256sum | cut -c1-12; }
# The build in .venv is the one of today's patches (a changed patch builds anew).
patched_pyfuse3() {
  [ "$(cat .venv/.pyfuse3-patches 2>/dev/null)" = "$(patches_tag)" ] && .venv/bin/python -c "
import inspect, pyfuse3, sys
sys.exit(not (hasattr(pyfuse3.Operations, 'fallocate')
              and 'next_request_spin_us' in inspect.signature(pyfuse3.main).parameters
              and hasattr(pyfuse3, 'handles_killpriv_v2')))" 2>/dev/null
}
install_pyfuse3() {
  local cache="${XDG_CACHE_HOME:-$HOME/.cache}/pqcfs/wheels"
  local tag
  tag=$(patches_tag)
  local wheel
  wheel=$(ls "$cache/$tag"/pyfuse3-"$PYFUSE3_VERSION"-*.whl 2>/dev/null | head -1 || true)
  if [ -z "$wheel" ]; then
    echo "==> building pyfuse3 $PYFUSE3_VERSION with patches/ applied"
    local src
    src=$(mktemp -d)
    .venv/bin/pip download -q --no-deps --no-binary pyfuse3 "pyfuse3==$PYFUSE3_VERSION" -d "$src"
    tar -xzf "$src/pyfuse3-$PYFUSE3_VERSION.tar.gz" -C "$src"
    for p in patches/pyfuse3-"$PYFUSE3_VERSION"-*.patch; do
      patch -s -p1 -d "$src/pyfuse3-$PYFUSE3_VERSION" < "$p"
    done
    mkdir -p "$cache/$tag"
    .venv/bin/pip wheel -q --no-deps "$src/pyfuse3-$PYFUSE3_VERSION" -w "$cache/$tag"
    rm -rf "$src"
    wheel=$(ls "$cache/$tag"/pyfuse3-"$PYFUSE3_VERSION"-*.whl | head -1)
  fi
  .venv/bin/pip install -q --no-deps --force-reinstall "$wheel"
  echo "$tag" > .venv/.pyfuse3-patches
}

# What the operating system must find (/usr/bin/pqcfs, the mount(8) and umount helpers,
# the man page and completions) is put in place by the same command users run after
# installing the wheel: `pqcfs system install`. Here its launchers name this checkout's
# .venv interpreter, so they break when the checkout goes; `pqcfs doctor` says so, and
# `pqcfs system install` from an installed pqcfs repairs them (README: Install).
install_system_files() {
  echo "==> pqcfs system install (launchers for $PWD/.venv/bin/python)"
  local code=0
  as_root .venv/bin/pqcfs system install >/dev/null || code=$?
  if [ "$code" = 15 ]; then
    echo "==> left as it is (see above): mount(8) and systemd keep running what is installed there" >&2
  elif [ "$code" != 0 ]; then
    exit "$code"
  fi
}

cmd="${1:-}"
case "$cmd" in
  demo|test|bench) ;;
  *) echo "usage: bash scripts/dev.sh demo|test|bench" >&2; exit 2 ;;
esac
install_system
install_python
install_system_files
shift
case "$cmd" in
  demo)  exec .venv/bin/python examples/demo.py "$@" ;;
  test)  exec .venv/bin/python -m pytest -p no:cacheprovider "$@" ;;
  bench) exec .venv/bin/python benchmarks/bench.py "$@" ;;
esac
