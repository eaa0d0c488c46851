public import KeyholdCore

/// Turning database text back into typed values, for every driver: a malformed value is a
/// ``RepositoryError`` that names it, never a crash.
public enum StoredValue {
    public static func identifier<Kind>(_ text: String) throws -> Identifier<Kind> {
        guard let id = Identifier<Kind>(text) else { throw RepositoryError("malformed \(Kind.displayName) in the database: \(text)") }
        return id
    }

    public static func enumeration<E: RawRepresentable>(_ text: String) throws -> E where E.RawValue == String {
        guard let v = E(rawValue: text) else { throw RepositoryError("unexpected value in the database: \(text)") }
        return v
    }
}
