#!/usr/bin/env bash
# Fuzzes event parsing and rule loading with cargo-fuzz (libFuzzer).
#   scripts/fuzz.sh [SECONDS_PER_TARGET]   default 600; CI runs it for 20.
# Only the stable toolchain is on these machines: cargo-fuzz needs nightly
# flags (-Zsanitizer), which RUSTC_BOOTSTRAP=1 unlocks on stable. The seed
# corpus is built from the shipped rule files and the golden scenarios. A
# crash leaves its input in fuzz/artifacts/<target>/: add it as a regression
# test (src/event/tests.rs or tests/cli.rs) before fixing it.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-600}"
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: cargo-fuzz is missing: scripts/setup.sh installs it" >&2
    exit 1
fi
export RUSTC_BOOTSTRAP=1

corpus=fuzz/corpus
mkdir -p "${corpus}/parse_event" "${corpus}/load_rules"
cp config/rules/*.toml "${corpus}/load_rules/"
n=0
for f in tests/scenarios/*/events.jsonl; do
    while IFS= read -r line && [ "${n}" -lt 400 ]; do
        n=$((n + 1))
        printf '%s' "${line}" > "${corpus}/parse_event/seed-${n}.json"
    done < "${f}"
done

for target in parse_event load_rules; do
    echo "fuzz: ${target} for ${seconds}s"
    cargo fuzz run --release "${target}" "${corpus}/${target}" -- \
        -max_total_time="${seconds}" -max_len=70000 -timeout=10 -print_final_stats=1
done
echo "fuzz: no crashes"
