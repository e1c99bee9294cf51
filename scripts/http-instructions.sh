#!/usr/bin/env bash
# Instructions per HTTP request, counted by callgrind in the service of
# benches/examples/http_server.rs (the variants of scripts/http-bench.sh) over real HTTP on
# 127.0.0.1 and, for the database routes, real PostgreSQL.
#
# usage: scripts/http-instructions.sh [REQUESTS [CONNECTIONS]]   (default 20000 64; needs valgrind)
# env: HTTP_BENCH_VARIANTS (see below), HTTP_BENCH_QUERY=typed, NO_TELEMETRY=1 (as for the
#      server), POOL_TEST_DATABASE_URL (else a throwaway server from scripts/pg.sh on port
#      55499, removed afterwards)
#
# Each variant runs under callgrind with its counting off. A bounded client (below) sends a
# quarter of REQUESTS to warm the service up, then counting is switched on for exactly
# REQUESTS more, sent over CONNECTIONS keep-alive connections; every connection closes only
# after its last answer, so no request is dropped mid-query (which would make the layer
# close and reopen a connection inside the count). Counts are of the service's own code
# and libraries in user space: not the kernel, not PostgreSQL. They barely move between
# runs, unlike requests/s on a shared machine; but valgrind runs one thread at a time, so
# they show no contention between the workers, and they count instructions, not time (a
# system call or a context switch is one instruction here). Read them beside
# scripts/http-bench.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${1:-20000}
connections=${2:-64}
variants=${HTTP_BENCH_VARIANTS:-"nodb nodb-extension nodb-layer nodb-layer-outer layer layer-eager core-direct bb8-core-manager bb8-core-settings deadpool sqlx"}
for tool in valgrind callgrind_control curl python3; do
    if ! command -v "$tool" >/dev/null; then
        echo "http-instructions: $tool is not installed (apt-get install valgrind curl python3)" >&2
        exit 1
    fi
done
case $requests in '' | *[!0-9]*) echo "http-instructions: REQUESTS $requests is not a number" >&2; exit 1 ;; esac
case $connections in '' | *[!0-9]*) echo "http-instructions: CONNECTIONS $connections is not a number" >&2; exit 1 ;; esac

url=${POOL_TEST_DATABASE_URL:-}
if [ -z "$url" ]; then
    export PGPORT=55499
    url=$(scripts/pg.sh start)
fi

cargo build -q --release -p pool-benches --example http_server
bin=${CARGO_TARGET_DIR:-target}/release/examples/http_server
out=$(mktemp -d)
port=18481
server=
cleanup() {
    [ -n "$server" ] && kill "$server" 2>/dev/null
    rm -rf "$out"
    if [ -z "${POOL_TEST_DATABASE_URL:-}" ]; then scripts/pg.sh destroy >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

# The client: N requests of `GET /` shared by C connections, each sending its next request
# when the last answer is in; prints the count of each status.
cat >"$out/load.py" <<'PY'
import asyncio
import sys


async def connection(host, port, left, statuses):
    reader, writer = await asyncio.open_connection(host, port)
    request = f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    while left[0] > 0:
        left[0] -= 1
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await reader.readexactly(length)
        statuses[status] = statuses.get(status, 0) + 1
    writer.close()
    await writer.wait_closed()


async def main():
    host, port, n, c = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    left, statuses = [n], {}
    await asyncio.gather(*(connection(host, port, left, statuses) for _ in range(c)))
    print(" ".join(f"{status}:{count}" for status, count in sorted(statuses.items())))


asyncio.run(main())
PY

for variant in $variants; do
    # The URL (with its password) goes through the environment, not the command line.
    HTTP_BENCH_DATABASE_URL=$url valgrind -q --tool=callgrind --instr-atstart=no \
        --callgrind-out-file="$out/$variant.%p" "$bin" "$variant" "$port" 10 \
        >"$out/server.log" 2>&1 &
    server=$!
    ready=
    # Under valgrind the service takes seconds to start: up to 60.
    for _ in $(seq 600); do
        if curl -fsS "http://127.0.0.1:$port/" >/dev/null 2>&1; then ready=1; break; fi
        if ! kill -0 "$server" 2>/dev/null; then break; fi
        sleep 0.1
    done
    if [ -z "$ready" ]; then
        echo "http-instructions: $variant did not come up:" >&2
        cat "$out/server.log" >&2
        exit 1
    fi
    python3 "$out/load.py" 127.0.0.1 "$port" $((requests / 4 + 1)) "$connections" >/dev/null
    callgrind_control -i on "$server" >/dev/null 2>&1
    statuses=$(python3 "$out/load.py" 127.0.0.1 "$port" "$requests" "$connections")
    callgrind_control -i off "$server" >/dev/null 2>&1
    callgrind_control -d "$server" >/dev/null 2>&1
    kill "$server"
    wait "$server" 2>/dev/null || true
    if [ "$statuses" != "200:$requests" ]; then
        echo "http-instructions: $variant answered $statuses, not 200:$requests" >&2
        cat "$out/server.log" >&2
        exit 1
    fi
    # The dump asked for above is the profile's first part: what ran while counting was on.
    totals=$(grep -h '^totals:' "$out/$variant.$server.1" | awk '{print $2}')
    echo "$variant $totals" >>"$out/totals"
    echo "http-instructions: $variant $((totals / requests)) instructions a request" >&2
    server=
done

python3 - "$out/totals" "$requests" "$connections" <<'PY'
import sys

path, requests, connections = sys.argv[1], int(sys.argv[2]), sys.argv[3]
per = {}
for line in open(path):
    variant, total = line.split()
    per[variant] = int(total) / requests
print(f"\ninstructions per request in the service (callgrind), {requests} requests over "
      f"{connections} connections, 127.0.0.1")
for variant, count in per.items():
    print(f"{variant:20} {count:9.0f}")
pairs = [
    ("nodb-extension", "nodb"), ("nodb-layer", "nodb"), ("nodb-layer", "nodb-extension"),
    ("nodb-layer-outer", "nodb"), ("layer", "deadpool"), ("layer", "sqlx"),
    ("layer", "bb8-core-settings"), ("layer", "core-direct"), ("layer-eager", "deadpool"),
    ("core-direct", "bb8-core-manager"), ("bb8-core-manager", "bb8-core-settings"),
]
print()
for ours, base in pairs:
    if ours in per and base in per:
        print(f"{ours + ' / ' + base:36} {per[ours] / per[base]:5.2f}x  "
              f"({per[ours] - per[base]:+.0f} a request)")
PY
