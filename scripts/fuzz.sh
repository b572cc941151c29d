#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/) for a bounded time each.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET [TARGET...]]     (default: 60, every target)
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`). The
# corpora are seeded at fuzz time from ../shared/data (hexcast-fuzz-seeds) plus the small
# handwritten seeds in fuzz/seeds; nothing from the data set is committed. Crashes land in
# fuzz/artifacts/<target>/; each one found so far is fixed and kept as a unit test in the
# crate that owns the code. Prints one line per target: runs, seconds, corpus size, result.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds="${1:-60}"
shift || true
data="${HEXCAST_DATA:-../shared/data}"

command -v cargo-fuzz >/dev/null || { echo "fuzz.sh: cargo-fuzz missing: cargo install cargo-fuzz --locked" >&2; exit 1; }

cargo build --locked -p hexcast-tests --bin hexcast-fuzz-seeds
target/debug/hexcast-fuzz-seeds --data "$data" --out fuzz/corpus >&2
for d in fuzz/seeds/*/; do
    t=$(basename "$d")
    mkdir -p "fuzz/corpus/$t"
    find "$d" -maxdepth 1 -type f -exec cp {} "fuzz/corpus/$t/" \;
done

(cd fuzz && cargo +nightly fuzz build -O)
if (($# > 0)); then
    targets=("$@")
else
    mapfile -t targets < <(cd fuzz && cargo +nightly fuzz list)
fi

mkdir -p fuzz/logs
failed=0
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t"
    log="fuzz/logs/$t.log"
    # -rss_limit_mb and -timeout: a hostile input may not take a GiB or a second.
    if (cd fuzz && cargo +nightly fuzz run -O "$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -max_len=262144 \
        -print_final_stats=1) >"$log" 2>&1; then
        result=ok
    else
        result="CRASH (see $log, fuzz/artifacts/$t)"
        failed=1
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
    corpus=$(find "fuzz/corpus/$t" -type f | wc -l)
    printf '%-28s %6ss  runs %10s  corpus %6s  %s\n' "$t" "$seconds" "${runs:-?}" "$corpus" "$result"
done
exit "$failed"
