#!/usr/bin/env bash
# One entry point for a fresh Debian 12 machine (run as root, or with sudo available):
#   bash scripts/dev.sh demo    install everything, then run the demo
#   bash scripts/dev.sh test    install everything, then run the whole test suite
#   bash scripts/dev.sh bench   install everything, then run the benchmarks
# Idempotent: packages and the virtual environment are only installed when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(fuse3 libfuse3-dev pkg-config exfatprogs exfat-fuse gocryptfs e2fsprogs util-linux procps
              python3 python3-venv python3-dev gcc udev systemd)

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
     || [ pyproject.toml -nt .venv/.installed ]; then
    echo "==> installing pqcfs into .venv"
    .venv/bin/pip install -q --upgrade pip >/dev/null
    .venv/bin/pip install -q -e '.[test,man]'
    touch .venv/.installed
  fi
}

# The man page and bash/zsh completions, generated from the parser into the virtual
# environment (never into the source tree) and linked where man, bash-completion and zsh look.
install_docs() {
  .venv/bin/python -m pqcfs.devtools.manpage .venv/share/pqcfs >/dev/null
  link_ours "$PWD/.venv/share/pqcfs/man1/pqcfs.1" /usr/local/share/man/man1/pqcfs.1
  link_ours "$PWD/.venv/share/pqcfs/bash-completion/pqcfs" /usr/share/bash-completion/completions/pqcfs
  link_ours "$PWD/.venv/share/pqcfs/zsh/_pqcfs" /usr/local/share/zsh/site-functions/_pqcfs
}

# link_ours TARGET LINK: a symlink, never over a file that is not one of our links.
link_ours() {
  local target="$1" link="$2"
  if [ -e "$link" ] && ! { [ -L "$link" ] && readlink "$link" | grep -q '/\.venv/'; }; then
    echo "==> $link exists and is not pqcfs' link; left alone" >&2
    return 0
  fi
  as_root mkdir -p "$(dirname "$link")"
  [ "$(readlink "$link" 2>/dev/null)" = "$target" ] || as_root ln -sfn "$target" "$link"
}

# mount(8), Debian's mount.fuse3 (which runs `pqcfs SOURCE MOUNTPOINT -o OPTIONS` through
# /bin/sh) and systemd look for helpers in the standard directories only: link ours there,
# never over a file that is not one of our links.
install_links() {
  local pair
  for pair in "pqcfs:/usr/bin/pqcfs" "mount.pqcfs:/usr/sbin/mount.pqcfs" \
              "umount.fuse.pqcfs:/usr/sbin/umount.fuse.pqcfs" "umount.fuse:/usr/sbin/umount.fuse"; do
    link_ours "$PWD/.venv/bin/${pair%%:*}" "${pair#*:}"
  done
}

cmd="${1:-}"
case "$cmd" in
  demo|test|bench) ;;
  *) echo "usage: bash scripts/dev.sh demo|test|bench" >&2; exit 2 ;;
esac
install_system
install_python
install_links
install_docs
shift
case "$cmd" in
  demo)  exec .venv/bin/python examples/demo.py "$@" ;;
  test)  exec .venv/bin/python -m pytest -p no:cacheprovider "$@" ;;
  bench) exec .venv/bin/python benchmarks/bench.py "$@" ;;
esac
