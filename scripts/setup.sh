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

# The tests need nothing else today: they write their own GeoIP fixture
# databases (mmdb-writer, a dev-dependency) and start no external process.
# The Kafka pipeline work adds the Tansu broker and kafka-python here.
say "ready"
