//! The PostgreSQL schema: migrations applied in order at start; `relaydesk_schema.version` holds how many
//! have run. The first one is SQLite's migrations 1 to 5 in PostgreSQL's dialect: the same tables,
//! columns and constraints, with `BIGINT`/`BYTEA`/`BOOLEAN` types, identity columns, and case-insensitive
//! unique names through indexes on `lower(name)` (SQLite: `COLLATE NOCASE`). Append new steps; never edit a
//! released one.

/// Schema migrations, applied in order.
pub const MIGRATIONS: &[&str] = &[
    // 1: everything SQLite's migrations 1 to 5 hold (accounts, sessions, site keys, audit log, archive, live
    // conversations at rest, message kinds, recordings).
    "CREATE TABLE groups (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        name TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        recording TEXT NOT NULL DEFAULT 'off' CHECK (recording IN ('off', 'always', 'on_request'))
    );
    CREATE UNIQUE INDEX groups_name ON groups (lower(name));
    CREATE TABLE users (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        username TEXT NOT NULL,
        display_name TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('agent', 'supervisor', 'admin')),
        password_hash TEXT NOT NULL,
        max_conversations INTEGER NOT NULL DEFAULT 4,
        disabled BOOLEAN NOT NULL DEFAULT FALSE,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    );
    CREATE UNIQUE INDEX users_username ON users (lower(username));
    CREATE TABLE user_groups (
        user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        group_id BIGINT NOT NULL REFERENCES groups(id) ON DELETE CASCADE,
        PRIMARY KEY (user_id, group_id)
    );
    CREATE INDEX user_groups_group ON user_groups(group_id);
    CREATE TABLE sessions (
        token_hash BYTEA PRIMARY KEY,
        user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        created_at BIGINT NOT NULL,
        last_seen BIGINT NOT NULL
    );
    CREATE INDEX sessions_user ON sessions(user_id);
    CREATE TABLE site_keys (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        key TEXT NOT NULL UNIQUE,
        group_id BIGINT NOT NULL REFERENCES groups(id),
        allowed_origins TEXT NOT NULL,
        label TEXT NOT NULL DEFAULT '',
        created_at BIGINT NOT NULL,
        revoked_at BIGINT
    );
    CREATE TABLE audit_log (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        at BIGINT NOT NULL,
        actor TEXT,
        action TEXT NOT NULL,
        target TEXT,
        client_addr TEXT,
        detail TEXT
    );
    CREATE TABLE archive_meta (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        master_key_id TEXT NOT NULL
    );
    CREATE TABLE archive_conversations (
        id TEXT PRIMARY KEY,
        group_name TEXT NOT NULL,
        site_key_id TEXT NOT NULL,
        visitor_digest BYTEA NOT NULL,
        started_at BIGINT NOT NULL,
        ended_at BIGINT NOT NULL,
        master_key_id TEXT NOT NULL,
        wrapped_key BYTEA NOT NULL,
        archived_at BIGINT NOT NULL
    );
    CREATE INDEX archive_conversations_ended ON archive_conversations(ended_at);
    CREATE INDEX archive_conversations_visitor ON archive_conversations(visitor_digest);
    CREATE INDEX archive_conversations_key ON archive_conversations(master_key_id);
    CREATE TABLE archive_participants (
        conversation_id TEXT NOT NULL REFERENCES archive_conversations(id) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('visitor', 'agent', 'supervisor')),
        user_id BIGINT,
        display_name TEXT NOT NULL,
        joined_at BIGINT,
        left_at BIGINT,
        PRIMARY KEY (conversation_id, position)
    );
    CREATE TABLE archive_messages (
        conversation_id TEXT NOT NULL REFERENCES archive_conversations(id) ON DELETE CASCADE,
        seq BIGINT NOT NULL,
        author TEXT NOT NULL CHECK (author IN ('visitor', 'agent', 'system')),
        author_user_id BIGINT,
        sent_at BIGINT NOT NULL,
        body BYTEA NOT NULL,
        kind TEXT NOT NULL DEFAULT 'chat' CHECK (kind IN ('chat', 'call_text', 'call_file')),
        PRIMARY KEY (conversation_id, seq)
    );
    CREATE TABLE live_conversations (
        id BIGINT PRIMARY KEY,
        group_name TEXT NOT NULL,
        site_key_id TEXT NOT NULL,
        origin TEXT NOT NULL,
        started_at BIGINT NOT NULL,
        agent_id BIGINT,
        resume_hash BYTEA NOT NULL,
        files_hash BYTEA NOT NULL,
        master_key_id TEXT NOT NULL,
        wrapped_key BYTEA NOT NULL,
        state BYTEA NOT NULL,
        ended_at BIGINT,
        ended_reason TEXT
    );
    CREATE INDEX live_conversations_key ON live_conversations(master_key_id);
    CREATE TABLE live_messages (
        conversation_id BIGINT NOT NULL REFERENCES live_conversations(id) ON DELETE CASCADE,
        seq BIGINT NOT NULL,
        body BYTEA NOT NULL,
        PRIMARY KEY (conversation_id, seq)
    );
    CREATE TABLE live_files (
        conversation_id BIGINT NOT NULL REFERENCES live_conversations(id) ON DELETE CASCADE,
        file_id TEXT NOT NULL,
        sealed_key BYTEA NOT NULL,
        PRIMARY KEY (conversation_id, file_id)
    );
    CREATE TABLE recordings (
        id TEXT PRIMARY KEY,
        conversation_id TEXT NOT NULL,
        file TEXT NOT NULL UNIQUE,
        started_at BIGINT NOT NULL,
        ended_at BIGINT,
        state TEXT NOT NULL CHECK (state IN ('recording', 'complete', 'interrupted')),
        chunks INTEGER NOT NULL DEFAULT 0,
        master_key_id TEXT NOT NULL,
        wrapped_key BYTEA NOT NULL
    );
    CREATE INDEX recordings_conversation ON recordings(conversation_id);
    CREATE INDEX recordings_key ON recordings(master_key_id);",
];
