#!/usr/bin/env bash
# Load test of the control plane: authenticated GET /api/v1/extensions (a page of 20) under
# wrk -t2 -c64 -d10s against a release build on loopback, SQLite (default) or PostgreSQL
# (--postgres, a throwaway server started here). Prints wrk's latency distribution and the
# server's CPU time. Stops by itself.
#
#   benches/load/http-extensions.sh [--postgres] [--duration 10s] [--connections 64]
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib/common.sh
source scripts/lib/postgres.sh

duration=10s connections=64 backend=sqlite
while [ $# -gt 0 ]; do
  case "$1" in
    --postgres) backend=postgres ;;
    --duration) duration=$2; shift ;;
    --connections) connections=$2; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

command -v wrk >/dev/null || { echo "==> installing wrk"; apt_install wrk; }
cargo build --release --locked --bin switchboard

work=$(mktemp -d /tmp/switchboard-bench.XXXXXX)
server_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$work"
  pg_stop
}
trap cleanup EXIT

env_db=()
if [ "$backend" = postgres ]; then
  pg_start
  trap cleanup EXIT
  psql "$SWITCHBOARD_TEST_POSTGRES_URL" -qc "CREATE DATABASE bench" >/dev/null
  env_db=(SWITCHBOARD_DATABASE__URL="${SWITCHBOARD_TEST_POSTGRES_URL%/*}/bench")
fi

port=$(free_port)
password=bench-admin-password
(cd "$work" && exec env "${env_db[@]}" SWITCHBOARD_HTTP__BIND=127.0.0.1:$port SWITCHBOARD_HTTP__TLS=false SWITCHBOARD_ADMIN_PASSWORD=$password \
  SWITCHBOARD_LOG__LEVEL=warn "$OLDPWD/target/release/switchboard" serve >"$work/out.log" 2>"$work/err.log") &
server_pid=$!
for _ in $(seq 100); do grep -q "HTTP listening" "$work/out.log" 2>/dev/null && break; sleep 0.1; done
grep -q "HTTP listening" "$work/out.log" || { cat "$work/err.log"; exit 1; }

api=http://127.0.0.1:$port/api/v1
token=$(curl -sf "$api/auth/login" -H 'content-type: application/json' \
  -d "{\"email\":\"admin@localhost\",\"password\":\"$password\"}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
for n in $(seq 1001 1020); do
  curl -sf "$api/extensions" -H "authorization: Bearer $token" -H 'content-type: application/json' \
    -d "{\"number\":\"$n\",\"display_name\":\"Ext $n\",\"password\":\"secret-$n\"}" >/dev/null
done

cpu_before=$(awk '{print $14+$15}' /proc/$server_pid/stat)
echo "==> wrk -t2 -c$connections -d$duration --latency GET /api/v1/extensions?limit=20 ($backend)"
wrk -t2 -c"$connections" -d"$duration" --latency -H "Authorization: Bearer $token" "$api/extensions?limit=20"
cpu_after=$(awk '{print $14+$15}' /proc/$server_pid/stat)
echo "==> server CPU: $(( (cpu_after - cpu_before) * 100 / $(getconf CLK_TCK) / ${duration%s} ))% of one core"
