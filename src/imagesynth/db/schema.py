"""The schema and its migrations: created on every start, idempotently, by every process."""

from __future__ import annotations

from imagesynth.db.database import Database

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    seq {serial},
    api_key_id TEXT NOT NULL,
    model TEXT NOT NULL,
    params TEXT NOT NULL,
    status TEXT NOT NULL,
    request_id TEXT NOT NULL,
    workspace TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    worker_id TEXT,
    lease_until {real},
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    created_at {real} NOT NULL,
    started_at {real},
    finished_at {real},
    progress_step INTEGER NOT NULL DEFAULT 0,
    progress_total INTEGER NOT NULL DEFAULT 0,
    results TEXT,
    error_code TEXT,
    error_message TEXT,
    n INTEGER NOT NULL DEFAULT 1,
    in_flight INTEGER NOT NULL DEFAULT 2,
    price_micros INTEGER NOT NULL DEFAULT 0,
    free_quota INTEGER NOT NULL DEFAULT 0,
    free_until {real} NOT NULL DEFAULT 0,
    actual_prompt TEXT,
    prompt_ready INTEGER NOT NULL DEFAULT 1,
    prompt_note TEXT,
    prompt_lease_until {real},
    batch_key TEXT,
    callback_url TEXT
);
CREATE INDEX IF NOT EXISTS tasks_running ON tasks (lease_until) WHERE status = 'RUNNING';
CREATE INDEX IF NOT EXISTS tasks_seq ON tasks (seq);
CREATE INDEX IF NOT EXISTS tasks_by_key ON tasks (api_key_id, created_at);
CREATE INDEX IF NOT EXISTS tasks_finished ON tasks (finished_at);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    prefix TEXT NOT NULL,
    secret_hash TEXT NOT NULL UNIQUE,
    created_at {real} NOT NULL,
    last_used_at {real},
    revoked_at {real},
    settings TEXT
);
CREATE TABLE IF NOT EXISTS usage_ledger (
    task_id TEXT PRIMARY KEY,
    api_key_id TEXT NOT NULL,
    model TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at {real} NOT NULL,
    finished_at {real} NOT NULL,
    images INTEGER NOT NULL,
    free_images INTEGER NOT NULL,
    amount_micros BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_by_key ON usage_ledger (api_key_id, model, created_at);
CREATE INDEX IF NOT EXISTS usage_by_time ON usage_ledger (created_at);
CREATE TABLE IF NOT EXISTS queue_turns (
    api_key_id TEXT PRIMARY KEY,
    last_turn BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS rate_buckets (
    bucket TEXT PRIMARY KEY,
    tokens {real} NOT NULL,
    updated_at {real} NOT NULL
);
CREATE TABLE IF NOT EXISTS workers (
    worker_id TEXT PRIMARY KEY,
    models TEXT NOT NULL,
    last_seen {real} NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_endpoints (
    id TEXT PRIMARY KEY,
    api_key_id TEXT NOT NULL,
    url TEXT NOT NULL,
    events TEXT,
    secret TEXT NOT NULL,
    created_at {real} NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_endpoints_by_key ON webhook_endpoints (api_key_id);
CREATE TABLE IF NOT EXISTS webhook_secrets (
    api_key_id TEXT PRIMARY KEY,
    secret TEXT NOT NULL,
    created_at {real} NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id TEXT PRIMARY KEY,
    task_id TEXT NOT NULL,
    api_key_id TEXT NOT NULL,
    endpoint_id TEXT,
    url TEXT NOT NULL,
    event TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at {real} NOT NULL,
    next_at {real} NOT NULL,
    lease_owner TEXT,
    lease_until {real},
    finished_at {real},
    body TEXT,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (next_at)
    WHERE status = 'PENDING';
CREATE INDEX IF NOT EXISTS webhook_deliveries_by_status ON webhook_deliveries (status, created_at);
CREATE INDEX IF NOT EXISTS webhook_deliveries_by_task ON webhook_deliveries (task_id);
CREATE TABLE IF NOT EXISTS webhook_attempts (
    delivery_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    at {real} NOT NULL,
    status_code INTEGER,
    error TEXT,
    duration_ms INTEGER NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);
"""

# Columns added after the first release: ALTERed into databases created before them.
_ADDED_COLUMNS = (
    ("tasks", "n", "INTEGER NOT NULL DEFAULT 1"),
    ("tasks", "in_flight", "INTEGER NOT NULL DEFAULT 2"),
    ("tasks", "price_micros", "INTEGER NOT NULL DEFAULT 0"),
    ("tasks", "free_quota", "INTEGER NOT NULL DEFAULT 0"),
    ("tasks", "free_until", "{real} NOT NULL DEFAULT 0"),
    ("tasks", "actual_prompt", "TEXT"),
    ("tasks", "prompt_ready", "INTEGER NOT NULL DEFAULT 1"),
    ("tasks", "prompt_note", "TEXT"),
    ("tasks", "prompt_lease_until", "{real}"),
    ("tasks", "batch_key", "TEXT"),  # GenerationParams.batch_key; NULL: never batched
    ("tasks", "previews_made", "INTEGER NOT NULL DEFAULT 0"),  # Task.previews_made
    ("api_keys", "settings", "TEXT"),
    ("tasks", "callback_url", "TEXT"),  # a submission's own webhook URL (docs/webhooks.md)
)
# Indexes on added columns: created once the columns surely exist.
_LATE_INDEXES = (
    "CREATE INDEX IF NOT EXISTS tasks_unrewritten ON tasks (seq) WHERE prompt_ready = 0",
    # Claims take the head of each key's queue: the key's oldest waiting task per model.
    "CREATE INDEX IF NOT EXISTS tasks_pending_heads ON tasks (model, api_key_id, seq) "
    "WHERE status = 'PENDING' AND prompt_ready = 1",
    # The FIFO claim's index, which the heads index replaced: kept, it only slows writes.
    "DROP INDEX IF EXISTS tasks_pending",
)


def init_schema(db: Database) -> None:
    """Create the tables and indexes, and add the columns an older database lacks."""
    dialect = db.dialect
    ddl = _SCHEMA.format(serial=dialect.serial, real=dialect.real)
    with db.transaction():
        db.lock(dialect.schema_lock)
        for statement in (s for s in ddl.split(";") if s.strip()):
            db.execute(statement)
        for table, column, kind in _ADDED_COLUMNS:
            if column not in dialect.column_names(db.connection(), table):
                db.execute(
                    f"ALTER TABLE {table} ADD COLUMN {column} {kind.format(real=dialect.real)}"
                )
        for statement in _LATE_INDEXES:
            db.execute(statement)
