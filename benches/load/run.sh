#!/usr/bin/env bash
# Load test: GET /health/live vs authenticated GET /api/v1/auth/me with wrk (64 connections),
# then POST /api/v1/auth/login for one user (logins/s, bounded by argon2id).
# Usage: bash benches/load/run.sh
# Needs: psql + a PostgreSQL server at $TEST_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres),
#        wrk, curl, python3. The release server is built by the script.
# Env: DURATION (default 15s), CONNECTIONS (64), THREADS (2), PORT (18080),
#      LOGIN_CONNECTIONS (8), SKIP_BUILD=1 to reuse target/release/gathering-server.
# Everything it creates (database, data dir, server process) is removed on exit, also on failure/^C.
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-15s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
PORT=${PORT:-18080}
LOGIN_CONNECTIONS=${LOGIN_CONNECTIONS:-8}
ADMIN_URL=${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
DB="gathering_load_$(date +%s)_$$"
BASE="http://127.0.0.1:$PORT"

die() { echo "run.sh: $*" >&2; exit 1; }
for tool in wrk psql curl python3 cargo; do
  command -v "$tool" >/dev/null || die "$tool is not installed (wrk: apt-get install wrk; psql: apt-get install postgresql-client)"
done
psql "$ADMIN_URL" -qAtc "SELECT 1" >/dev/null 2>&1 \
  || die "cannot reach PostgreSQL at $ADMIN_URL (start it or set TEST_DATABASE_URL)"
if curl -s -o /dev/null "$BASE/health/live"; then
  die "port $PORT is already in use (set PORT)"
fi

PID=""
DATA=""
DB_CREATED=""
cleanup() {
  local rc=$?
  if [ -n "$PID" ]; then kill -TERM "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
  if [ -n "$DB_CREATED" ]; then
    psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 \
      || echo "run.sh: could not drop database $DB" >&2
  fi
  if [ -n "$DATA" ]; then
    if [ "$rc" -ne 0 ] && [ -f "$DATA/server.log" ]; then
      echo "run.sh: failed (exit $rc); last server log lines:" >&2; tail -n 20 "$DATA/server.log" >&2
    fi
    rm -rf "$DATA"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ "${SKIP_BUILD:-}" != 1 ]; then
  cargo build --release -p gathering-server >/dev/null || die "release build failed"
fi
[ -x ./target/release/gathering-server ] || die "target/release/gathering-server is missing"

psql "$ADMIN_URL" -qc "CREATE DATABASE $DB" >/dev/null || die "cannot create database $DB"
DB_CREATED=1
DB_URL="${ADMIN_URL%/*}/$DB"
DATA=$(mktemp -d)

DATABASE_URL="$DB_URL" GATHERING__SERVER__PORT=$PORT GATHERING__DATA_DIR="$DATA" \
  GATHERING__RATE_LIMIT__READ_PER_MINUTE=100000000 \
  GATHERING__RATE_LIMIT__AUTH_PER_MINUTE=100000000 RUST_LOG=warn \
  ./target/release/gathering-server > "$DATA/server.log" 2>&1 &
PID=$!

for _ in $(seq 1 150); do
  curl -sf "$BASE/health/live" >/dev/null && break
  kill -0 "$PID" 2>/dev/null || die "server exited during startup"
  sleep 0.2
done
curl -sf "$BASE/health/live" >/dev/null || die "server did not become live within 30 s"

curl -sf "$BASE/api/v1/auth/register" -H 'content-type: application/json' \
  -d '{"email":"load@example.com","password":"load-test-password","name":"Load"}' >/dev/null \
  || die "register failed"
TOKEN=$(curl -sf "$BASE/api/v1/auth/login" -H 'content-type: application/json' \
  -d '{"email":"load@example.com","password":"load-test-password"}' \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])') || die "login failed"
curl -sf "$BASE/api/v1/auth/me" -H "Authorization: Bearer $TOKEN" >/dev/null || die "GET /auth/me failed"

echo "### machine: $(nproc) cores, shared by wrk, server and PostgreSQL"
echo "### GET /health/live ($CONNECTIONS connections, $THREADS threads, $DURATION)"
wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$BASE/health/live"
echo
echo "### GET /api/v1/auth/me, authenticated ($CONNECTIONS connections, $THREADS threads, $DURATION)"
wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -H "Authorization: Bearer $TOKEN" "$BASE/api/v1/auth/me"
echo
echo "### POST /api/v1/auth/login, one user ($LOGIN_CONNECTIONS connections, $DURATION)"
wrk -t"$THREADS" -c"$LOGIN_CONNECTIONS" -d"$DURATION" --latency -s benches/load/login.lua "$BASE/api/v1/auth/login"
