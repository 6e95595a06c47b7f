# Sourced by scripts/test: starts a throwaway PostgreSQL cluster in a temporary directory on a
# free loopback port, exports RALLY_TEST_POSTGRES_URL, and stops and deletes it on exit.
# Works as root (the cluster runs as user `postgres`) and as an ordinary user.

find_postgres_bin() {
    if [ -n "${RALLY_POSTGRES_BIN:-}" ]; then echo "$RALLY_POSTGRES_BIN"; return; fi
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [ -n "$dir" ]; then echo "$dir"; return; fi
    if command -v pg_config >/dev/null 2>&1; then pg_config --bindir; return; fi
    return 1
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start_postgres() {
    local bin
    if ! bin=$(find_postgres_bin) || [ ! -x "$bin/initdb" ]; then
        echo "scripts/test: PostgreSQL server binaries not found (install postgresql-15, or set RALLY_POSTGRES_BIN or RALLY_TEST_POSTGRES_URL)" >&2
        return 1
    fi
    PG_DIR=$(mktemp -d /tmp/rally-pg.XXXXXX)
    PG_PORT=$(free_port)
    local as_owner=()
    if [ "$(id -u)" = 0 ]; then
        chown postgres: "$PG_DIR"
        as_owner=(runuser -u postgres --)
    fi
    PG_AS_OWNER=("${as_owner[@]}")
    PG_BIN=$bin
    trap stop_postgres EXIT
    "${as_owner[@]}" "$bin/initdb" -D "$PG_DIR/data" -U postgres -A trust --no-sync -E UTF8 >"$PG_DIR/initdb.log" 2>&1 \
        || { cat "$PG_DIR/initdb.log" >&2; return 1; }
    # fsync off: a test cluster is thrown away, and durability costs minutes of test time.
    "${as_owner[@]}" "$bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 start \
        -o "-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c max_connections=500" >/dev/null \
        || { cat "$PG_DIR/server.log" >&2; return 1; }
    export RALLY_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
    echo "scripts/test: PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$PG_PORT ($PG_DIR)" >&2
}

stop_postgres() {
    if [ -n "${PG_DIR:-}" ] && [ -d "$PG_DIR/data" ]; then
        "${PG_AS_OWNER[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m immediate stop >/dev/null 2>&1 || true
        rm -rf "$PG_DIR"
    fi
}
