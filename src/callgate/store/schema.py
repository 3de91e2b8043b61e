"""Versioned schema migrations.

Every backend keeps the same logical schema and the same version numbers in ``schema_migrations``;
only the DDL dialect differs (``INTEGER PRIMARY KEY AUTOINCREMENT`` here is ``bigint generated
always as identity`` in PostgreSQL, ``REAL`` is ``double precision``). Migrations are append-only:
never edit one that has shipped, add the next version.

Times are unix seconds as doubles (see :mod:`callgate.store.records`); JSON columns hold canonical
JSON text. Nothing here holds a secret in clear: keys and tokens are stored as keyed hashes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


SQLITE_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "sessions, events, checkpoints, api_keys, session_tokens, outbox",
        (
            """
            CREATE TABLE sessions (
                id                TEXT PRIMARY KEY,
                subject           TEXT NOT NULL,
                groups            TEXT NOT NULL,            -- JSON array of strings
                auth_method       TEXT NOT NULL,
                credential_id     TEXT,
                issuer            TEXT,
                connection        TEXT NOT NULL,
                protocol          TEXT NOT NULL,
                client_addr       TEXT NOT NULL,
                client_user       TEXT,
                application_name  TEXT,
                tls               INTEGER NOT NULL,
                started_at        REAL NOT NULL,
                ended_at          REAL,
                end_reason        TEXT,
                bytes_from_client INTEGER NOT NULL DEFAULT 0,
                bytes_to_client   INTEGER NOT NULL DEFAULT 0,
                statements        INTEGER NOT NULL DEFAULT 0
            )
            """,
            "CREATE INDEX sessions_started_at ON sessions (started_at)",
            """
            CREATE TABLE events (
                -- The global, increasing event id. Not AUTOINCREMENT: that costs one more page
                -- write per commit (~20% of a single-event commit); an INTEGER PRIMARY KEY is
                -- max(id) + 1, so ids are never reused as long as retention keeps the newest row.
                id         INTEGER PRIMARY KEY,
                session_id TEXT,                             -- NULL: not part of a session
                seq        INTEGER NOT NULL,
                ts         REAL NOT NULL,
                type       TEXT NOT NULL,
                payload    TEXT NOT NULL,                    -- canonical JSON
                prev_hash  TEXT NOT NULL,
                hash       TEXT NOT NULL,
                UNIQUE (session_id, seq)
            )
            """,
            # NULLs are distinct in a UNIQUE constraint, so the non-session chain needs its own.
            "CREATE UNIQUE INDEX events_no_session_seq ON events (seq) WHERE session_id IS NULL",
            """
            CREATE TABLE checkpoints (
                id        INTEGER PRIMARY KEY AUTOINCREMENT,
                ts        REAL NOT NULL,
                heads     TEXT NOT NULL,                     -- JSON {session_id: [seq, hash]}
                signature TEXT NOT NULL
            )
            """,
            """
            CREATE TABLE api_keys (
                id           INTEGER PRIMARY KEY AUTOINCREMENT,
                name         TEXT NOT NULL UNIQUE,
                key_id       TEXT NOT NULL,                  -- the public cgk_<id>_ part
                key_hash     TEXT NOT NULL UNIQUE,           -- HMAC-SHA256(secret key, key), hex
                groups       TEXT NOT NULL,                  -- JSON array of strings
                created_at   REAL NOT NULL,
                expires_at   REAL,
                revoked_at   REAL,
                last_used_at REAL,
                created_by   TEXT
            )
            """,
            """
            CREATE TABLE session_tokens (
                id           TEXT PRIMARY KEY,
                token_hash   TEXT NOT NULL UNIQUE,           -- HMAC-SHA256(secret key, token), hex
                subject      TEXT NOT NULL,
                groups       TEXT NOT NULL,
                issuer       TEXT,
                created_at   REAL NOT NULL,
                expires_at   REAL NOT NULL,
                revoked_at   REAL,
                last_used_at REAL
            )
            """,
            """
            CREATE TABLE outbox (
                id              INTEGER PRIMARY KEY AUTOINCREMENT,
                sink            TEXT NOT NULL,
                event_id        INTEGER NOT NULL,
                created_at      REAL NOT NULL,
                attempts        INTEGER NOT NULL DEFAULT 0,
                next_attempt_at REAL NOT NULL,
                last_error      TEXT,
                UNIQUE (sink, event_id)
            )
            """,
            "CREATE INDEX outbox_due ON outbox (sink, next_attempt_at)",
        ),
    ),
    Migration(
        2,
        "reviews, review_votes, grants, review_log (approvals; see callgate.store.reviews)",
        (
            """
            CREATE TABLE reviews (
                id                TEXT PRIMARY KEY,
                kind              TEXT NOT NULL,             -- statement | access
                state             TEXT NOT NULL,             -- pending | approved | denied | ...
                mode              TEXT NOT NULL,             -- hold | deferred | access
                requester         TEXT NOT NULL,             -- subject
                requester_issuer  TEXT,
                requester_groups  TEXT NOT NULL,             -- JSON array of strings
                requester_method  TEXT NOT NULL,
                connection        TEXT NOT NULL,
                session_id        TEXT,
                statement         TEXT,                      -- SQL text (statement reviews)
                params            TEXT NOT NULL,             -- JSON, rendered as audit does
                fingerprint       TEXT,
                param_digest      TEXT,                      -- NULL: any parameters
                policy_version    TEXT NOT NULL,
                rules             TEXT NOT NULL,             -- JSON array of rule labels
                approval_rule     INTEGER NOT NULL,          -- index into approvals:
                min_approvals     INTEGER NOT NULL,
                reason            TEXT,                      -- the requester's (access)
                duration          REAL,                      -- access: seconds asked for
                use_window        REAL,                      -- deferred: seconds usable; NULL once
                created_at        REAL NOT NULL,
                expires_at        REAL NOT NULL,             -- stays pending until then
                decided_at        REAL,
                decided_by        TEXT,
                decision_reason   TEXT,
                uses              INTEGER NOT NULL DEFAULT 0,
                last_used_at      REAL,
                grant_id          TEXT
            )
            """,
            "CREATE INDEX reviews_state ON reviews (state, created_at)",
            "CREATE INDEX reviews_binding ON reviews (requester, connection, fingerprint)",
            """
            CREATE TABLE review_votes (
                review_id TEXT NOT NULL REFERENCES reviews (id),
                approver  TEXT NOT NULL,                     -- subject
                method    TEXT NOT NULL,
                at        REAL NOT NULL,
                reason    TEXT,
                PRIMARY KEY (review_id, approver)
            )
            """,
            """
            CREATE TABLE grants (
                id            TEXT PRIMARY KEY,
                review_id     TEXT NOT NULL UNIQUE REFERENCES reviews (id),
                subject       TEXT NOT NULL,
                issuer        TEXT,
                connection    TEXT NOT NULL,
                policy        TEXT NOT NULL,
                starts_at     REAL NOT NULL,
                expires_at    REAL NOT NULL,
                revoked_at    REAL,
                revoked_by    TEXT,
                revoke_reason TEXT,
                end_logged    INTEGER NOT NULL DEFAULT 0
            )
            """,
            "CREATE INDEX grants_subject ON grants (subject, connection, expires_at)",
            """
            CREATE TABLE review_log (
                -- Every review and grant state change, written in the transaction that makes
                -- it (from any process); the gateway relays each into the audit chain once.
                id         INTEGER PRIMARY KEY AUTOINCREMENT,
                review_id  TEXT NOT NULL,
                ts         REAL NOT NULL,
                type       TEXT NOT NULL,
                payload    TEXT NOT NULL,                    -- canonical JSON
                audited_at REAL
            )
            """,
            "CREATE INDEX review_log_unaudited ON review_log (id) WHERE audited_at IS NULL",
        ),
    ),
    Migration(
        3,
        "audit: signed checkpoints, gateway heartbeats, crash recovery, outbox order",
        (
            # Which gateway serves a session: a restarted gateway closes its own open sessions.
            "ALTER TABLE sessions ADD COLUMN gateway_id TEXT",
            "CREATE INDEX sessions_open ON sessions (gateway_id) WHERE ended_at IS NULL",
            "CREATE INDEX sessions_ended_at ON sessions (ended_at)",
            # The checkpoint chain (see callgate.store.checkpoints).
            "ALTER TABLE checkpoints ADD COLUMN kind TEXT NOT NULL DEFAULT 'interval'",
            "ALTER TABLE checkpoints ADD COLUMN purged TEXT NOT NULL DEFAULT '[]'",
            "ALTER TABLE checkpoints ADD COLUMN prev TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE checkpoints ADD COLUMN public_key TEXT NOT NULL DEFAULT ''",
            """
            CREATE TABLE gateways (
                id         TEXT PRIMARY KEY,
                started_at REAL NOT NULL,
                seen_at    REAL NOT NULL
            )
            """,
            # Small facts the writer keeps across restarts (the highest event id ever given,
            # so ids are never reused once retention has removed the newest events).
            "CREATE TABLE store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
            "CREATE INDEX outbox_sink_id ON outbox (sink, id)",
        ),
    ),
)

LATEST_VERSION = SQLITE_MIGRATIONS[-1].version
