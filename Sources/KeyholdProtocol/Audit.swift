public import Foundation
public import KeyholdCore

/// What an audit record says happened.
public enum AuditAction: String, Codable, Sendable, CaseIterable, CustomStringConvertible {
    /// The data directory was created (`keyhold-server init`).
    case initialize = "init"
    /// A device or secondary enrolled, or an enrollment naming a real token was refused.
    case enroll
    /// Enrollment requests refused without a valid token, summed up over a window (one record per
    /// reason, with counts and source addresses in its detail).
    case enrollRefusals = "enroll_refusals"
    /// A device escrowed a key.
    case escrow
    /// A device moving here re-escrowed a key it held (`keyhold reassign`).
    case reescrow
    /// A key was asked for: released, or refused with the reason.
    case release
    /// One device received the alert threshold's number of distinct keys within the window.
    case releaseAlert = "release_alert"
    /// A device asked for a key that `release_policy = approval` keeps for an administrator's
    /// decision: the request was queued (one record per request, not per retry).
    case releaseRequest = "release_request"
    /// An administrator approved a queued request.
    case releaseApprove = "release_approve"
    /// An administrator denied a queued request.
    case releaseDeny = "release_deny"
    /// An administrator was shown a key's secret (`keyhold-server key reveal`), with a reason;
    /// the key is then marked *rotation required*.
    case reveal
    /// An administrator answered a device's offline request code with the key sealed to it
    /// (`keyhold-server key respond`); the key is then marked *rotation required*.
    case offlineRelease = "offline_release"
    /// This server obtained a missing key from its primary.
    case obtain
    /// A device re-keyed a drive and retired its old key (which is then blocked: released by no
    /// server, revealed only by an administrator on purpose).
    case retire
    /// A device found that a drive's escrowed key no longer opens any keyslot it should (the
    /// drive's keyslots were changed outside Keyhold): the key is shown as `DRIFT`.
    case escrowDrift = "escrow_drift"
    /// An administrator blocked a key.
    case block
    /// An administrator unblocked a key.
    case unblock
    /// An administrator revoked an enrollment.
    case revoke
    /// An administrator rotated the CA (`keyhold-server ca rotate`): a new CA, cross-signed by the
    /// old one, which is trusted beside it until `ca retire-old`.
    case caRotate = "ca_rotate"
    /// An administrator ended a CA rotation's overlap (`keyhold-server ca retire-old`).
    case caRetire = "ca_retire"
    /// An administrator deleted a revoked or moved device (`keyhold-server device delete`): its
    /// keys are destroyed once the retention (`key_retention_days`) has passed.
    case deviceDelete = "device_delete"
    /// A key's secret was erased for good (crypto-shredding): by the retention after its device
    /// was deleted, by an administrator on purpose (`keyhold-server key destroy`), or because the
    /// server it came from or went to destroyed it. Refused while the key is still referenced.
    case keyDestroy = "key_destroy"
    /// A new administrator certificate was issued on the server machine (`keyhold-server admin recover`).
    case adminRecover = "admin_recover"
    /// An administrator issued a certificate for a new, named administrator (`keyhold-server admin add`).
    case adminAdd = "admin_add"
    /// An administrator made an enrollment token.
    case tokenCreate = "token_create"
    /// An administrator revoked an enrollment token.
    case tokenRevoke = "token_revoke"
    /// A device or secondary renewed its certificate (the new one is accepted beside the old until
    /// first presented).
    case certificateRenew = "certificate_renew"
    /// The server's TLS certificate was renewed (by the server itself as it neared its expiry, or
    /// by an administrator with `keyhold-server tls renew`).
    case tlsRenew = "tls_renew"
    /// A master-key version was prepared or made current (`keyhold-server master-key rotate`);
    /// the detail says which.
    case masterKeyRotate = "master_key_rotate"
    /// The master-key versions older than the current one were retired (`master-key retire-old`),
    /// or that was refused because keys still used them.
    case masterKeyRetire = "master_key_retire"
    /// A request of a client that is no longer active was refused.
    case request
    /// A device said it moved to another server.
    case deviceMoved = "device_moved"
    /// This server pushed a batch to its primary.
    case push
    /// This server received a batch from a secondary.
    case pushReceive = "push_receive"
    /// A pushed key whose id is derived from its secret replaced a stored key under that id
    /// whose id is not (docs/spec/key-id.md): a conflict resolved in favour of the key that
    /// proves itself.
    case keyReplaced = "key_replaced"
    /// An administrator turned "use hierarchy" on.
    case hierarchyEnable = "hierarchy_enable"
    /// An administrator turned "use hierarchy" off.
    case hierarchyDisable = "hierarchy_disable"
    /// A key went into an export file (one record per key).
    case export
    /// An export file was completed (one record per file).
    case exportFile = "export_file"
    /// A key came from an import file (one record per key).
    case `import`
    /// An import file was stored (one record per file).
    case importFile = "import_file"

    /// The wire text.
    public var description: String { rawValue }
}

/// Who did what an audit record describes. Written `device:ID`, `secondary:ID`, `admin:ID`
/// (client ids of enrollments here), `server:ID` (this server itself, by its server id) or
/// `anonymous` (a caller without a certificate, on the enrollment listener).
public enum AuditActor: Hashable, Sendable, CustomStringConvertible, LosslessStringConvertible, Codable {
    /// An enrolled device.
    case device(ClientID)
    /// An enrolled secondary server.
    case secondary(ClientID)
    /// An administrator.
    case administrator(ClientID)
    /// This server acting on its own (a push, a lookup upward, `init`).
    case server(ServerID)
    /// Nobody known yet.
    case anonymous

    /// The actor of an enrolled client.
    public init(_ role: ClientRole, _ id: ClientID) {
        switch role {
        case .device: self = .device(id)
        case .server: self = .secondary(id)
        case .admin: self = .administrator(id)
        }
    }

    /// The text form.
    public var description: String {
        switch self {
        case .device(let id): return "device:\(id)"
        case .secondary(let id): return "secondary:\(id)"
        case .administrator(let id): return "admin:\(id)"
        case .server(let id): return "server:\(id)"
        case .anonymous: return "anonymous"
        }
    }

    /// Parses the text form; nil for anything else.
    public init?(_ text: String) {
        if text == "anonymous" {
            self = .anonymous
            return
        }
        guard let colon = text.firstIndex(of: ":") else { return nil }
        let id = String(text[text.index(after: colon)...])
        switch text[..<colon] {
        case "device":
            guard let id = ClientID(id) else { return nil }
            self = .device(id)
        case "secondary":
            guard let id = ClientID(id) else { return nil }
            self = .secondary(id)
        case "admin":
            guard let id = ClientID(id) else { return nil }
            self = .administrator(id)
        case "server":
            guard let id = ServerID(id) else { return nil }
            self = .server(id)
        default: return nil
        }
    }

    /// Decodes the text form.
    public init(from decoder: any Decoder) throws { self = try TextCoding.decode(decoder, as: Self.self) }
    /// Encodes the text form.
    public func encode(to encoder: any Encoder) throws { try TextCoding.encode(self, to: encoder) }
}

/// How a request came, for an audit record. Written `agent`, `admin-api`, `enroll`, `local`, `api`,
/// `secondary:CLIENT_ID` or `primary:SERVER_ID`.
public enum AuditRoute: Hashable, Sendable, CustomStringConvertible, LosslessStringConvertible, Codable {
    /// A device over the mutual-TLS API.
    case agent
    /// An administrator over the mutual-TLS API.
    case adminAPI
    /// The enrollment listener.
    case enrollment
    /// On the server machine itself (`keyhold-server init`).
    case local
    /// The mutual-TLS API before any route applied (a refused client).
    case api
    /// A secondary of this server.
    case secondary(ClientID)
    /// This server's primary.
    case primary(ServerID)

    /// The text form.
    public var description: String {
        switch self {
        case .agent: return "agent"
        case .adminAPI: return "admin-api"
        case .enrollment: return "enroll"
        case .local: return "local"
        case .api: return "api"
        case .secondary(let id): return "secondary:\(id)"
        case .primary(let id): return "primary:\(id)"
        }
    }

    /// Parses the text form; nil for anything else.
    public init?(_ text: String) {
        switch text {
        case "agent": self = .agent
        case "admin-api": self = .adminAPI
        case "enroll": self = .enrollment
        case "local": self = .local
        case "api": self = .api
        default:
            if text.hasPrefix("secondary:"), let id = ClientID(String(text.dropFirst("secondary:".count))) {
                self = .secondary(id)
            } else if text.hasPrefix("primary:"), let id = ServerID(String(text.dropFirst("primary:".count))) {
                self = .primary(id)
            } else {
                return nil
            }
        }
    }

    /// Decodes the text form.
    public init(from decoder: any Decoder) throws { self = try TextCoding.decode(decoder, as: Self.self) }
    /// Encodes the text form.
    public func encode(to encoder: any Encoder) throws { try TextCoding.encode(self, to: encoder) }
}

/// How an audited request ended: `ok`, `already_present` (an escrow or import of a key that was
/// there), or the error code of the refusal.
public enum AuditResult: Hashable, Sendable, CustomStringConvertible, LosslessStringConvertible, Codable {
    /// Done.
    case ok
    /// Nothing to do: the same key was already stored.
    case alreadyPresent
    /// Refused with this error.
    case refused(KeyholdError.Code)

    /// The text form.
    public var description: String {
        switch self {
        case .ok: return "ok"
        case .alreadyPresent: return "already_present"
        case .refused(let code): return code.rawValue
        }
    }

    /// Parses the text form; nil for anything else.
    public init?(_ text: String) {
        switch text {
        case "ok": self = .ok
        case "already_present": self = .alreadyPresent
        default:
            guard let code = KeyholdError.Code(rawValue: text) else { return nil }
            self = .refused(code)
        }
    }

    /// Decodes the text form.
    public init(from decoder: any Decoder) throws { self = try TextCoding.decode(decoder, as: Self.self) }
    /// Encodes the text form.
    public func encode(to encoder: any Encoder) throws { try TextCoding.encode(self, to: encoder) }
}

/// One audit record. Every key release and every refusal writes one; a key leaves only after its
/// record committed.
public struct AuditEvent: Codable, Sendable, Equatable {
    /// Assigned by the repository, strictly increasing; nil before the record is stored.
    public var sequence: Int64?
    /// When it happened.
    public var time: Date
    /// Who.
    public var actor: AuditActor
    /// What.
    public var action: AuditAction
    /// Which key, where one applies.
    public var keyID: KeyID?
    /// How the request came.
    public var route: AuditRoute
    /// How it ended.
    public var result: AuditResult
    /// Free text for people; never secrets.
    public var detail: String

    /// A record to append (the repository assigns ``sequence``).
    public init(
        sequence: Int64? = nil, time: Date = Date(), actor: AuditActor, action: AuditAction, keyID: KeyID? = nil,
        route: AuditRoute, result: AuditResult, detail: String = ""
    ) {
        self.sequence = sequence
        self.time = time
        self.actor = actor
        self.action = action
        self.keyID = keyID
        self.route = route
        self.result = result
        self.detail = detail
    }

    enum CodingKeys: String, CodingKey {
        case sequence, time, actor, action
        case keyID = "key_id"
        case route, result, detail
    }
}

/// Codable through the text form, for the audit vocabulary.
enum TextCoding {
    static func decode<T: LosslessStringConvertible>(_ decoder: any Decoder, as: T.Type) throws -> T {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let value = T(text) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "not a valid \(T.self): \(text)"))
        }
        return value
    }

    static func encode<T: CustomStringConvertible>(_ value: T, to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(value.description)
    }
}
