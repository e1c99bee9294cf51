#!/usr/bin/env bash
# Everything CI checks, in one command: formatting, lints, docs, the dependency rule, and every
# test against a throwaway PostgreSQL server that this script installs (if needed), starts and
# always stops. Every step runs; the summary names each failure and the exit code is non-zero
# if any step failed.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

export PGPORT=${POOL_TEST_PGPORT:-55432}
export PG_ROOT=${POOL_TEST_PG_ROOT:-/tmp/pool-pg-$PGPORT}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

failed=()
passed=()
step() {
  local name=$1; shift
  echo
  echo "==> $name"
  local start=$SECONDS
  if "$@"; then
    passed+=("$name ($((SECONDS - start))s)")
  else
    echo "!!! step failed: $name"
    failed+=("$name")
  fi
}

cleanup() { "$ROOT/scripts/pg.sh" destroy >/dev/null 2>&1 || true; }
trap cleanup EXIT

# --- toolchain components -------------------------------------------------------------------
have_fmt=1; have_clippy=1
cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt >/dev/null 2>&1 || have_fmt=0
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy >/dev/null 2>&1 || have_clippy=0

# --- PostgreSQL -------------------------------------------------------------------------------
start_pg() {
  "$ROOT/scripts/pg.sh" install || return 1
  "$ROOT/scripts/pg.sh" destroy >/dev/null 2>&1 || true
  local url
  url=$("$ROOT/scripts/pg.sh" start) || { cat "$PG_ROOT/server.log" 2>/dev/null; return 1; }
  export POOL_TEST_DATABASE_URL=$url
  echo "PostgreSQL is up on 127.0.0.1:$PGPORT"
}
step "start PostgreSQL" start_pg

# --- Prometheus's tools and the OpenTelemetry Collector (for the end-to-end test) -----------
install_prometheus() {
  command -v promtool >/dev/null && command -v prometheus >/dev/null && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "Prometheus is not installed and this is not root: sudo apt-get install -y prometheus"
    return 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq prometheus >/dev/null
}
step "install Prometheus (promtool)" install_prometheus

# nftables and iproute2 for the fault suite's packet-loss scenario (a private network
# namespace with a DROP rule on the server's port); procps (pgrep) for `pg.sh kill9`.
install_fault_tools() {
  command -v nft >/dev/null && command -v ip >/dev/null && command -v pgrep >/dev/null && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "nftables/iproute2/procps are not installed and this is not root: sudo apt-get install -y nftables iproute2 procps"
    return 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq nftables iproute2 procps >/dev/null 2>&1 ||
    { apt-get update -qq && apt-get install -y -qq nftables iproute2 procps >/dev/null; }
}
step "install nftables, iproute2 and procps (fault suite)" install_fault_tools

check_prometheus_files() {
  promtool check config deploy/prometheus/prometheus.yml &&
    promtool check rules deploy/prometheus/rules/*.yml &&
    promtool test rules deploy/prometheus/tests/*.test.yml
}
step "promtool check config, check rules, test rules" check_prometheus_files

build_collector() {
  command -v go >/dev/null || { echo "Go is not installed"; return 1; }
  local out="${CARGO_TARGET_DIR:-$ROOT/target}/otelcol/otelcol-pool"
  (cd collector && go build -o "$out" .) || return 1
  export POOL_E2E_OTELCOL=$out
  "$out" --version
}
step "build the OpenTelemetry Collector from its Go modules" build_collector

# --- checks -----------------------------------------------------------------------------------
if [ $have_fmt = 1 ]; then
  step "cargo fmt --check" cargo fmt --all -- --check
else
  echo "!!! rustfmt is not installed and could not be added: formatting NOT checked"
  failed+=("rustfmt unavailable")
fi
if [ $have_clippy = 1 ]; then
  step "cargo clippy" cargo clippy --workspace --all-targets --all-features -- -D warnings
  # The libraries as applications build them: without the test-only `test-util` feature (which
  # the line above and the tests turn on), so the production clock is linted too.
  step "cargo clippy (libraries, default features)" \
    cargo clippy -p pool-core -p pool-tower --lib -- -D warnings
else
  echo "!!! clippy is not installed and could not be added: lints NOT checked"
  failed+=("clippy unavailable")
fi
step "cargo doc (warnings denied)" env RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --all-features

no_sdk_in_libraries() {
  local ok=0 crate
  for crate in pool-core pool-tower; do
    if cargo tree -e normal -p "$crate" --all-features --prefix none | grep -E '^(opentelemetry_sdk|opentelemetry-otlp) '; then
      echo "$crate depends on the OpenTelemetry SDK or exporter in normal dependencies"
      ok=1
    fi
    # Test-only crates stay out of what users build.
    if cargo tree -e normal -p "$crate" --all-features --prefix none | grep -E '^(proptest|tracing-subscriber|tower-test|criterion) '; then
      echo "$crate has a test-only crate among its normal dependencies"
      ok=1
    fi
  done
  return $ok
}
step "libraries depend on the OpenTelemetry API only (and on no test-only crate)" no_sdk_in_libraries

step "cargo test" cargo test --workspace --all-features
# Every benchmark once, as a test, against the libraries as applications build them (the
# production clock; `-p pool-benches` keeps the other members' test-only features out).
step "benchmarks run once (smoke)" cargo test -p pool-benches --benches

# --- summary ----------------------------------------------------------------------------------
echo
echo "==> summary"
for p in "${passed[@]}"; do echo "ok      $p"; done
for f in "${failed[@]}"; do echo "FAILED  $f"; done
[ ${#failed[@]} -eq 0 ]
