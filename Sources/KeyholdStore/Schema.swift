/// One step of the repository schema. Each driver applies, in order, the migrations it has not
/// applied yet, recording each in `schema_migrations` in the same transaction.
public protocol SchemaMigration: Sendable {
    /// Strictly increasing from 1.
    var version: Int { get }
    var name: String { get }
    /// Statements for SQLite.
    var sqlite: [String] { get }
    /// Statements for PostgreSQL.
    var postgres: [String] { get }
}

/// The repository schema's history. Never edit a released migration: add a new one.
public enum Schema {
    /// Every migration, in the order they apply.
    public static let migrations: [any SchemaMigration] = [
        CreateRepository(), AddKeySequence(), InsertAndReleaseFunction(), AddKeyStateSequence(),
        AddReleaseApprovals(), AddKeyRotations(), AddEscrowChecks(), AddCertificateExpiry(),
        AddNextCertificate(), AddMasterKeyVersions(), AddKeyRetention(),
        AddKeyOwners(), AddCertificateIssuers(),
    ]
}

/// Version 1: keys, enrolled clients, enrollment tokens, audit, settings.
struct CreateRepository: SchemaMigration {
    let version = 1
    let name = "create repository"

    var sqlite: [String] {
        [
            """
            CREATE TABLE keys (
              id TEXT PRIMARY KEY, kind TEXT NOT NULL, origin_server_id TEXT NOT NULL, origin_device_id TEXT NOT NULL,
              created REAL NOT NULL, label TEXT NOT NULL, state TEXT NOT NULL,
              wrapped_secret BLOB NOT NULL, secret_fingerprint BLOB NOT NULL, provenance TEXT NOT NULL,
              stored REAL NOT NULL, blocked INTEGER NOT NULL DEFAULT 0)
            """,
            """
            CREATE TABLE clients (
              id TEXT PRIMARY KEY, role TEXT NOT NULL, name TEXT NOT NULL, certificate_fingerprint TEXT NOT NULL,
              enrolled REAL NOT NULL, state TEXT NOT NULL, last_seen REAL, agent_version TEXT, key_count INTEGER)
            """,
            """
            CREATE TABLE enrollment_tokens (
              id TEXT PRIMARY KEY, secret_hash BLOB NOT NULL, role TEXT NOT NULL, uses_left INTEGER NOT NULL,
              expires REAL NOT NULL, created REAL NOT NULL, revoked INTEGER NOT NULL DEFAULT 0)
            """,
            """
            CREATE TABLE audit (
              seq INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
              key_id TEXT, route TEXT NOT NULL, result TEXT NOT NULL, detail TEXT NOT NULL)
            """,
            "CREATE INDEX audit_key ON audit (key_id)",
            "CREATE TABLE settings (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
        ]
    }

    var postgres: [String] {
        [
            """
            CREATE TABLE keys (
              id TEXT PRIMARY KEY, kind TEXT NOT NULL, origin_server_id TEXT NOT NULL, origin_device_id TEXT NOT NULL,
              created TIMESTAMPTZ NOT NULL, label TEXT NOT NULL, state TEXT NOT NULL,
              wrapped_secret BYTEA NOT NULL, secret_fingerprint BYTEA NOT NULL, provenance TEXT NOT NULL,
              stored TIMESTAMPTZ NOT NULL, blocked BOOLEAN NOT NULL DEFAULT FALSE)
            """,
            """
            CREATE TABLE clients (
              id TEXT PRIMARY KEY, role TEXT NOT NULL, name TEXT NOT NULL, certificate_fingerprint TEXT NOT NULL,
              enrolled TIMESTAMPTZ NOT NULL, state TEXT NOT NULL, last_seen TIMESTAMPTZ, agent_version TEXT, key_count BIGINT)
            """,
            """
            CREATE TABLE enrollment_tokens (
              id TEXT PRIMARY KEY, secret_hash BYTEA NOT NULL, role TEXT NOT NULL, uses_left BIGINT NOT NULL,
              expires TIMESTAMPTZ NOT NULL, created TIMESTAMPTZ NOT NULL, revoked BOOLEAN NOT NULL DEFAULT FALSE)
            """,
            """
            CREATE TABLE audit (
              seq BIGSERIAL PRIMARY KEY, time TIMESTAMPTZ NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
              key_id TEXT, route TEXT NOT NULL, result TEXT NOT NULL, detail TEXT NOT NULL)
            """,
            "CREATE INDEX audit_key ON audit (key_id)",
            "CREATE TABLE settings (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
        ]
    }
}

/// Version 2: a sequence number per key, for the hierarchy's incremental push (docs/spec/hierarchy.md §3).
struct AddKeySequence: SchemaMigration {
    let version = 2
    let name = "add key sequence"

    var sqlite: [String] {
        [
            "ALTER TABLE keys ADD COLUMN seq INTEGER NOT NULL DEFAULT 0",
            "UPDATE keys SET seq = rowid",
            "CREATE INDEX keys_seq ON keys (seq)",
        ]
    }

    var postgres: [String] {
        [
            "ALTER TABLE keys ADD COLUMN seq BIGINT NOT NULL DEFAULT 0",
            "UPDATE keys SET seq = t.n FROM (SELECT id, row_number() OVER (ORDER BY stored, id) AS n FROM keys) t WHERE keys.id = t.id",
            "CREATE INDEX keys_seq ON keys (seq)",
        ]
    }
}

/// Version 3 (PostgreSQL only): storing a key obtained through the hierarchy and releasing it, as
/// one function, so the whole transaction is one round trip and one commit instead of seven
/// statements (docs/spec/hierarchy.md, "Lookup"). Inside a function each statement still takes a
/// fresh snapshot, so the key's sequence number is read after the sequence lock is held.
struct InsertAndReleaseFunction: SchemaMigration {
    let version = 3
    let name = "insert and release function"

    var sqlite: [String] { [] }

    var postgres: [String] {
        [
            """
            CREATE OR REPLACE FUNCTION keyhold_insert_and_release(
                k_id text, k_kind text, k_origin_server_id text, k_origin_device_id text, k_created timestamptz, k_label text,
                k_state text, k_wrapped_secret bytea, k_secret_fingerprint bytea, k_provenance text, k_stored timestamptz,
                k_blocked boolean,
                o_time timestamptz, o_actor text, o_action text, o_key_id text, o_route text, o_result text, o_detail text,
                rq_time timestamptz, rq_actor text, rq_route text, rq_detail text)
            RETURNS TABLE (r_outcome text, r_id text, r_kind text, r_origin_server_id text, r_origin_device_id text,
                           r_created timestamptz, r_label text, r_state text, r_wrapped_secret bytea, r_secret_fingerprint bytea,
                           r_provenance text, r_stored timestamptz, r_blocked boolean, r_seq bigint)
            LANGUAGE plpgsql AS $$
            DECLARE
                outcome text := 'inserted';
                existing bytea;
            BEGIN
                -- The sequence lock of every writer of keys.seq (docs/spec/hierarchy.md §3).
                PERFORM pg_advisory_xact_lock(7882829014);
                INSERT INTO keys (id, kind, origin_server_id, origin_device_id, created, label, state,
                                  wrapped_secret, secret_fingerprint, provenance, stored, blocked, seq)
                VALUES (k_id, k_kind, k_origin_server_id, k_origin_device_id, k_created, k_label, k_state,
                        k_wrapped_secret, k_secret_fingerprint, k_provenance, k_stored, k_blocked,
                        (SELECT COALESCE(MAX(keys.seq), 0) + 1 FROM keys))
                ON CONFLICT (id) DO NOTHING;
                IF NOT FOUND THEN
                    SELECT keys.secret_fingerprint INTO existing FROM keys WHERE keys.id = k_id;
                    outcome := CASE WHEN existing = k_secret_fingerprint THEN 'already_present' ELSE 'conflict' END;
                END IF;
                IF outcome <> 'already_present' THEN
                    INSERT INTO audit (time, actor, action, key_id, route, result, detail)
                    VALUES (o_time, o_actor, o_action, o_key_id, o_route,
                            CASE WHEN outcome = 'conflict' THEN 'conflict' ELSE o_result END, o_detail);
                END IF;
                IF outcome <> 'conflict' THEN
                    INSERT INTO audit (time, actor, action, key_id, route, result, detail)
                    SELECT rq_time, rq_actor, 'release', k_id, rq_route,
                           CASE WHEN keys.blocked OR keys.state = 'revoked' THEN 'key_blocked' ELSE 'ok' END, rq_detail
                    FROM keys WHERE keys.id = k_id;
                END IF;
                RETURN QUERY SELECT outcome, keys.id, keys.kind, keys.origin_server_id, keys.origin_device_id, keys.created,
                                    keys.label, keys.state, keys.wrapped_secret, keys.secret_fingerprint, keys.provenance,
                                    keys.stored, keys.blocked, keys.seq
                             FROM keys WHERE keys.id = k_id;
            END $$
            """
        ]
    }
}

/// Version 4: a state sequence per key, for the change feed a primary sends down to its
/// secondaries (docs/spec/hierarchy.md §3a). Keys blocked before it enter the feed once.
struct AddKeyStateSequence: SchemaMigration {
    let version = 4
    let name = "add key state sequence"

    var sqlite: [String] {
        [
            "ALTER TABLE keys ADD COLUMN state_seq INTEGER NOT NULL DEFAULT 0",
            "UPDATE keys SET state_seq = seq WHERE blocked = 1",
            "CREATE INDEX keys_state_seq ON keys (state_seq)",
        ]
    }

    var postgres: [String] {
        [
            "ALTER TABLE keys ADD COLUMN state_seq BIGINT NOT NULL DEFAULT 0",
            "UPDATE keys SET state_seq = seq WHERE blocked",
            "CREATE INDEX keys_state_seq ON keys (state_seq)",
        ]
    }
}

/// Version 5: requests for an administrator's approval of a key release
/// (`release_policy = approval`). At most one open request per device and key.
struct AddReleaseApprovals: SchemaMigration {
    let version = 5
    let name = "add release approvals"

    var sqlite: [String] {
        [
            """
            CREATE TABLE release_approvals (
              id TEXT PRIMARY KEY, key_id TEXT NOT NULL, client_id TEXT NOT NULL, requested REAL NOT NULL, state TEXT NOT NULL,
              decided_by TEXT, decided REAL, reason TEXT NOT NULL DEFAULT '')
            """,
            "CREATE UNIQUE INDEX release_approvals_open ON release_approvals (key_id, client_id) WHERE state IN ('pending', 'approved', 'denied')",
            "CREATE INDEX release_approvals_requested ON release_approvals (requested)",
        ]
    }

    var postgres: [String] {
        [
            """
            CREATE TABLE release_approvals (
              id TEXT PRIMARY KEY, key_id TEXT NOT NULL, client_id TEXT NOT NULL, requested TIMESTAMPTZ NOT NULL, state TEXT NOT NULL,
              decided_by TEXT, decided TIMESTAMPTZ, reason TEXT NOT NULL DEFAULT '')
            """,
            "CREATE UNIQUE INDEX release_approvals_open ON release_approvals (key_id, client_id) WHERE state IN ('pending', 'approved', 'denied')",
            "CREATE INDEX release_approvals_requested ON release_approvals (requested)",
        ]
    }
}

/// Version 6: keys marked *rotation required* (revealed to an administrator), one row per key.
struct AddKeyRotations: SchemaMigration {
    let version = 6
    let name = "add key rotations"

    var sqlite: [String] { ["CREATE TABLE key_rotations (key_id TEXT PRIMARY KEY, marked REAL NOT NULL)"] }

    var postgres: [String] { ["CREATE TABLE key_rotations (key_id TEXT PRIMARY KEY, marked TIMESTAMPTZ NOT NULL)"] }
}

/// Version 7: the last escrow check of each drive key, reported by devices at their heartbeat.
struct AddEscrowChecks: SchemaMigration {
    let version = 7
    let name = "add escrow checks"

    var sqlite: [String] {
        [
            "CREATE TABLE escrow_checks (key_id TEXT PRIMARY KEY, client_id TEXT NOT NULL, checked REAL NOT NULL, opens INTEGER NOT NULL)",
            "CREATE INDEX escrow_checks_client ON escrow_checks (client_id)",
        ]
    }

    var postgres: [String] {
        [
            "CREATE TABLE escrow_checks (key_id TEXT PRIMARY KEY, client_id TEXT NOT NULL, checked TIMESTAMPTZ NOT NULL, opens BOOLEAN NOT NULL)",
            "CREATE INDEX escrow_checks_client ON escrow_checks (client_id)",
        ]
    }
}

/// Version 8: when each client's certificate expires, so `device list`, `admin list` and the
/// metrics can show it without the certificate (NULL for clients enrolled before).
struct AddCertificateExpiry: SchemaMigration {
    let version = 8
    let name = "add certificate expiry"

    var sqlite: [String] { ["ALTER TABLE clients ADD COLUMN certificate_expires REAL"] }

    var postgres: [String] { ["ALTER TABLE clients ADD COLUMN certificate_expires TIMESTAMPTZ"] }
}

/// Version 9: a client's renewed certificate, accepted beside the current one until the client
/// first presents it (docs/operations.md, "Certificate renewal").
struct AddNextCertificate: SchemaMigration {
    let version = 9
    let name = "add next certificate"

    var sqlite: [String] {
        ["ALTER TABLE clients ADD COLUMN next_certificate_fingerprint TEXT", "ALTER TABLE clients ADD COLUMN next_certificate_expires REAL"]
    }

    var postgres: [String] {
        [
            "ALTER TABLE clients ADD COLUMN next_certificate_fingerprint TEXT",
            "ALTER TABLE clients ADD COLUMN next_certificate_expires TIMESTAMPTZ",
        ]
    }
}

/// Version 10: master-key versions (docs/operations.md, "Master-key rotation"): the versions
/// registered, and the version each key's secret is wrapped under, indexed so that a rewrap finds
/// the keys left and `retire-old` can prove none is. Every existing key is version 1. SQLite gets
/// the column from the repository at each write; PostgreSQL computes it from the wrapped secret's
/// header as a generated column, so every write path (the insert-and-release function, batch
/// inserts, replacements) keeps it right without naming it.
struct AddMasterKeyVersions: SchemaMigration {
    let version = 10
    let name = "add master key versions"

    var sqlite: [String] {
        [
            "ALTER TABLE keys ADD COLUMN master_version INTEGER NOT NULL DEFAULT 1",
            "CREATE INDEX keys_master_version ON keys (master_version)",
            """
            CREATE TABLE master_key_versions (
              version INTEGER PRIMARY KEY, check_value BLOB NOT NULL, created REAL NOT NULL, activated REAL, retired REAL)
            """,
        ]
    }

    var postgres: [String] {
        [
            """
            ALTER TABLE keys ADD COLUMN master_version INTEGER NOT NULL GENERATED ALWAYS AS (
              CASE WHEN length(wrapped_secret) = 64 AND substring(wrapped_secret FROM 1 FOR 2) = decode('4b4d', 'hex')
                   THEN get_byte(wrapped_secret, 2) * 256 + get_byte(wrapped_secret, 3) ELSE 1 END) STORED
            """,
            "CREATE INDEX keys_master_version ON keys (master_version)",
            """
            CREATE TABLE master_key_versions (
              version INTEGER PRIMARY KEY, check_value BYTEA NOT NULL, created TIMESTAMPTZ NOT NULL, activated TIMESTAMPTZ,
              retired TIMESTAMPTZ)
            """,
        ]
    }
}

/// Version 11: device deletion and key retention (docs/operations.md, "Deleting devices and
/// destroying keys"). `clients.deleted` is when an administrator deleted the client; on keys,
/// `escrowed_by` is the client of this server that escrowed it (existing device escrows: their
/// origin device), `held_below` says a secondary pushed it (the retention here spares it), and
/// `destroyed` is when its secret was erased.
struct AddKeyRetention: SchemaMigration {
    let version = 11
    let name = "add key retention"

    var sqlite: [String] {
        [
            "ALTER TABLE clients ADD COLUMN deleted REAL",
            "ALTER TABLE keys ADD COLUMN escrowed_by TEXT",
            "ALTER TABLE keys ADD COLUMN held_below INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE keys ADD COLUMN destroyed REAL",
            "UPDATE keys SET escrowed_by = origin_device_id WHERE provenance = 'escrow'",
            "UPDATE keys SET held_below = 1 WHERE provenance = 'pushed'",
            "CREATE INDEX keys_escrowed_by ON keys (escrowed_by)",
        ]
    }

    var postgres: [String] {
        [
            "ALTER TABLE clients ADD COLUMN deleted TIMESTAMPTZ",
            "ALTER TABLE keys ADD COLUMN escrowed_by TEXT",
            "ALTER TABLE keys ADD COLUMN held_below BOOLEAN NOT NULL DEFAULT FALSE",
            "ALTER TABLE keys ADD COLUMN destroyed TIMESTAMPTZ",
            "UPDATE keys SET escrowed_by = origin_device_id WHERE provenance = 'escrow'",
            "UPDATE keys SET held_below = TRUE WHERE provenance = 'pushed'",
            "CREATE INDEX keys_escrowed_by ON keys (escrowed_by)",
        ]
    }
}

/// Version 12: a key's owner (`escrowed_by`) replaces the `held_below` flag of version 11, which
/// made every key a secondary had once looked up immortal at its primary. The owner of a device's
/// key is the device that escrowed or re-escrowed it last, read from the audit trail (a moved
/// device's keys name the old server's device as their origin); a secondary that pushes a key of
/// its own becomes its owner where no active client is.
struct AddKeyOwners: SchemaMigration {
    let version = 12
    let name = "add key owners"

    /// The last device that escrowed or re-escrowed the key, from the audit trail.
    static let lastEscrower = """
        UPDATE keys SET escrowed_by = COALESCE((
          SELECT substr(a.actor, 8) FROM audit a
          WHERE a.key_id = keys.id AND a.action IN ('escrow', 'reescrow') AND a.result = 'ok' AND a.actor LIKE 'device:%'
          ORDER BY a.seq DESC LIMIT 1), escrowed_by)
        WHERE provenance = 'escrow'
        """

    var sqlite: [String] { ["ALTER TABLE keys DROP COLUMN held_below", Self.lastEscrower] }

    var postgres: [String] { ["ALTER TABLE keys DROP COLUMN held_below", Self.lastEscrower] }
}

/// Version 13: the CA that issued each client's current and renewed certificate (the SHA-256 of
/// its certificate), so that `ca status` can say who still holds a certificate from the old CA
/// during a CA rotation (docs/operations.md, "CA rotation"). NULL: issued before, by the CA in use
/// before any rotation.
struct AddCertificateIssuers: SchemaMigration {
    let version = 13
    let name = "add certificate issuers"

    var sqlite: [String] {
        ["ALTER TABLE clients ADD COLUMN certificate_issuer TEXT", "ALTER TABLE clients ADD COLUMN next_certificate_issuer TEXT"]
    }

    var postgres: [String] {
        ["ALTER TABLE clients ADD COLUMN certificate_issuer TEXT", "ALTER TABLE clients ADD COLUMN next_certificate_issuer TEXT"]
    }
}
