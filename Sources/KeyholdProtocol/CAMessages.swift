public import Foundation
public import KeyholdCore

/// The CAs a server's clients should trust now (docs/operations.md, "CA rotation"), sent with
/// every heartbeat and push answer: the current CA, and during a rotation's overlap the previous
/// one and the current CA's certificate cross-signed by it. A client that trusts only the
/// previous CA adopts the current one through the cross-signature; once `previous` is absent it
/// trusts the current CA alone.
public struct CATrust: Codable, Sendable, Equatable {
    /// The CA that issues certificates now (PEM).
    public var current: String
    /// The CA it replaced, still trusted during the overlap (PEM).
    public var previous: String?
    /// The current CA's certificate signed by the previous CA (PEM).
    public var cross: String?

    /// A trust statement.
    public init(current: String, previous: String? = nil, cross: String? = nil) {
        self.current = current
        self.previous = previous
        self.cross = cross
    }
}

/// One client that still holds a certificate from the previous CA.
public struct CAHolder: Codable, Sendable, Equatable {
    /// Its id.
    public var id: ClientID
    /// What it is.
    public var role: ClientRole
    /// Its name.
    public var name: String

    /// A holder.
    public init(id: ClientID, role: ClientRole, name: String) {
        self.id = id
        self.role = role
        self.name = name
    }
}

/// `GET /v1/admin/ca`, and the answer to `ca rotate` and `ca retire-old`.
public struct CAStatus: Codable, Sendable, Equatable {
    /// SHA-256 of the current CA certificate (what new tokens carry).
    public var current: String
    /// When the current CA certificate expires.
    public var currentExpires: Date
    /// SHA-256 of the previous CA during an overlap (nil: none).
    public var previous: String?
    /// When the overlap began (`ca rotate`).
    public var rotated: Date?
    /// Active clients (devices, secondaries, administrators) whose certificate the previous CA
    /// issued, at most 100 of them.
    public var onPrevious: [CAHolder]
    /// How many there are in all.
    public var onPreviousCount: Int

    /// A status.
    public init(current: String, currentExpires: Date, previous: String?, rotated: Date?, onPrevious: [CAHolder], onPreviousCount: Int) {
        self.current = current
        self.currentExpires = currentExpires
        self.previous = previous
        self.rotated = rotated
        self.onPrevious = onPrevious
        self.onPreviousCount = onPreviousCount
    }

    enum CodingKeys: String, CodingKey {
        case current, previous, rotated
        case currentExpires = "current_expires"
        case onPrevious = "on_previous"
        case onPreviousCount = "on_previous_count"
    }
}
