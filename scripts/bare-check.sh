#!/usr/bin/env bash
# The README's first command on a bare Debian 12 (debootstrap minbase) with
# only rustup in it: first without the prerequisites (it must fail for want
# of a C compiler), then after the README's prerequisite line, then the
# walk-through. Needs root, debootstrap, and the host's rustup toolchain,
# which is bind-mounted in (a bare machine with only rustup present). The
# host's CA certificates are copied in so crates.io can be reached where
# egress goes through an intercepting proxy. Not part of CI: about five
# minutes on two cores, most of it the release build.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bare="${1:-/tmp/kamiguard-bare}"
rustup_home="${RUSTUP_HOME:-$HOME/.rustup}"
command -v debootstrap >/dev/null || { echo "bare-check: needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }
rm -rf "${bare}"
debootstrap --variant=minbase bookworm "${bare}" http://deb.debian.org/debian >/dev/null
cp /etc/resolv.conf "${bare}/etc/resolv.conf"
mkdir -p "${bare}/etc/ssl" "${bare}/root/.rustup" "${bare}/root/.cargo/bin"
cp -a /etc/ssl/certs "${bare}/etc/ssl/"
cp -a "$(command -v rustup)" "${bare}/root/.cargo/bin/rustup"
ln -sf rustup "${bare}/root/.cargo/bin/cargo"
ln -sf rustup "${bare}/root/.cargo/bin/rustc"
git clone -q "${root}" "${bare}/root/kamiguard"
mount -t proc proc "${bare}/proc"
mount --bind /dev "${bare}/dev"
mount --bind "${rustup_home}" "${bare}/root/.rustup"
trap 'umount "${bare}/root/.rustup" "${bare}/dev" "${bare}/proc"' EXIT
in_bare() { chroot "${bare}" /bin/bash -c "export PATH=/root/kamiguard/target/release:/root/.cargo/bin:\$PATH HOME=/root; cd /root/kamiguard && $1"; }
demo='cargo run --release -- demo --events 3000'
if in_bare "${demo}" >"${bare}/without.log" 2>&1; then
    echo "bare-check: the demo built without the prerequisites; the README's line may be stale" >&2
else
    echo "bare-check: without the prerequisites: $(grep -m1 '^error' "${bare}/without.log")"
fi
# The README's prerequisite line, as root (no sudo on a bare system).
line="$(grep -o 'sudo apt-get install -y [^`]*' "${root}/README.md" | head -1)"
in_bare "export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && ${line#sudo }" >/dev/null
in_bare "${demo}" 2>"${bare}/with.log" | tail -3
in_bare "bash tests/walkthrough.sh" 2>"${bare}/walkthrough.log" | tail -1
echo "bare-check: ok"
