#!/usr/bin/env bash
# Idempotent set-up for Serval on a Debian machine. Source it (". scripts/setup.sh") to get
# DATABASE_URL and REDIS_URL exported; run it directly to just prepare the machine.
#
# - Installs PostgreSQL and Redis with apt-get when they are missing; starts them when
#   they are not running; reuses them when they are.
# - Redis must persist every acknowledged write (AOF, appendfsync always). When the Redis
#   on 6379 does not, a project-owned Redis is started on $SERVAL_REDIS_PORT (6390) with its
#   data in .serval/redis.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA="$ROOT/.serval"
mkdir -p "$DATA"
SERVAL_REDIS_PORT="${SERVAL_REDIS_PORT:-6390}"

log() { printf 'setup: %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root for: $*"; return 1; fi
}

apt_install() {
  log "installing $* with apt-get"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if ! command -v cargo >/dev/null 2>&1; then
  [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null 2>&1 || { log "cargo is required (https://rustup.rs)"; exit 1; }
command -v gcc >/dev/null 2>&1 || apt_install build-essential

# --- PostgreSQL -------------------------------------------------------------------------
if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! command -v psql >/dev/null 2>&1; then
  apt_install postgresql postgresql-client
fi
pg_up() { pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; }
if ! pg_up; then
  for v in $(ls /etc/postgresql 2>/dev/null); do
    log "starting PostgreSQL $v"
    as_root pg_ctlcluster --skip-systemctl-redirect "$v" main start 2>/dev/null || \
      as_root pg_ctlcluster "$v" main start || true
  done
  for _ in $(seq 1 30); do pg_up && break; sleep 1; done
  pg_up || { log "PostgreSQL did not start"; exit 1; }
fi
# Fresh Debian clusters use password auth on TCP: give the postgres role a known password
# (a no-op where trust auth is configured).
if ! PGPASSWORD=postgres psql -h 127.0.0.1 -U postgres -d postgres -Atqc 'select 1' >/dev/null 2>&1; then
  log "setting a password for the postgres role"
  as_root runuser -u postgres -- psql -qc "ALTER USER postgres PASSWORD 'postgres'" >/dev/null
fi
export PGPASSWORD=postgres
export DATABASE_URL="${DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/serval}"

# --- Redis (durable) ----------------------------------------------------------------------
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
  apt_install redis-server redis-tools
fi
durable() {
  local port=$1
  [ "$(redis-cli -p "$port" config get appendonly 2>/dev/null | sed -n 2p)" = "yes" ] &&
  [ "$(redis-cli -p "$port" config get appendfsync 2>/dev/null | sed -n 2p)" = "always" ]
}
if [ -z "${REDIS_URL:-}" ]; then
  if redis-cli -p 6379 ping >/dev/null 2>&1 && durable 6379; then
    export REDIS_URL="redis://127.0.0.1:6379"
  else
    if ! redis-cli -p "$SERVAL_REDIS_PORT" ping >/dev/null 2>&1; then
      mkdir -p "$DATA/redis"
      log "starting project Redis on $SERVAL_REDIS_PORT (AOF, appendfsync always; data in .serval/redis)"
      redis-server --port "$SERVAL_REDIS_PORT" --bind 127.0.0.1 --dir "$DATA/redis" \
        --appendonly yes --appendfsync always --save "" --maxmemory-policy noeviction \
        --daemonize yes --pidfile "$DATA/redis/redis.pid" --logfile "$DATA/redis/redis.log"
      for _ in $(seq 1 50); do redis-cli -p "$SERVAL_REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
    fi
    durable "$SERVAL_REDIS_PORT" || { log "Redis on $SERVAL_REDIS_PORT is not durable"; exit 1; }
    export REDIS_URL="redis://127.0.0.1:$SERVAL_REDIS_PORT"
  fi
fi
log "DATABASE_URL=$DATABASE_URL REDIS_URL=$REDIS_URL"
