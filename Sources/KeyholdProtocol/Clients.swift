/// What an enrolled client of a server is. The role is written into the client's certificate
/// (`keyhold:ROLE:ID`), so the server knows it before it reads a request.
public enum ClientRole: String, Codable, Sendable, CaseIterable, CustomStringConvertible {
    /// A managed device running the agent.
    case device
    /// A secondary administration server.
    case server
    /// An administrator.
    case admin

    /// The wire text.
    public var description: String { rawValue }
}

/// The state of an enrollment.
public enum EnrollmentState: String, Codable, Sendable, CaseIterable, CustomStringConvertible {
    /// Served.
    case active
    /// Refused on every request from now on.
    case revoked
    /// The device moved to another server (`keyhold reassign`); its keys stay here.
    case moved
    /// An administrator deleted the (revoked or moved) enrollment: refused like a revoked one; its
    /// keys are destroyed once the retention has passed.
    case deleted

    /// The wire text.
    public var description: String { rawValue }
}

/// How a key reached a server's repository.
public enum KeyProvenance: String, Codable, Sendable, CaseIterable, CustomStringConvertible {
    /// A device of this server escrowed it.
    case escrow
    /// A secondary pushed it up the hierarchy.
    case pushed
    /// This server obtained it from its primary on a lookup.
    case hierarchy
    /// An administrator imported it from an export file.
    case imported

    /// The wire text.
    public var description: String { rawValue }
}

/// What an escrow did, as the server acknowledges it.
public enum EscrowOutcome: String, Codable, Sendable, CaseIterable, CustomStringConvertible {
    /// The key is new and now durably stored.
    case inserted
    /// The same id with the same secret was already stored: nothing changed.
    case alreadyPresent = "already_present"

    /// The wire text.
    public var description: String { rawValue }
}
