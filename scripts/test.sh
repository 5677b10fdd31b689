#!/usr/bin/env bash
# Set up .venv with the test tools, run what a reviewer would check (ruff lint and format,
# mypy, the import contracts), then the whole test suite. Arguments go to pytest.
# PostgreSQL: the store tests also run against a server at IMAGESYNTH_TEST_POSTGRES_DSN
# (default postgresql://postgres@127.0.0.1:5432/test). If none answers, this script tries to
# start the local cluster; if that fails too, it says so and those tests are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test

dsn="${IMAGESYNTH_TEST_POSTGRES_DSN:-postgresql://postgres@127.0.0.1:5432/test}"
pg_ready() { .venv/bin/python -c "import psycopg,sys; psycopg.connect(sys.argv[1], connect_timeout=3).close()" "$dsn" 2>/dev/null; }
if ! pg_ready && command -v pg_ctlcluster >/dev/null 2>&1; then
  echo "==> PostgreSQL not answering; trying to start the local cluster"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start 2>/dev/null || true
  sleep 2
fi
if pg_ready; then
  export IMAGESYNTH_TEST_POSTGRES_DSN="$dsn"
  echo "==> PostgreSQL store tests: $dsn"
else
  unset IMAGESYNTH_TEST_POSTGRES_DSN
  echo "==> NOTE: no PostgreSQL at $dsn: the PostgreSQL store tests will be SKIPPED"
fi

echo "==> ruff check, ruff format --check, lint-imports; mypy beside the tests"
.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
if ! contracts=$(.venv/bin/lint-imports --no-cache 2>&1); then
  echo "$contracts"
  exit 1
fi
echo "$contracts" | grep -E "KEPT|Contracts:"
# mypy takes about a minute without its cache (a fresh clone): it runs on the second core while
# pytest runs, and its verdict counts as much as the tests'.
types_log="$(mktemp)"
.venv/bin/mypy >"$types_log" 2>&1 &
types_pid=$!

tests_status=0
# Two test processes (pytest-xdist): most integration tests wait on servers and subprocesses,
# so two share these two cores well (measured: 8:56 -> 6:22 for the whole suite).
# IMAGESYNTH_TEST_PROCESSES=0 runs them in this process, as `pytest -n 0` does.
.venv/bin/python -m pytest -n "${IMAGESYNTH_TEST_PROCESSES:-2}" "$@" || tests_status=$?
types_status=0
wait "$types_pid" || types_status=$?
echo "==> mypy"
cat "$types_log"
rm -f "$types_log"
if [ "$types_status" -ne 0 ]; then
  echo "mypy failed" >&2
  exit "$types_status"
fi
exit "$tests_status"
