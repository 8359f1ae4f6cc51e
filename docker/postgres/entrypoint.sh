#!/usr/bin/env bash
# First start: make the cluster with POSTGRES_USER as its superuser and POSTGRES_DB, password
# authentication for every network client (as the official image does), then run the server.
set -euo pipefail
: "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
USER_NAME=${POSTGRES_USER:-postgres}
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    # UTF8 as in the official image: a bare container has no locale, initdb would pick
    # SQL_ASCII, and psycopg then returns text as bytes (SQLAlchemy fails on the version string).
    initdb --username="$USER_NAME" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
        --encoding=UTF8 --locale=C.UTF-8 --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    pg_ctl -w -o "-c listen_addresses=''" start >/dev/null
    if [ -n "${POSTGRES_DB:-}" ] && [ "$POSTGRES_DB" != postgres ]; then
        createdb --username="$USER_NAME" "$POSTGRES_DB"
    fi
    pg_ctl -w stop >/dev/null
fi
exec "$@"
