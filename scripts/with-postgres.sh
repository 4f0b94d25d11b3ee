#!/usr/bin/env bash
# Run a command with a throwaway PostgreSQL cluster: the distribution's server (installed
# with apt-get when missing), a data directory in a temporary directory, a free port on
# 127.0.0.1, trust authentication for the `fanout` superuser. The command sees the server as
# FANOUT_TEST_POSTGRES_URL (the store's conformance suite and the CLI's PostgreSQL test
# create their own databases on it). The cluster is stopped and removed when the command
# ends, however it ends.
#
# A test that must stop and restart a server (a store outage) gets one of its own, so the
# shared one stays up for the others: FANOUT_TEST_POSTGRES_CLUSTER names a helper,
# `$FANOUT_TEST_POSTGRES_CLUSTER start NAME PORT` (made on first use) and
# `$FANOUT_TEST_POSTGRES_CLUSTER stop NAME`; it is stopped and removed with the rest.
#
#   scripts/with-postgres.sh cargo test -p fanout-core --test integration store::
#   scripts/with-postgres.sh --install     # only make sure the server's binaries are there
set -euo pipefail

if [ "$#" -eq 0 ]; then
    echo "usage: $0 COMMAND [ARGS...] | --install" >&2
    exit 2
fi

bin_dir() {
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

BIN="$(bin_dir)"
if [ -z "$BIN" ] || [ ! -x "$BIN/initdb" ]; then
    echo "== installing PostgreSQL from the distribution's packages" >&2
    if [ "$(id -u)" -ne 0 ]; then
        echo "PostgreSQL is not installed and we are not root: install the postgresql package" >&2
        exit 1
    fi
    # The package would create and start a cluster of its own; we only want the binaries.
    if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
        mkdir -p /etc/postgresql-common
        echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends postgresql >&2 \
        || { apt-get update >&2 && apt-get install -y --no-install-recommends postgresql >&2; }
    BIN="$(bin_dir)"
fi
if [ "$1" = "--install" ]; then
    echo "PostgreSQL binaries: $BIN" >&2
    exit 0
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/fanout-pg.XXXXXX")"
PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"

# initdb and the server refuse to run as root: run them as an unprivileged user.
if [ "$(id -u)" -eq 0 ]; then
    RUN_AS="nobody"
    chown "$RUN_AS" "$WORK"
    as_server() { runuser -u "$RUN_AS" -- "$@"; }
else
    as_server() { "$@"; }
fi

# Best effort, and never the script's status: a private cluster a test left stopped makes
# `pg_ctl stop` fail, which under `set -e` used to end the script with 1 after every test
# had passed.
stop() {
    for data in "$WORK"/data "$WORK"/clusters/*; do
        if [ -f "$data/PG_VERSION" ]; then
            as_server "$BIN/pg_ctl" -D "$data" -m immediate stop >/dev/null 2>&1 || true
        fi
    done
    rm -rf "$WORK" || true
}
trap stop EXIT

as_server "$BIN/initdb" -D "$WORK/data" -U fanout --auth=trust --no-sync -E UTF8 --locale=C \
    >"$WORK/initdb.log" 2>&1 || { cat "$WORK/initdb.log" >&2; exit 1; }
# fsync off: the cluster is thrown away; the tests check what we send, not the disk.
as_server "$BIN/pg_ctl" -D "$WORK/data" -l "$WORK/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $PORT -c unix_socket_directories=$WORK -c fsync=off -c max_connections=300" \
    start >/dev/null || { cat "$WORK/server.log" >&2; exit 1; }

# Private clusters for tests that stop their server: made, started and stopped by name.
mkdir -p "$WORK/clusters"
[ "$(id -u)" -eq 0 ] && chown "$RUN_AS" "$WORK/clusters"
cat >"$WORK/cluster" <<CLUSTER
#!/usr/bin/env bash
set -euo pipefail
run() { if [ "\$(id -u)" -eq 0 ]; then runuser -u nobody -- "\$@"; else "\$@"; fi; }
data="$WORK/clusters/\$2"
case "\$1" in
    start)
        if [ ! -f "\$data/PG_VERSION" ]; then
            run "$BIN/initdb" -D "\$data" -U fanout --auth=trust --no-sync -E UTF8 --locale=C \
                >"\$data.initdb.log" 2>&1 || { cat "\$data.initdb.log" >&2; exit 1; }
        fi
        run "$BIN/pg_ctl" -D "\$data" -l "\$data.log" -w -t 60 \
            -o "-c listen_addresses=127.0.0.1 -p \$3 -c unix_socket_directories=$WORK -c fsync=off" \
            start >/dev/null || { cat "\$data.log" >&2; exit 1; }
        ;;
    stop) run "$BIN/pg_ctl" -D "\$data" -m fast -w stop >/dev/null ;;
    *) echo "usage: cluster start NAME PORT | stop NAME" >&2; exit 2 ;;
esac
CLUSTER
chmod +x "$WORK/cluster"
export FANOUT_TEST_POSTGRES_CLUSTER="$WORK/cluster"

export FANOUT_TEST_POSTGRES_URL="postgres://fanout@127.0.0.1:$PORT/postgres"
echo "== $("$BIN/postgres" --version) on 127.0.0.1:$PORT (FANOUT_TEST_POSTGRES_URL)" >&2
set +e
"$@"
status=$?
set -e
exit "$status"
