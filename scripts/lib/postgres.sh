# Throwaway PostgreSQL for the test suite: a fresh cluster in a temp dir on a free loopback port.
# Source this file, then call `pg_start`; it exports SWITCHBOARD_TEST_POSTGRES_URL and registers
# `pg_stop` to run on exit. Installs Debian's `postgresql` package if no server is present.

pg_bin_dir() {
  local dir
  for dir in /usr/lib/postgresql/*/bin; do
    [ -x "$dir/initdb" ] && { echo "$dir"; return 0; }
  done
  return 1
}

pg_start() {
  local bin
  if ! bin=$(pg_bin_dir); then
    echo "==> installing PostgreSQL (Debian package postgresql)"
    apt_install postgresql
    bin=$(pg_bin_dir) || { echo "PostgreSQL server binaries not found after install" >&2; return 1; }
  fi
  PG_DIR=$(mktemp -d /tmp/switchboard-pg.XXXXXX)
  local port
  port=$(free_port)
  # initdb and postgres refuse to run as root: run them as the `postgres` system user.
  local as=()
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
    chown postgres "$PG_DIR"
    as=(runuser -u postgres --)
  fi
  "${as[@]}" "$bin/initdb" -D "$PG_DIR/data" -U postgres --auth=trust --no-sync -E UTF8 >"$PG_DIR/initdb.log" 2>&1 \
    || { cat "$PG_DIR/initdb.log" >&2; return 1; }
  "${as[@]}" "$bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $PG_DIR -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
    start >/dev/null || { cat "$PG_DIR/server.log" >&2; return 1; }
  PG_CTL=("${as[@]}" "$bin/pg_ctl" -D "$PG_DIR/data")
  export SWITCHBOARD_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$port/postgres"
  export SWITCHBOARD_TEST_REQUIRE_POSTGRES=1
  trap pg_stop EXIT
  echo "==> PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port (data in $PG_DIR)"
}

pg_stop() {
  [ -n "${PG_DIR:-}" ] || return 0
  "${PG_CTL[@]}" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$PG_DIR"
  PG_DIR=
}
