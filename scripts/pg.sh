#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests, on 127.0.0.1, safe to run as root (the server
# itself runs as an unprivileged OS user, because postgres refuses uid 0).
#
# usage: scripts/pg.sh start|stop|crash|kill9|restart|status|destroy|install
#   start    initialise (first time) and start; prints the connection URL
#   stop     fast shutdown          crash    immediate shutdown (no checkpoint)
#   restart  start again after stop/crash    destroy  stop and delete everything
#   install  install Debian's postgresql package if no server binaries are present
# env: PGPORT (55432), PG_ROOT (/tmp/pool-pg-$PGPORT), PG_PASSWORD (pool-test-secret),
#      PG_OS_USER (postgres if it exists, else pool-pg)
set -euo pipefail

PGPORT=${PGPORT:-55432}
PG_ROOT=${PG_ROOT:-/tmp/pool-pg-$PGPORT}   # under /tmp so the unprivileged user can reach it
PG_PASSWORD=${PG_PASSWORD:-pool-test-secret}
DATA=$PG_ROOT/data
SOCK=$PG_ROOT/sock
LOG=$PG_ROOT/server.log

find_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }

install() {
  if [ -n "$(find_bin)" ] && [ -x "$(find_bin)/postgres" ]; then return 0; fi
  if [ "$(id -u)" != 0 ]; then
    echo "pg.sh: PostgreSQL is not installed and this is not root; run: sudo apt-get install -y postgresql" >&2
    return 1
  fi
  echo "pg.sh: installing PostgreSQL from Debian's packages" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq postgresql >&2
}

if [ "${1:-start}" = install ]; then install; exit; fi
PGBIN=${PGBIN:-$(find_bin)}
[ -x "${PGBIN:-/nonexistent}/postgres" ] || { echo "pg.sh: no PostgreSQL server binaries under /usr/lib/postgresql/*/bin (scripts/pg.sh install)" >&2; exit 1; }

if [ -z "${PG_OS_USER:-}" ]; then
  if id postgres >/dev/null 2>&1; then PG_OS_USER=postgres; else PG_OS_USER=pool-pg; fi
fi
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u "$PG_OS_USER" -- "$@"; else "$@"; fi; }

init() {
  if [ "$(id -u)" = 0 ] && ! id "$PG_OS_USER" >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin "$PG_OS_USER"
  fi
  mkdir -p "$SOCK"
  chmod 700 "$PG_ROOT"
  [ "$(id -u)" = 0 ] && chown -R "$PG_OS_USER:" "$PG_ROOT"
  local pwfile=$PG_ROOT/pwfile
  printf '%s\n' "$PG_PASSWORD" > "$pwfile"
  [ "$(id -u)" = 0 ] && chown "$PG_OS_USER:" "$pwfile"
  as_pg "$PGBIN/initdb" -D "$DATA" -U postgres -E UTF8 --locale=C.UTF-8 \
      --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 >"$PG_ROOT/initdb.log"
  rm -f "$pwfile"
  # fsync=off survives process crashes (stop -m immediate), which is all the tests do.
  # synchronous_commit stays on: with it off, commits acknowledged just before a crash vanish.
  as_pg tee -a "$DATA/postgresql.conf" >/dev/null <<CONF
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = '$SOCK'
max_connections = 300
fsync = off
full_page_writes = off
CONF
}

case "${1:-start}" in
  start)
    [ -f "$DATA/PG_VERSION" ] || init
    as_pg "$PGBIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 start >/dev/null
    echo "postgres://postgres:$PG_PASSWORD@127.0.0.1:$PGPORT/postgres" ;;
  restart) as_pg "$PGBIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 start >/dev/null ;;
  stop)    as_pg "$PGBIN/pg_ctl" -D "$DATA" -w -t 60 -m fast stop >/dev/null ;;
  crash)   as_pg "$PGBIN/pg_ctl" -D "$DATA" -w -t 60 -m immediate stop >/dev/null ;;
  # SIGKILL to the postmaster; its backends notice it is gone and exit. Waits (bounded) until
  # they have, so that `restart` finds the data directory free.
  kill9)
    pid=$(head -1 "$DATA/postmaster.pid")
    children=$(pgrep -P "$pid" | tr '\n' ' ')
    kill -9 "$pid"
    for _ in $(seq 100); do
      alive=0
      for child in $children; do kill -0 "$child" 2>/dev/null && alive=1; done
      [ "$alive" = 0 ] && break
      sleep 0.1
    done ;;
  status)  as_pg "$PGBIN/pg_ctl" -D "$DATA" status ;;
  destroy)
    if [ -f "$DATA/postmaster.pid" ]; then as_pg "$PGBIN/pg_ctl" -D "$DATA" -w -m immediate stop >/dev/null 2>&1 || true; fi
    rm -rf "$PG_ROOT" ;;
  *) echo "usage: $0 start|stop|crash|kill9|restart|status|destroy|install" >&2; exit 2 ;;
esac
