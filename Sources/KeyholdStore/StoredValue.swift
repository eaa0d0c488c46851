public import KeyholdCore
public import KeyholdProtocol

/// Turning database text back into typed values, for every driver: a malformed value is a
/// ``RepositoryError`` that names it, never a crash.
public enum StoredValue {
    /// The identifier in `text`.
    public static func identifier<Kind>(_ text: String) throws -> Identifier<Kind> {
        guard let id = Identifier<Kind>(text) else { throw RepositoryError("malformed \(Kind.displayName) in the database: \(text)") }
        return id
    }

    /// The enumeration value in `text`.
    public static func enumeration<E: RawRepresentable>(_ text: String) throws -> E where E.RawValue == String {
        guard let v = E(rawValue: text) else { throw RepositoryError("unexpected value in the database: \(text)") }
        return v
    }

    /// A value of the audit vocabulary (actor, route, result) in `text`.
    public static func text<T: LosslessStringConvertible>(_ text: String) throws -> T {
        guard let v = T(text) else { throw RepositoryError("unexpected \(T.self) in the database: \(text)") }
        return v
    }
}

/// The audit records of a received batch, the same in every driver.
public enum BatchAudit {
    /// One record for the batch: `base` with the counts in its detail.
    public static func summary(_ base: AuditEvent, _ outcomes: [KeyInsertOutcome]) -> AuditEvent {
        var e = base
        let inserted = outcomes.filter { $0 == .inserted }.count
        let present = outcomes.filter { $0 == .alreadyPresent }.count
        let conflicts = outcomes.filter { $0 == .conflict }.count
        let destroyed = outcomes.filter { $0 == .destroyed }.count
        e.detail =
            "\(outcomes.count) keys: \(inserted) inserted, \(present) already present, \(conflicts) conflicts"
            + (destroyed > 0 ? ", \(destroyed) destroyed here" : "") + (base.detail.isEmpty ? "" : "; \(base.detail)")
        return e
    }

    /// One record per conflicting key.
    public static func conflict(_ base: AuditEvent, _ id: KeyID) -> AuditEvent {
        var e = base
        e.keyID = id
        e.result = .refused(.conflict)
        e.detail = "key id known here with another secret; not stored"
        return e
    }
}
