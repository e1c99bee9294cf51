#!/usr/bin/env bash
# Real HTTP against real PostgreSQL: the same axum route (`SELECT 1`) through pool-tower's
# layer (lazy and eager), a hand-written handler on bb8 (as pool-core sets bb8 up, and on
# bb8's defaults), deadpool-postgres (RecyclingMethod::Fast) and sqlx's PgPool, the same
# pool size for all; and a route that never touches the database, with and without the
# layer (and behind axum's Extension layer, and with the layer around the whole router).
# wrk drives each in turn, in alternating rounds, on 127.0.0.1; the report gives the
# median requests/s, p99 latency and CPU time a request (user, kernel) of each, and the
# ratios the targets are stated in.
#
# usage: scripts/http-bench.sh [ROUNDS [SECONDS [CONNECTIONS]]]   (default 3 10 64)
# env: POOL_SIZE (10), HTTP_BENCH_VARIANTS (all; see benches/examples/http_server.rs),
#      HTTP_BENCH_QUERY=typed (query_typed instead of query_one), POOL_TEST_DATABASE_URL
#      (else a throwaway server from scripts/pg.sh on port 55499, removed afterwards),
#      HTTP_BENCH_SYSCALLS=1 (also count, with perf, the system calls, context switches and
#      CPU time per request of the service and of PostgreSQL's backends over each run; needs
#      root; perf's tracepoints cost time, so read such a run's counts, not its requests/s,
#      and its CPU times include perf's own cost for each system call counted)
#
# Not part of the test run: a load run on a 2-core machine shares the cores between wrk,
# the service and PostgreSQL, so read the ratios of one run, and compare runs by them.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
seconds=${2:-10}
connections=${3:-64}
size=${POOL_SIZE:-10}
variants=${HTTP_BENCH_VARIANTS:-"layer layer-eager core-direct bb8-core-settings bb8-defaults deadpool sqlx nodb-layer nodb-extension nodb-layer-outer nodb"}

# need COMMAND PACKAGE: installs PACKAGE from Debian's packages when COMMAND is missing.
need() {
    command -v "$1" >/dev/null && return
    if [ "$(id -u)" != 0 ]; then
        echo "http-bench: $1 is not installed (sudo apt-get install -y $2)" >&2
        exit 1
    fi
    echo "http-bench: installing $2 from Debian's packages" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >&2 ||
        { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >&2; }
}

need wrk wrk

syscalls=
[ "${HTTP_BENCH_SYSCALLS:-0}" = 0 ] || syscalls=1
events=raw_syscalls:sys_enter,syscalls:sys_enter_sendto,syscalls:sys_enter_recvfrom,syscalls:sys_enter_writev,syscalls:sys_enter_epoll_wait,context-switches,task-clock
if [ -n "$syscalls" ]; then
    if [ "$(id -u)" != 0 ]; then
        # Tracepoints, and PostgreSQL's backends (another user's processes), need root.
        echo "http-bench: HTTP_BENCH_SYSCALLS needs root (perf's tracepoints, PostgreSQL's processes)" >&2
        exit 1
    fi
    need perf linux-perf
    need ss iproute2
    if ! perf stat -x, -e "$events" -o /dev/null -- true; then
        echo "http-bench: perf cannot count $events here" >&2
        exit 1
    fi
fi

. scripts/http-common.sh
http_setup 55499
port=18480

postmaster=
if [ -n "$syscalls" ]; then
    # The server the URL names: its backends are the ones counted.
    pgport=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.urlsplit(sys.argv[1]).port or 5432)' "$url")
    postmaster=$(ss -Hltnp "sport = :$pgport" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2 || true)
    if [ -z "$postmaster" ]; then
        echo "http-bench: no server listening on port $pgport to count" >&2
        exit 1
    fi
    # Attaching to another user's processes needs more than counting one's own.
    if ! perf stat -x, -e "$events" -p "$postmaster" -o /dev/null -- true; then
        echo "http-bench: perf cannot count PostgreSQL's processes here" >&2
        exit 1
    fi
fi

for round in $(seq "$rounds"); do
    for variant in $variants; do
        # The URL (with its password) goes through the environment, not the command line.
        HTTP_BENCH_DATABASE_URL=$url "$bin" "$variant" "$port" "$size" >"$out/server.log" 2>&1 &
        server=$!
        ready=
        for _ in $(seq 100); do
            if curl -fsS "http://127.0.0.1:$port/" >/dev/null 2>&1; then ready=1; break; fi
            sleep 0.1
        done
        if [ -z "$ready" ]; then
            echo "http-bench: $variant did not come up:" >&2
            cat "$out/server.log" >&2
            kill "$server" 2>/dev/null || true
            exit 1
        fi
        # No separate warm-up run: a wrk run ends by dropping its connections mid-request,
        # and the layer closes the database connections of requests dropped mid-query
        # (bb8, deadpool and sqlx put them back), so a warm-up run would leave the layer's
        # pool to reopen them during the measured one. Every pool starts full (warmed up).
        load=(wrk -t2 -c"$connections" -d"${seconds}s" --latency "http://127.0.0.1:$port/")
        if [ -n "$syscalls" ]; then
            # Exactly over the run: perf counts the given processes while its command (the
            # next perf, then wrk) runs. The backends are the server's children serving a
            # TCP client on 127.0.0.1: the pool's connections, opened before the run.
            backends=$(pgrep -d, -P "$postmaster" -f '127\.0\.0\.1\(' || true)
            if [ -z "$backends" ] && [ "${variant#nodb}" = "$variant" ]; then
                echo "http-bench: $variant: no backend of the server on port $pgport serves 127.0.0.1; PostgreSQL not counted" >&2
            fi
            if [ -n "$backends" ]; then
                load=(perf stat -x, -e "$events" -p "$backends" -o "$out/$variant.$round.postgres"
                    -- "${load[@]}")
            fi
            load=(perf stat -x, -e "$events" -p "$server" -o "$out/$variant.$round.service"
                -- "${load[@]}")
        fi
        # The service's CPU time (user, kernel) in clock ticks, before and after the run:
        # fields 14 and 15 of /proc/PID/stat, which are the 12th and 13th after the
        # parenthesised command name (field 2, which may hold spaces).
        cpu() { sed 's/.*) //' "/proc/$server/stat" | awk '{print $12, $13}'; }
        before=$(cpu)
        "${load[@]}" >"$out/$variant.$round"
        echo "$before $(cpu)" >"$out/$variant.$round.cpu"
        kill "$server"
        wait "$server" 2>/dev/null || true
        server=
        echo "round $round/$rounds: $variant $(grep 'Requests/sec' "$out/$variant.$round")" >&2
    done
done

python3 - "$out" "$rounds" "$variants" "$connections" "$size" "$syscalls" "$(getconf CLK_TCK)" <<'PY'
import pathlib
import re
import statistics
import sys

out, rounds, variants = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split()
connections, size, syscalls, tick = sys.argv[4], sys.argv[5], sys.argv[6], int(sys.argv[7])
UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def parse(path):
    text = path.read_text()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", text).groups()
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    failed = int(errors.group(1)) if errors else 0
    socket = re.search(r"Socket errors: (.*)", text)
    done = int(re.search(r"(\d+) requests in", text).group(1))
    # The service's CPU time over the run, user and kernel, in microseconds a request.
    u0, k0, u1, k1 = map(int, path.with_name(path.name + ".cpu").read_text().split())
    per = lambda ticks: ticks / tick * 1e6 / max(done, 1)
    cpu = (per(u1 - u0), per(k1 - k0))
    return rps, float(value) * UNIT[unit], failed, socket.group(1) if socket else "", cpu


results = {}
for v in variants:
    runs = [parse(out / f"{v}.{r}") for r in range(1, rounds + 1)]
    results[v] = (
        statistics.median(r[0] for r in runs),
        statistics.median(r[1] for r in runs),
        sum(r[2] for r in runs),
        "; ".join(r[3] for r in runs if r[3]),
        statistics.median(r[4][0] for r in runs),
        statistics.median(r[4][1] for r in runs),
    )

print(f"\n{rounds} alternating rounds, wrk -t2 -c{connections}, pool size {size}, 127.0.0.1")
# The service's CPU time a request (its user and kernel time over the run, from
# /proc/PID/stat, in clock ticks of 1/CLK_TCK s) divided by wrk's count of requests. With
# HTTP_BENCH_SYSCALLS=1 it includes perf's cost for each system call counted.
print(f"{'variant':20} {'requests/s':>11} {'p99':>9} {'cpu µs: user':>13} {'kernel':>7}  errors")
for v, (rps, p99, failed, socket, user, kernel) in results.items():
    print(f"{v:20} {rps:11.0f} {p99:7.2f}ms {user:13.2f} {kernel:7.2f}  {failed}"
          f"{'  socket: ' + socket if socket else ''}")
pairs = [
    ("layer", "deadpool"), ("layer", "sqlx"), ("layer", "bb8-core-settings"),
    ("layer", "bb8-defaults"), ("layer-eager", "deadpool"), ("nodb-layer", "nodb"),
    ("nodb-extension", "nodb"), ("nodb-layer", "nodb-extension"), ("nodb-layer-outer", "nodb"),
]
print()
for ours, base in pairs:
    if ours in results and base in results:
        print(f"{ours + ' / ' + base:34} {results[ours][0] / results[base][0]:5.2f}x requests/s")

EVENTS = [("raw_syscalls:sys_enter", "syscalls"), ("sys_enter_sendto", "sendto"),
          ("sys_enter_recvfrom", "recvfrom"), ("sys_enter_writev", "writev"),
          ("sys_enter_epoll_wait", "epoll_wait"), ("context-switches", "switches"),
          ("task-clock", "cpu_us")]
# perf gives task-clock (CPU time) in milliseconds; shown in microseconds a request. It
# includes perf's own cost for each system call counted.
SCALE = {"cpu_us": 1000.0}


def counts(path, requests):
    """Per request, by label; None when nothing was counted (no such process, no requests)."""
    if not path.exists() or requests == 0:
        return None
    found = {}
    for line in path.read_text().splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[0].replace(".", "").isdigit():
            # perf may add a modifier (`task-clock:u`) when it can count user space only.
            name = re.sub(r":[ukh]+$", "", fields[2])
            for event, label in EVENTS:
                if name.endswith(event):
                    found[label] = float(fields[0]) * SCALE.get(label, 1.0) / requests
    return found


if syscalls:
    print("\nper request, medians of the rounds (perf stat over each run, wrk's count of requests)")
    print(f"{'variant':20} {'':9}" + "".join(f"{label:>11}" for _, label in EVENTS))
    for v in variants:
        for side in ("service", "postgres"):
            per_round = []
            for r in range(1, rounds + 1):
                done = re.search(r"(\d+) requests in", (out / f"{v}.{r}").read_text())
                found = counts(out / f"{v}.{r}.{side}", int(done.group(1)) if done else 0)
                if found is not None:
                    per_round.append(found)
            if not per_round:
                continue  # no backends (a route with no database), or no requests
            row = [statistics.median(c.get(label, 0.0) for c in per_round) for _, label in EVENTS]
            print(f"{v if side == 'service' else '':20} {side:9}" + "".join(f"{x:11.2f}" for x in row))
PY
