//! The SQLite schema: migrations applied in order; `PRAGMA user_version` holds how many have run.

/// Schema migrations, applied in order; `PRAGMA user_version` holds how many have run.
/// Append new steps; never edit a released one.
pub const MIGRATIONS: &[&str] = &[
    // 1: accounts, sessions, site keys, audit log.
    "CREATE TABLE groups (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE COLLATE NOCASE,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        username TEXT NOT NULL UNIQUE COLLATE NOCASE,
        display_name TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('agent', 'supervisor', 'admin')),
        password_hash TEXT NOT NULL,
        max_conversations INTEGER NOT NULL DEFAULT 4,
        disabled INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE user_groups (
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        group_id INTEGER NOT NULL REFERENCES groups(id) ON DELETE CASCADE,
        PRIMARY KEY (user_id, group_id)
    );
    CREATE INDEX user_groups_group ON user_groups(group_id);
    CREATE TABLE sessions (
        token_hash BLOB PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        created_at INTEGER NOT NULL,
        last_seen INTEGER NOT NULL
    );
    CREATE INDEX sessions_user ON sessions(user_id);
    CREATE TABLE site_keys (
        id INTEGER PRIMARY KEY,
        key TEXT NOT NULL UNIQUE,
        group_id INTEGER NOT NULL REFERENCES groups(id),
        allowed_origins TEXT NOT NULL,
        label TEXT NOT NULL DEFAULT '',
        created_at INTEGER NOT NULL,
        revoked_at INTEGER
    );
    CREATE TABLE audit_log (
        id INTEGER PRIMARY KEY,
        at INTEGER NOT NULL,
        actor TEXT,
        action TEXT NOT NULL,
        target TEXT,
        client_addr TEXT,
        detail TEXT
    );",
    // 2: the encrypted transcript archive (see crate::archive). Bodies are sealed; the visitor id is a digest.
    "CREATE TABLE archive_meta (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        master_key_id TEXT NOT NULL
    );
    CREATE TABLE archive_conversations (
        id TEXT PRIMARY KEY,
        group_name TEXT NOT NULL,
        site_key_id TEXT NOT NULL,
        visitor_digest BLOB NOT NULL,
        started_at INTEGER NOT NULL,
        ended_at INTEGER NOT NULL,
        master_key_id TEXT NOT NULL,
        wrapped_key BLOB NOT NULL,
        archived_at INTEGER NOT NULL
    );
    CREATE INDEX archive_conversations_ended ON archive_conversations(ended_at);
    CREATE INDEX archive_conversations_visitor ON archive_conversations(visitor_digest);
    CREATE INDEX archive_conversations_key ON archive_conversations(master_key_id);
    CREATE TABLE archive_participants (
        conversation_id TEXT NOT NULL REFERENCES archive_conversations(id) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('visitor', 'agent', 'supervisor')),
        user_id INTEGER,
        display_name TEXT NOT NULL,
        joined_at INTEGER,
        left_at INTEGER,
        PRIMARY KEY (conversation_id, position)
    ) WITHOUT ROWID;
    CREATE TABLE archive_messages (
        conversation_id TEXT NOT NULL REFERENCES archive_conversations(id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        author TEXT NOT NULL CHECK (author IN ('visitor', 'agent', 'system')),
        author_user_id INTEGER,
        sent_at INTEGER NOT NULL,
        body BLOB NOT NULL,
        PRIMARY KEY (conversation_id, seq)
    ) WITHOUT ROWID;",
    // 3: live conversations at rest, so that an acknowledged message survives a crash (see
    // crate::live_store). Like the archive: a data key per conversation wrapped under the master key, every
    // message (and the visitor id, in `state`) sealed with it; token columns hold SHA-256 hashes only.
    "CREATE TABLE live_conversations (
        id INTEGER PRIMARY KEY,
        group_name TEXT NOT NULL,
        site_key_id TEXT NOT NULL,
        origin TEXT NOT NULL,
        started_at INTEGER NOT NULL,
        agent_id INTEGER,
        resume_hash BLOB NOT NULL,
        files_hash BLOB NOT NULL,
        master_key_id TEXT NOT NULL,
        wrapped_key BLOB NOT NULL,
        state BLOB NOT NULL,
        ended_at INTEGER,
        ended_reason TEXT
    );
    CREATE INDEX live_conversations_key ON live_conversations(master_key_id);
    CREATE TABLE live_messages (
        conversation_id INTEGER NOT NULL REFERENCES live_conversations(id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        body BLOB NOT NULL,
        PRIMARY KEY (conversation_id, seq)
    ) WITHOUT ROWID;
    CREATE TABLE live_files (
        conversation_id INTEGER NOT NULL REFERENCES live_conversations(id) ON DELETE CASCADE,
        file_id TEXT NOT NULL,
        sealed_key BLOB NOT NULL,
        PRIMARY KEY (conversation_id, file_id)
    ) WITHOUT ROWID;",
    // 4: the kind of an archived transcript entry: chat, or what passed over a call's data channels (in-call
    // text, in-call files; crate::archive::MessageKind). Existing rows are chat.
    "ALTER TABLE archive_messages ADD COLUMN kind TEXT NOT NULL DEFAULT 'chat'
        CHECK (kind IN ('chat', 'call_text', 'call_file'));",
    // 5: call recording (see crate::recording): each group's policy, and one row per recording file. The
    // file holds sealed chunks only; its data key is wrapped under the master key here, as the archive's.
    "ALTER TABLE groups ADD COLUMN recording TEXT NOT NULL DEFAULT 'off'
        CHECK (recording IN ('off', 'always', 'on_request'));
    CREATE TABLE recordings (
        id TEXT PRIMARY KEY,
        conversation_id TEXT NOT NULL,
        file TEXT NOT NULL UNIQUE,
        started_at INTEGER NOT NULL,
        ended_at INTEGER,
        state TEXT NOT NULL CHECK (state IN ('recording', 'complete', 'interrupted')),
        chunks INTEGER NOT NULL DEFAULT 0,
        master_key_id TEXT NOT NULL,
        wrapped_key BLOB NOT NULL
    );
    CREATE INDEX recordings_conversation ON recordings(conversation_id);
    CREATE INDEX recordings_key ON recordings(master_key_id);",
];
