#!/usr/bin/env bash
# Instruction counts (callgrind) per checkout + return and per request through the layer,
# bare and with telemetry, beside their baselines; and heap allocations per iteration.
#
# usage: scripts/instructions.sh [ITERATIONS]   (default 20000; needs valgrind)
#
# Unlike criterion's times, these counts do not move with the machine's load: a change
# that adds work shows here even on a busy machine. They count instructions, not time (a
# cache miss or a contended atomic costs more than its one instruction), so read them beside
# the criterion ratios of scripts/bench.sh, which runs this script at its end.
set -euo pipefail
cd "$(dirname "$0")/.."
iterations=${1:-20000}
if ! command -v valgrind >/dev/null; then
    echo "instruction counts: valgrind is not installed (apt-get install valgrind)" >&2
    exit 1
fi
cargo build -q --release -p pool-benches --example instructions
bin=${CARGO_TARGET_DIR:-target}/release/examples/instructions
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
cases="checkout_bb8 checkout_pool_core checkout_pool_core_telemetry request_by_hand
       request_by_hand_extension request_floor request_layer request_layer_no_metrics
       request_layer_eager request_no_db request_no_db_layer"
for case in $cases; do
    valgrind --tool=callgrind --collect-atstart=no --toggle-collect='instructions::measure*' \
        --callgrind-out-file="$out/$case" "$bin" "$case" "$iterations" >/dev/null 2>&1
done
python3 - "$out" "$iterations" <<'PY'
import pathlib
import re
import sys

out, iterations = pathlib.Path(sys.argv[1]), int(sys.argv[2])
ALLOC = {"__rustc::__rust_alloc", "__rustc::__rust_alloc_zeroed", "__rustc::__rust_realloc"}


def count(path):
    """Instructions and heap allocations (calls into Rust's allocator) in one profile."""
    names, calls, callee, total = {}, 0, None, 0
    for line in path.read_text().splitlines():
        m = re.match(r"(c?fn)=\((\d+)\)(?: (.*))?", line)
        if m:
            kind, key, name = m.groups()
            if name:
                names[key] = name.strip()
            callee = names.get(key) if kind == "cfn" else None
        elif line.startswith("calls=") and callee in ALLOC:
            calls += int(line.split()[0][len("calls="):])
        elif line.startswith(("summary:", "totals:")):
            total = int(line.split()[1])
    return total / iterations, calls / iterations


rows = [
    ("checkout + return", "checkout_pool_core", "checkout_bb8"),
    ("  with telemetry", "checkout_pool_core_telemetry", "checkout_bb8"),
    ("request through the layer", "request_layer", "request_by_hand"),
    ("  over the floor", "request_layer", "request_floor"),
    ("  floor: by hand + extension + records", "request_floor", "request_by_hand"),
    ("  no metrics", "request_layer_no_metrics", "request_by_hand"),
    ("  by hand + extension", "request_by_hand_extension", "request_by_hand"),
    ("  eager mode", "request_layer_eager", "request_by_hand"),
    ("a route with no database, through the layer", "request_no_db_layer", "request_no_db"),
]
got = {p.name: count(p) for p in out.iterdir()}
print(f"\n{'instructions per iteration':40} {'baseline':>9} {'ours':>9} {'ratio':>6}   allocations")
for label, ours, base in rows:
    (o, oa), (b, ba) = got[ours], got[base]
    print(f"{label:40} {b:9.0f} {o:9.0f} {o / b:5.2f}x   {oa:.1f} (baseline {ba:.1f})")
PY
