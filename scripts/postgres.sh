#!/usr/bin/env bash
# Start a throwaway PostgreSQL on 127.0.0.1 and print the DAGSTER_PG_* exports for it:
#   eval "$(bash scripts/postgres.sh)"
# Installs Debian's postgresql when its tools are missing. Runs the server as `postgres` when root.
set -euo pipefail
if ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi
# Debian's own folder first: it holds every tool (initdb, pg_ctl, createdb) of one version.
bindir=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -1 || true)")
[ -x "$bindir/createdb" ] || bindir=$(dirname "$(command -v initdb)")
pgdata=$(mktemp -d /tmp/isles-pg.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
password=$(python3 -c 'import secrets; print(secrets.token_hex(12))')
as_owner=()
if [ "$(id -u)" = 0 ]; then
    chown postgres "$pgdata"
    as_owner=(runuser -u postgres --)
fi
printf '%s\n' "$password" > "$pgdata.pw" && chmod 644 "$pgdata.pw"
"${as_owner[@]}" "$bindir/initdb" -D "$pgdata/data" -U dagster --pwfile="$pgdata.pw" -A scram-sha-256 >&2
rm -f "$pgdata.pw"
"${as_owner[@]}" "$bindir/pg_ctl" -D "$pgdata/data" -l "$pgdata/log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $pgdata" start >&2
PGPASSWORD=$password "$bindir/createdb" -h 127.0.0.1 -p "$port" -U dagster dagster >&2
echo "export DAGSTER_PG_HOST=127.0.0.1 DAGSTER_PG_PORT=$port DAGSTER_PG_USERNAME=dagster DAGSTER_PG_PASSWORD=$password DAGSTER_PG_DB=dagster"
echo "export ISLES_PG_STOP='${as_owner[*]} $bindir/pg_ctl -D $pgdata/data -m fast stop'"
