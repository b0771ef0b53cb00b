#!/bin/bash
# First start: initdb into $PGDATA, create $POSTGRES_USER (superuser, with
# $POSTGRES_PASSWORD) and $POSTGRES_DB, listening on the Unix socket only
# while doing so (so a TCP health check does not pass too early). Every
# start: run the server on all addresses.
set -euo pipefail
: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
# As the upstream image: POSTGRES_HOST_AUTH_METHOD=trust (the compose
# profile `services`, for development machines) needs no password.
: "${POSTGRES_HOST_AUTH_METHOD:=scram-sha-256}"
if [[ -z "${POSTGRES_PASSWORD:-}" && "$POSTGRES_HOST_AUTH_METHOD" != trust ]]; then
    echo "postgres-entrypoint: POSTGRES_PASSWORD must be set (or POSTGRES_HOST_AUTH_METHOD=trust)" >&2
    exit 1
fi
if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
    pwfile=$(mktemp)
    printf '%s\n' "${POSTGRES_PASSWORD:-}" >"$pwfile"
    pwopt=(--pwfile="$pwfile")
    [[ -n "${POSTGRES_PASSWORD:-}" ]] || pwopt=()
    initdb -D "$PGDATA" -U "$POSTGRES_USER" "${pwopt[@]}" -E UTF8 \
        --auth-local=trust --auth-host="$POSTGRES_HOST_AUTH_METHOD" >/dev/null
    rm -f "$pwfile"
    printf 'host all all all %s\n' "$POSTGRES_HOST_AUTH_METHOD" >>"$PGDATA/pg_hba.conf"
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    if [[ "$POSTGRES_DB" != postgres ]]; then
        createdb -U "$POSTGRES_USER" "$POSTGRES_DB"
    fi
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    echo "postgres-entrypoint: initialised $PGDATA (user $POSTGRES_USER, database $POSTGRES_DB)"
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
