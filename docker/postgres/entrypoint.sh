#!/bin/sh
# First start: initdb (password auth over TCP, the superuser has no password and only the
# container's own socket), then one database per "name:user:password" of POSTGRES_DATABASES.
# Every start: serve on POSTGRES_HOST:PGPORT (127.0.0.1 by default: compose uses the host's network).
set -eu
if [ "$(id -u)" = 0 ]; then
    # the data folder is a bind mount of the stack's folder (made by root): hand it to postgres
    mkdir -p "$PGDATA" && chown postgres:postgres "$PGDATA" && chmod 700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups sh "$0" "$@"
fi
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    initdb --username=postgres --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 \
        --locale=C.UTF-8 -D "$PGDATA" >/dev/null
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    for spec in ${POSTGRES_DATABASES:-}; do
        name=${spec%%:*}; rest=${spec#*:}; user=${rest%%:*}; password=${rest#*:}
        psql -v ON_ERROR_STOP=1 -q -U postgres -d postgres \
            -v user="$user" -v password="$password" -v name="$name" <<'SQL'
CREATE ROLE :"user" LOGIN PASSWORD :'password';
CREATE DATABASE :"name" OWNER :"user";
SQL
        echo "[postgres] created database $name (owner $user)"
    done
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
fi
exec postgres -D "$PGDATA" -c listen_addresses="${POSTGRES_HOST:-127.0.0.1}" -c port="$PGPORT"
