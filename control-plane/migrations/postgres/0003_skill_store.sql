-- The skills' key-value store and effects journal (`kv-set`, `kv-delete`, and the journal rows
-- of `workspace-write` and `http-fetch`), shared by every node: a run taken over by a node on
-- another host finds what its earlier dispatch already did (ADR 0016). The same tables as
-- agent-runtime's `kv.db` on SQLite (agent-runtime/src/kv.rs), which `agentd migrate` copies
-- here. This migrator is the one owner of the database's schema: sqlx keeps one history per
-- schema, so agent-runtime's tables are migrated here rather than by a second migrator.

CREATE TABLE kv (
    tenant        TEXT   NOT NULL,
    skill         TEXT   NOT NULL,
    key           TEXT   NOT NULL,
    value         BYTEA  NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (tenant, skill, key)
);

CREATE TABLE effects (
    idempotency_key TEXT   NOT NULL,
    seq             BIGINT NOT NULL CHECK (seq >= 0),
    kind            TEXT   NOT NULL,
    request_digest  TEXT   NOT NULL,
    response        BYTEA,
    recorded_at_ms  BIGINT NOT NULL,
    PRIMARY KEY (idempotency_key, seq)
);
