#!/usr/bin/env bash
# Instructions per HTTP request, counted by callgrind in the service of
# benches/examples/http_server.rs (the variants scripts/http-bench.sh runs) over real HTTP on
# 127.0.0.1 and, for the database routes, real PostgreSQL.
#
# usage: scripts/http-instructions.sh [REQUESTS [CONNECTIONS]]   (default 20000 64; needs valgrind)
# env: HTTP_BENCH_VARIANTS (see below), POOL_SIZE (10), HTTP_BENCH_QUERY=typed and
#      NO_TELEMETRY=1 (as for the server), POOL_TEST_DATABASE_URL (else a throwaway server
#      from scripts/pg.sh on port 55498, removed afterwards)
#
# Each variant runs under callgrind with its counting off. A bounded client (below) sends a
# quarter of REQUESTS to warm the service up; then, on CONNECTIONS keep-alive connections
# already open, it switches counting on, sends exactly REQUESTS, and switches counting off
# once every answer is in, before any connection closes. No request is dropped mid-query
# (which would make the layer close and reopen a connection inside the count). What the
# service's background tasks run meanwhile (the pool's monitor and health checks, where it
# has a pool) is counted too: a few thousand instructions a second, against about 10^9 in
# a run. HTTP_INSTRUCTIONS_KEEP=DIR keeps each variant's profile there (DIR/VARIANT.out),
# for callgrind_annotate.
# Counts are of the service's own code and libraries in user space: not the kernel, not
# PostgreSQL. They barely move between runs, unlike requests/s on a shared machine; but
# valgrind runs one thread at a time, so they show no contention between the workers, and
# they count instructions, not time (a system call is one instruction here, a context
# switch none). Read them beside scripts/http-bench.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${1:-20000}
connections=${2:-64}
size=${POOL_SIZE:-10}
variants=${HTTP_BENCH_VARIANTS:-"nodb nodb-identity nodb-extension nodb-layer nodb-layer-outer layer layer-eager core-direct bb8-core-manager bb8-core-settings bb8-defaults deadpool sqlx"}
keep=${HTTP_INSTRUCTIONS_KEEP:-}
for tool in valgrind callgrind_control curl python3; do
    if ! command -v "$tool" >/dev/null; then
        echo "http-instructions: $tool is not installed (apt-get install valgrind curl python3)" >&2
        exit 1
    fi
done
for input in "REQUESTS=$requests" "CONNECTIONS=$connections" "POOL_SIZE=$size"; do
    case ${input#*=} in
        '' | *[!0-9]* | 0*) echo "http-instructions: $input is not a positive number" >&2; exit 1 ;;
    esac
done

. scripts/http-common.sh
# The throwaway database's port is not http-bench.sh's: the two may run at once.
http_setup 55498
port=18481

# The client: N requests of `GET /` shared by C connections, each sending its next request
# when the last answer is in. With a PID it switches callgrind's counting in that process
# on once every connection is open and off once every answer is in, before any connection
# closes, so that the count holds the requests and nothing around them. Prints the count of
# each status.
cat >"$out/load.py" <<'PY'
import asyncio
import subprocess
import sys


# Seconds any one connect or answer may take (under valgrind, first answers are slow).
DEADLINE = 60


class Failed(Exception):
    pass


def callgrind(pid, switch):
    """callgrind_control exits 0 even when it finds no such process: read what it says."""
    said = subprocess.run(["callgrind_control", "-i", switch, pid],
                          capture_output=True, text=True)
    text = said.stdout + said.stderr
    if said.returncode != 0 or "OK." not in said.stdout or "error" in text.lower():
        raise Failed(f"callgrind_control -i {switch} {pid}: {text.strip()}")


async def requests(reader, writer, host, port, left, statuses):
    request = f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    while left[0] > 0:
        left[0] -= 1
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE)
        status = int(head.split(b" ", 2)[1])
        length = None
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length is None:
            raise Failed(f"an answer without Content-Length: {head!r}")
        await asyncio.wait_for(reader.readexactly(length), DEADLINE)
        statuses[status] = statuses.get(status, 0) + 1


async def main():
    host, port, n, c = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    pid = sys.argv[5] if len(sys.argv) > 5 else None
    streams = [await asyncio.wait_for(asyncio.open_connection(host, port), DEADLINE)
               for _ in range(c)]
    left, statuses = [n], {}
    if pid:
        callgrind(pid, "on")
    await asyncio.gather(*(requests(r, w, host, port, left, statuses) for r, w in streams))
    if pid:
        callgrind(pid, "off")
    for _, writer in streams:
        writer.close()
        await writer.wait_closed()
    print(" ".join(f"{status}:{count}" for status, count in sorted(statuses.items())))


try:
    asyncio.run(main())
except (Failed, OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as error:
    sys.exit(f"load: {type(error).__name__}: {error}")
PY

for variant in $variants; do
    if curl -fsS "http://127.0.0.1:$port/" >/dev/null 2>&1; then
        echo "http-instructions: something already answers on 127.0.0.1:$port" >&2
        exit 1
    fi
    # The URL (with its password) goes through the environment, not the command line.
    HTTP_BENCH_DATABASE_URL=$url valgrind -q --tool=callgrind --instr-atstart=no \
        --callgrind-out-file="$out/$variant.%p" "$bin" "$variant" "$port" "$size" \
        >"$out/server.log" 2>&1 &
    server=$!
    pid=$server
    ready=
    # Under valgrind the service takes seconds to start: up to 60.
    for _ in $(seq 600); do
        if ! kill -0 "$server" 2>/dev/null; then break; fi
        if curl -fsS "http://127.0.0.1:$port/" >/dev/null 2>&1; then ready=1; break; fi
        sleep 0.1
    done
    if [ -z "$ready" ]; then
        echo "http-instructions: $variant did not come up:" >&2
        cat "$out/server.log" >&2
        exit 1
    fi
    if ! python3 "$out/load.py" 127.0.0.1 "$port" $((requests / 4 + 1)) "$connections" >/dev/null ||
        ! statuses=$(python3 "$out/load.py" 127.0.0.1 "$port" "$requests" "$connections" "$server"); then
        echo "http-instructions: $variant: the client failed (above); the service said:" >&2
        cat "$out/server.log" >&2
        exit 1
    fi
    callgrind_control -d "$server" >/dev/null 2>&1
    kill "$server"
    wait "$server" 2>/dev/null || true
    server=
    if [ "$statuses" != "200:$requests" ]; then
        echo "http-instructions: $variant answered $statuses, not 200:$requests" >&2
        cat "$out/server.log" >&2
        exit 1
    fi
    # The dump asked for above is the profile's first part: what ran while counting was on.
    dump=$out/$variant.$pid.1
    totals=$(grep -hs '^totals:' "$dump" | awk '{print $2}' || true)
    if [ -z "$totals" ] || [ "$totals" = 0 ]; then
        echo "http-instructions: $variant: no instructions counted in callgrind's dump $dump" >&2
        exit 1
    fi
    if [ -n "$keep" ]; then
        mkdir -p "$keep"
        cp "$dump" "$keep/$variant.out"
    fi
    echo "$variant $totals" >>"$out/totals"
    echo "http-instructions: $variant $((totals / requests)) instructions a request" >&2
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
    ("nodb-identity", "nodb"), ("nodb-extension", "nodb"), ("nodb-layer", "nodb"),
    ("nodb-layer", "nodb-extension"), ("nodb-layer-outer", "nodb"), ("layer", "deadpool"),
    ("layer", "sqlx"), ("layer", "bb8-core-settings"), ("layer", "core-direct"),
    ("layer-eager", "deadpool"), ("sqlx", "deadpool"), ("bb8-core-settings", "deadpool"),
    ("bb8-defaults", "deadpool"), ("core-direct", "bb8-core-manager"),
    ("bb8-core-manager", "bb8-core-settings"),
]
print()
for ours, base in pairs:
    if ours in per and base in per:
        print(f"{ours + ' / ' + base:36} {per[ours] / per[base]:5.2f}x  "
              f"({per[ours] - per[base]:+.0f} a request)")
PY
