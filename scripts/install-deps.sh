#!/usr/bin/env bash
# Installs what Keyhold's build, tests and benchmarks need when it is missing; safe to run often.
#   scripts/install-deps.sh [build|test|bench]   (each level includes the ones before it)
set -euo pipefail
cd "$(dirname "$0")/.."
LEVEL=${1:-test}

say() { printf '==> %s\n' "$*"; }

# --- Swift toolchain: preinstalled on the build machines (/opt/swift); not something apt provides.
if ! command -v swift >/dev/null 2>&1; then
  if [ -x /opt/swift/usr/bin/swift ]; then
    say "swift is not on PATH; using /opt/swift/usr/bin (add it to PATH to silence this)"
  else
    echo "keyhold: error: the Swift 6 toolchain was not found" >&2
    echo "hint: install Swift 6.x from swift.org into /opt/swift and add /opt/swift/usr/bin to PATH" >&2
    exit 1
  fi
fi

# --- Debian packages.
apt_packages=(libsqlite3-dev libcryptsetup-dev libblkid-dev libsystemd-dev pkg-config)
# What the VM test needs: QEMU, a static busybox for its initramfs, udev and the tools run in the guest
# (procps: the demo test also checks with ps that nothing it started is left running).
vm_packages=(qemu-system-x86 busybox-static udev kmod dmsetup e2fsprogs cryptsetup-bin util-linux procps)
case "$LEVEL" in
  build) ;;
  # curl: the trust-boundary tests read Retry-After headers with it.
  # prometheus, prometheus-node-exporter: the monitoring test scrapes a server and an agent's textfile with them.
  # man-db, groff-base, zsh, fish: the man pages render and the completion scripts load in each shell.
  test) apt_packages+=(python3-venv postgresql systemd age cryptsetup-bin curl openssl prometheus prometheus-node-exporter man-db groff-base zsh fish "${vm_packages[@]}") ;;
  bench) apt_packages+=(python3-venv postgresql systemd age cryptsetup-bin curl "${vm_packages[@]}" openssl prometheus prometheus-node-exporter gnupg time) ;;
  *) echo "usage: $0 [build|test|bench]" >&2; exit 2 ;;
esac
missing=()
for p in "${apt_packages[@]}"; do
  # python3-venv is only needed where python3 has no working venv module (Debian's own python3).
  if [ "$p" = python3-venv ] && python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then continue; fi
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  say "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# --- Python test tools in .venv (ignored by git), reinstalled only when the requirements change.
if [ "$LEVEL" != build ]; then
  REQ=Tests/python/requirements.txt
  STAMP=.venv/.requirements-$(sha256sum "$REQ" | cut -c1-16)
  if [ ! -e "$STAMP" ]; then
    say "creating .venv with the Python test tools ($REQ)"
    python3 -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check -r "$REQ"
    rm -f .venv/.requirements-*; touch "$STAMP"
  fi
fi
