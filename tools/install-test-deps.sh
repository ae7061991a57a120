#!/usr/bin/env bash
# Installs what the test suites need on a fresh Debian machine (as root),
# skipping whatever is already present. Called by `make test`.
set -euo pipefail

need_apt=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for pkg in comerr-dev ocfs2-tools-dev pkg-config gcc libc6-dev make \
           qemu-system-x86 busybox-static cpio iproute2 iptables; do
    have_pkg "$pkg" || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "installing Debian packages: ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if ! python3 -c 'import pytest' 2>/dev/null; then
    echo "installing pytest"
    python3 -m pip install -q pytest
fi
