#!/usr/bin/env bash
# Runs the README's walk-through ("First steps") as written: the lines of
# the shell block between the walkthrough markers, in a scratch folder that
# has the clone's config/ and tests/ beside it. `kamiguard` must be on PATH
# (tests/walkthrough.rs puts the built binary there; a user runs
# `cargo install --locked --path .`).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT
ln -s "${root}/config" "${work}/config"
ln -s "${root}/tests" "${work}/tests"
awk '/<!-- walkthrough:/ {on = 1; next} /<!-- \/walkthrough -->/ {on = 0} on && /^```/ {next} on' \
    "${root}/README.md" > "${work}/steps.sh"
if [ ! -s "${work}/steps.sh" ]; then
    echo "no walkthrough block in README.md" >&2
    exit 1
fi
cd "${work}"
bash -euo pipefail -x steps.sh
test -s decisions.jsonl
