#!/usr/bin/env bash
# Regenerates .sqlx/, the offline query data sqlx's checked macros
# (`sqlx::query!` in crates/verimail-infra/src/store/) build from, against a
# fresh database migrated from migrations/. With --check, fails when the
# committed .sqlx/ differs from what the schema and the statements give now
# (the equivalent of `cargo sqlx prepare --check`, without installing
# sqlx-cli). Run it after changing a statement or a migration.
#
#   scripts/sqlx-prepare.sh           # rewrite .sqlx/
#   scripts/sqlx-prepare.sh --check   # CI: is .sqlx/ current?
#
# Needs cargo, psql and Postgres on 127.0.0.1:5432 (SQLX_PREPARE_PG_URL).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

CHECK=false
case "${1:-}" in
  --check) CHECK=true ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

PG_URL=${SQLX_PREPARE_PG_URL:-postgres://postgres@127.0.0.1:5432}
DB="verimail_sqlx_$(date +%Y%m%d%H%M%S)_$$"
OUT=$(mktemp -d "${TMPDIR:-/tmp}/verimail-sqlx.XXXXXX")
cleanup() {
  psql -q "${PG_URL%/}/postgres" -c "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1 || true
  rm -rf "$OUT"
}
trap cleanup EXIT

psql -q "${PG_URL%/}/postgres" -c "CREATE DATABASE $DB" >/dev/null
# The schema only (the macros describe statements, they do not read
# `_sqlx_migrations`): each migration in one transaction, as sqlx applies it.
for migration in migrations/*.sql; do
  psql -q -v ON_ERROR_STOP=1 --single-transaction "${PG_URL%/}/$DB" -f "$migration" >/dev/null
done

# Every checked statement lives in verimail-infra; touching it makes cargo
# expand its macros again, live, writing one file per statement into $OUT.
touch crates/verimail-infra/src/lib.rs
DATABASE_URL="${PG_URL%/}/$DB" SQLX_OFFLINE=false SQLX_OFFLINE_DIR="$OUT" \
  cargo check -q -p verimail-infra
# Leave the crate to be rebuilt from the offline data next time.
touch crates/verimail-infra/src/lib.rs

count=$(find "$OUT" -name 'query-*.json' | wc -l)
if [ "$count" -eq 0 ]; then
  echo "FATAL: no query data was written (is every checked statement in verimail-infra?)" >&2
  exit 1
fi
if $CHECK; then
  if ! diff -r -q "$OUT" .sqlx >/dev/null 2>&1; then
    diff -r "$OUT" .sqlx >&2 || true
    echo "FATAL: .sqlx/ is stale; run scripts/sqlx-prepare.sh and commit it" >&2
    exit 1
  fi
  echo ".sqlx/ is current ($count statements)"
else
  rm -rf .sqlx
  mkdir -p .sqlx
  cp "$OUT"/query-*.json .sqlx/
  echo "wrote $count statements to .sqlx/"
fi
