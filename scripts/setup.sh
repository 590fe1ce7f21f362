#!/usr/bin/env bash
# Installs what kamiguard's build and tests need, skipping what is there.
# Idempotent: safe to run on every test run and on a fresh machine.
set -euo pipefail

say() { printf 'setup: %s\n' "$*"; }

if ! command -v cargo >/dev/null 2>&1; then
    say "cargo is missing: install the Rust toolchain (rustup) first" >&2
    exit 1
fi

# rustfmt and clippy for the CI gate.
if command -v rustup >/dev/null 2>&1; then
    for component in rustfmt clippy; do
        if ! rustup component list --installed 2>/dev/null | grep -q "^${component}"; then
            say "installing the ${component} component"
            rustup component add "${component}"
        fi
    done
fi

# C toolchain pieces librdkafka (rdkafka-sys) builds with: make, a C
# compiler, zlib and OpenSSL headers (TLS and SASL/SCRAM to brokers).
missing=()
command -v make >/dev/null 2>&1 || missing+=(make)
command -v cc >/dev/null 2>&1 || missing+=(gcc)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
# Prometheus and promtool: the real scraper for the metrics and alert tests.
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
# kcat, an outside client of the demo's mock cluster (the README says it attaches).
command -v kcat >/dev/null 2>&1 || missing+=(kcat)
# curl, the TLS client of the admin API test.
command -v curl >/dev/null 2>&1 || missing+=(curl)
# systemd-analyze, to verify deploy/systemd/kamiguard.service.
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
# Chromium, headless: the backtest report's browser test takes a screenshot.
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
for pkg in zlib1g-dev libssl-dev pkg-config python3-venv; do
    dpkg -s "${pkg}" >/dev/null 2>&1 || missing+=("${pkg}")
done
if ((${#missing[@]})); then
    say "installing Debian packages: ${missing[*]}"
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    ${sudo_cmd} apt-get update -qq
    DEBIAN_FRONTEND=noninteractive ${sudo_cmd} apt-get install -y -qq "${missing[@]}"
fi

# The test broker: Tansu 0.6.0, a Kafka-protocol broker (memory and SQLite
# storage). About 12 minutes to build on two cores, once.
TANSU_VERSION=0.6.0
tansu_bin="${CARGO_HOME:-$HOME/.cargo}/bin/tansu"
if [ -x "${tansu_bin}" ] && "${tansu_bin}" --version 2>/dev/null | grep -q "${TANSU_VERSION}"; then
    :
else
    say "installing tansu ${TANSU_VERSION} (takes about 12 minutes)"
    cargo install tansu --version "${TANSU_VERSION}" --locked --features dynostore,libsql
fi

# The outside client for the interoperability test: kafka-python, an
# independent pure-Python implementation of the protocol, in a venv of ours.
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${root}/.venv-interop"
# PyYAML there too, for the deploy/ manifest checks.
KAFKA_PYTHON_VERSION=2.2.15
PYYAML_VERSION=6.0.2
if ! "${venv}/bin/python" -c "import kafka, yaml, sys; sys.exit(kafka.__version__ != '${KAFKA_PYTHON_VERSION}')" 2>/dev/null; then
    say "installing kafka-python ${KAFKA_PYTHON_VERSION} and PyYAML ${PYYAML_VERSION} into .venv-interop"
    python3 -m venv "${venv}"
    "${venv}/bin/pip" install -q "kafka-python==${KAFKA_PYTHON_VERSION}" "PyYAML==${PYYAML_VERSION}"
fi

say "ready"
