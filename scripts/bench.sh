#!/usr/bin/env bash
# kamiguard against Kafka itself on one broker (BENCHMARKS.md):
#   scripts/bench.sh [EVENTS] [LATENCY_SECS] [LATENCY_RATE]
# defaults 1000000, 20, and half the measured run rate. Scale-out instead:
#   scripts/bench.sh scale [INSTANCES] [EVENTS] [PARTITIONS]
# defaults 3, 200000, 6: one instance not split, then 1..INSTANCES split.
# Starts its own Tansu broker (memory storage) on a free loopback port, writes
# the fixture geo databases, and runs `kamiguard bench` (release build).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = scale ]; then
    mode=(--scale "${2:-3}" --events "${3:-200000}" --partitions "${4:-6}")
else
    rate_arg=()
    [ -n "${3:-}" ] && rate_arg=(--latency-rate "$3")
    mode=(--events "${1:-1000000}" --latency-secs "${2:-20}" "${rate_arg[@]}")
fi
tansu="${TANSU:-${CARGO_HOME:-$HOME/.cargo}/bin/tansu}"
[ -x "${tansu}" ] || tansu="$(command -v tansu)" || { echo "bench: tansu is missing: run scripts/setup.sh" >&2; exit 1; }

cargo build --release --locked --bin kamiguard --example geo_fixtures
target/release/examples/geo_fixtures target/geo >/dev/null
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
log="$(mktemp)"
"${tansu}" broker --listener-url "tcp://127.0.0.1:${port}" --advertised-listener-url "tcp://127.0.0.1:${port}" \
    --storage-engine memory://tansu/ >"${log}" 2>&1 &
broker=$!
trap 'kill ${broker} 2>/dev/null || true; rm -f "${log}"' EXIT
for _ in $(seq 100); do
    (echo >"/dev/tcp/127.0.0.1/${port}") 2>/dev/null && break
    sleep 0.1
done
echo "bench: machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +%F)"
target/release/kamiguard bench --brokers "127.0.0.1:${port}" "${mode[@]}" \
    --city target/geo/city.mmdb --asn target/geo/asn.mmdb --anonymous target/geo/anonymous.mmdb
