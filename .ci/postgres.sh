#!/usr/bin/env bash
# Start a throw-away PostgreSQL on 127.0.0.1 (Debian's, installed when missing) and print the
# DAGSTER_PG_* exports that deploy/cluster/dagster.yaml reads:  eval "$(bash .ci/postgres.sh)"
# Stop it with: pg_ctl -D "$ISLES_PGDATA" stop
set -euo pipefail
initdb=$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$initdb" ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >&2
  initdb=$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)
fi
bin=$(dirname "$initdb")
data=$(mktemp -d /tmp/isles-pg.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
password=isles-ci-$RANDOM$RANDOM
as_owner=()
if [ "$(id -u)" = 0 ]; then  # initdb refuses root: run the server as Debian's postgres user
  chown postgres "$data"
  as_owner=(runuser -u postgres --)
fi
printf '%s\n' "$password" > "$data.pw" && chmod 644 "$data.pw"
"${as_owner[@]}" "$bin/initdb" -D "$data/db" -U dagster --pwfile="$data.pw" --auth=scram-sha-256 >&2
rm -f "$data.pw"
"${as_owner[@]}" "$bin/pg_ctl" -D "$data/db" -o "-h 127.0.0.1 -p $port -k $data" -l "$data/server.log" -w start >&2
cat <<EXPORTS
export DAGSTER_PG_HOST=127.0.0.1 DAGSTER_PG_PORT=$port DAGSTER_PG_USERNAME=dagster DAGSTER_PG_PASSWORD=$password DAGSTER_PG_DB=postgres
export ISLES_PGDATA=$data/db
EXPORTS
