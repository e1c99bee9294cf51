# Sourced by scripts/http-bench.sh and scripts/http-instructions.sh, from the repository's
# root: what both do before their runs and after them.
#
# http_setup PGPORT: makes a folder for the run's files ($out), installs a cleanup that stops
# the service under test ($server, if set) and removes the folder and the throwaway
# PostgreSQL on every way out, sets $url (POOL_TEST_DATABASE_URL, else a throwaway server
# from scripts/pg.sh on PGPORT) and builds the benchmark service ($bin).

http_cleanup() {
    if [ -n "${server:-}" ]; then
        kill "$server" 2>/dev/null || true
        # Under callgrind the service writes its last profile as it exits: let it, before
        # the folder goes.
        wait "$server" 2>/dev/null || true
    fi
    rm -rf "$out" || true
    if [ -z "${POOL_TEST_DATABASE_URL:-}" ]; then scripts/pg.sh destroy >/dev/null 2>&1 || true; fi
}

http_setup() {
    out=$(mktemp -d)
    server=
    # Before the database starts, so that every way out removes it.
    trap http_cleanup EXIT
    url=${POOL_TEST_DATABASE_URL:-}
    if [ -z "$url" ]; then
        export PGPORT=$1
        url=$(scripts/pg.sh start)
    fi
    cargo build -q --release -p pool-benches --example http_server
    bin=${CARGO_TARGET_DIR:-target}/release/examples/http_server
}
