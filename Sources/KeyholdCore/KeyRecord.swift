public import Foundation

/// What a key is used for.
public enum KeyKind: String, Codable, Sendable, CaseIterable {
    /// Encrypts files (the Keyhold file format).
    case file
    /// Unlocks a LUKS2 removable drive.
    case drive
}

/// Whether a key may be released.
public enum KeyState: String, Codable, Sendable, CaseIterable {
    /// The key is in use and may be released to authorised callers.
    case active
    /// The key was revoked: it is kept, but never released.
    case revoked
}

/// Everything about a key except its secret. Safe to log, list and send in metadata responses.
public struct KeyRecord: Hashable, Sendable, Codable {
    /// The key's id.
    public var id: KeyID
    /// What the key is for.
    public var kind: KeyKind
    /// The administration server that escrowed the key first.
    public var originServerID: ServerID
    /// The device that created the key.
    public var originDeviceID: DeviceID
    /// When the key was created, in whole seconds (the precision every form of the record keeps).
    public var created: Date
    /// A human hint: the drive's model and serial, or a file key's purpose.
    public var label: String
    /// Whether the key may be released.
    public var state: KeyState

    /// A record; `created` is kept in whole seconds.
    public init(
        id: KeyID = .random(),
        kind: KeyKind,
        originServerID: ServerID,
        originDeviceID: DeviceID,
        created: Date = Date(),
        label: String = "",
        state: KeyState = .active
    ) {
        self.id = id
        self.kind = kind
        self.originServerID = originServerID
        self.originDeviceID = originDeviceID
        self.created = Date(timeIntervalSince1970: created.timeIntervalSince1970.rounded(.down))
        self.label = label
        self.state = state
    }

    enum CodingKeys: String, CodingKey {
        case id, kind, label, state, created
        case originServerID = "origin_server_id"
        case originDeviceID = "origin_device_id"
    }
}
