#!/usr/bin/env bash
# Runs the benchmarks and prints each result against the baseline measured in the same run.
#
# usage: scripts/bench.sh [criterion args, e.g. a filter such as checkout_seq]
#
# Then, with valgrind installed, scripts/instructions.sh: the same cases as instruction
# counts and allocations.
#
# The ratios are of criterion's typical estimates (the regression slope where criterion has
# one, else the mean). The machine matters less than the ratio, but a busy one still moves it:
# run twice and compare.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo bench -p pool-benches --bench checkout --bench layer -- "$@"

python3 - <<'PY'
import json
import os
import pathlib

root = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", "target")) / "criterion"


def estimate(group, name):
    """Criterion's headline estimate for one benchmark (ns) and its 95 % interval's width
    relative to it, or None if it did not run."""
    path = root / group / name / "new" / "estimates.json"
    if not path.exists():
        return None
    estimates = json.loads(path.read_text())
    typical = estimates.get("slope") or estimates["mean"]
    interval = typical["confidence_interval"]
    width = (interval["upper_bound"] - interval["lower_bound"]) / typical["point_estimate"]
    return typical["point_estimate"], width


# A 95 % interval wider than this means the machine was busy during that measurement.
NOISY = 0.05


def flag(*found):
    return "  noisy" if any(f[1] > NOISY for f in found) else ""


rows = [
    # (group, measured, baseline, what the line says)
    ("checkout_seq", "pool_core_get", "bb8_get_owned", "checkout + return, 1 task"),
    ("checkout_seq", "pool_core_get_no_observer", "bb8_get_owned", "  the same, no observer"),
    ("checkout_seq", "bb8_as_configured", "bb8_get_owned", "  bb8 as pool-core configures it"),
    ("checkout_c64", "pool_core_get", "bb8_get_owned", "checkout + return, 64 tasks"),
    ("request", "layer_unsampled", "bb8_get_owned_by_hand", "request, trace unsampled"),
    ("request", "by_hand_plus_extension_and_metrics", "bb8_get_owned_by_hand",
     "  floor: by hand + extension + records"),
    ("request", "layer_unsampled", "by_hand_plus_extension_and_metrics", "  layer over that floor"),
    ("request", "layer_eager_unsampled", "bb8_get_owned_by_hand", "  eager mode"),
    ("request", "layer_unsampled_no_metrics", "bb8_get_owned_by_hand", "  no metrics"),
]

print()
print(f"{'benchmark':38} {'baseline':>11} {'ours':>11} {'ratio':>7}")
for group, measured, baseline, label in rows:
    ours, base = estimate(group, measured), estimate(group, baseline)
    if ours is None or base is None:
        continue
    ratio = ours[0] / base[0]
    print(f"{label:38} {base[0]:9.1f}ns {ours[0]:9.1f}ns {ratio:6.2f}x{flag(ours, base)}")

sampled = estimate("request", "layer_sampled")
unsampled = estimate("request", "layer_unsampled")
if sampled is not None and unsampled is not None:
    extra = (sampled[0] - unsampled[0]) / 1000
    print(
        f"{'request, trace sampled':38} {unsampled[0]:9.1f}ns {sampled[0]:9.1f}ns "
        f"{extra:+5.2f}us{flag(sampled, unsampled)}"
    )
print(f"(noisy: a 95 % confidence interval wider than {NOISY:.0%} of its estimate; run again)")
PY

# The same cases as instruction counts, which the machine's load does not move.
if command -v valgrind >/dev/null; then
    scripts/instructions.sh
else
    echo "(instruction counts skipped: valgrind is not installed; apt-get install valgrind)"
fi
