import Crypto
import Foundation
import KeyholdCore
import KeyholdProtocol
import KeyholdStore
import Logging
import SwiftASN1
import X509

/// An authenticated caller of the mutual-TLS API.
struct Caller: Sendable {
    var client: EnrolledClient
    var actor: String { "\(client.role.rawValue):\(client.id)" }
}

/// The server's behaviour, independent of HTTP: enrollment, escrow, release, heartbeats and the
/// administrator's operations. Every key release and every refusal is audited; a key leaves only
/// after its audit record committed.
struct ServerCore: Sendable {
    let serverID: ServerID
    let repository: any Repository
    let masterKey: MasterKey
    let authority: CertificateAuthority
    let databaseDescription: String
    let hierarchy: Hierarchy
    /// Where uploaded import files are spooled (the data directory): never in memory, never in /tmp.
    let spoolDirectory: String
    let started = Date()
    let logger: Logger

    // MARK: Authentication

    /// Maps a verified peer certificate to an enrolled, active client.
    func authenticate(_ peer: PeerIdentity?) async throws -> Caller {
        guard let peer, let identity = peer.identity else {
            throw KeyholdError(.unauthenticated, "the client certificate names no Keyhold identity", hint: "use the certificate this server issued at enrollment")
        }
        guard let client = try await repository.client(id: identity.id), client.role.rawValue == identity.role,
              client.certificateFingerprint == peer.fingerprint
        else {
            throw KeyholdError(.unauthenticated, "\(identity.role) \(identity.id) is not enrolled with this server", hint: "enroll again with a new token ('keyhold enroll TOKEN')")
        }
        guard client.state == .active else {
            try? await repository.appendAudit(AuditEvent(actor: "\(identity.role):\(identity.id)", action: "request", route: "api", result: "client_\(client.state.rawValue)"))
            throw KeyholdError(
                .clientRevoked, "\(identity.role) \(identity.id) is \(client.state.rawValue) on this server",
                hint: client.state == .moved ? "this device moved to another server; use that one" : "ask an administrator to enroll this device again"
            )
        }
        return Caller(client: client)
    }

    func require(_ caller: Caller, _ roles: ClientRole...) throws {
        guard roles.contains(caller.client.role) else {
            throw KeyholdError(.forbidden, "a \(caller.client.role.rawValue) certificate may not use this endpoint", hint: "use a \(roles.map(\.rawValue).joined(separator: " or ")) certificate")
        }
    }

    // MARK: Enrollment

    func enroll(_ request: EnrollRequest) async throws -> EnrollResponse {
        guard let secret = Base64URL.decode(request.secret) else {
            throw KeyholdError(.tokenInvalid, "the enrollment token's secret is malformed", hint: "copy the whole token")
        }
        let redemption = try await repository.redeemToken(id: request.tokenID, secretHash: Array(SHA256.hash(data: secret)), now: Date())
        let token: EnrollmentTokenRecord
        switch redemption {
        case .redeemed(let t): token = t
        case .unknown, .expired, .usedUp, .revoked:
            let why: String
            switch redemption {
            case .expired: why = "expired"
            case .usedUp: why = "used up"
            case .revoked: why = "revoked"
            default: why = "not known to this server"
            }
            try await repository.appendAudit(AuditEvent(actor: "anonymous", action: "enroll", route: "enroll", result: "token_invalid", detail: "token \(request.tokenID) \(why)"))
            throw KeyholdError(.tokenInvalid, "the enrollment token is \(why)", hint: "ask the administrator for a new token ('keyhold-server token create')")
        }
        let csr: CertificateSigningRequest
        do {
            csr = try CertificateSigningRequest(pemEncoded: request.csrPEM)
        } catch {
            throw KeyholdError(.invalidRequest, "the certificate signing request is not valid PEM", hint: "send a PEM-encoded PKCS#10 request")
        }
        let id = DeviceID.random()
        let name = String(request.name.prefix(64))
        let certificate = try authority.issueClientCertificate(csr: csr, identity: CertificateIdentity(role: token.role.rawValue, id: id), name: name)
        try await repository.insertClient(EnrolledClient(
            id: id, role: token.role, name: name, certificateFingerprint: CertificateAuthority.fingerprint(certificate)
        ))
        try await repository.appendAudit(AuditEvent(actor: "\(token.role.rawValue):\(id)", action: "enroll", route: "enroll", result: "ok", detail: "name \(name), token \(token.id)"))
        logger.info("enrolled", metadata: ["role": "\(token.role.rawValue)", "id": "\(id)", "name": "\(name)"])
        return EnrollResponse(clientID: id, role: token.role.rawValue, certificatePEM: certificate.pem, caPEM: authority.certificate.pem, serverID: serverID)
    }

    // MARK: Keys

    func escrow(_ request: EscrowRequest, keyID: KeyID, caller: Caller) async throws -> EscrowResponse {
        try require(caller, .device)
        guard request.record.id == keyID else {
            throw KeyholdError(.invalidRequest, "the path names key \(keyID) but the record is key \(request.record.id)", hint: "PUT the record to its own key id")
        }
        guard var secretBytes = Data(base64Encoded: request.secret) else {
            throw KeyholdError(.invalidRequest, "the secret is not base64", hint: "send the 32 key bytes in standard base64")
        }
        defer { secretBytes.withUnsafeMutableBytes { SecretKey.wipe($0) } }
        let secret = try SecretKey(bytes: secretBytes)
        let stored = try masterKey.store(request.record, secret: secret, provenance: .escrow)
        let audit = request.reassignedFrom.map {
            AuditEvent(actor: caller.actor, action: "reescrow", keyID: keyID, route: "agent", result: "ok", detail: "\(request.record.kind.rawValue) key of a device reassigned from server \($0)")
        } ?? AuditEvent(actor: caller.actor, action: "escrow", keyID: keyID, route: "agent", result: "ok", detail: "\(request.record.kind.rawValue) key")
        let outcome = try await repository.insertKey(stored, audit: audit)
        if outcome == .conflict {
            logger.warning("escrow conflict: key id exists with another secret", metadata: ["key": "\(keyID)", "caller": "\(caller.actor)"])
            throw KeyholdError(.conflict, "key \(keyID) is already escrowed with a different secret", hint: "create a new key; an escrowed key is never replaced")
        }
        return EscrowResponse(keyID: keyID, outcome: outcome.rawValue)
    }

    /// A device says it moved to another server: it is marked `moved` (refused from now on, like a
    /// revoked one, with a hint naming the move); its keys stay here.
    func leave(_ request: LeaveRequest, caller: Caller) async throws {
        try require(caller, .device)
        _ = try await repository.setClientState(id: caller.client.id, state: .moved)
        try await repository.appendAudit(AuditEvent(
            actor: caller.actor, action: "device_moved", route: "agent", result: "ok",
            detail: "to server \(request.newServerID) at \(request.newAddress)"
        ))
        logger.info("device moved to another server", metadata: ["device": "\(caller.client.id)", "to": "\(request.newServerID)"])
    }

    func release(_ keyID: KeyID, caller: Caller) async throws -> KeyResponse {
        try require(caller, .device)
        return try await resolve(keyID, actor: caller.actor, route: "agent", chain: [serverID], hops: Hierarchy.hopLimit)
    }

    /// A device's key request straight from its connection's certificate: the enrollment check
    /// rides in the release statement (one database round trip, shared with concurrent releases).
    /// Anything that check refuses, and any certificate that is not a device's, takes the full
    /// ``authenticate(_:)`` path, which says why and audits it.
    func release(_ keyID: KeyID, peer: PeerIdentity?) async throws -> KeyResponse {
        if let peer, let identity = peer.identity, identity.role == ClientRole.device.rawValue {
            let check = ReleaseCaller(id: identity.id, role: .device, certificateFingerprint: peer.fingerprint)
            do {
                return try await resolve(keyID, actor: "\(identity.role):\(identity.id)", route: "agent", chain: [serverID], hops: Hierarchy.hopLimit, check: check)
            } catch is ReleaseCallerRefused {}
        }
        return try await release(keyID, caller: try await authenticate(peer))
    }

    /// The key for a caller: from this repository, else (option on, primary configured) from the
    /// primary, which is then kept here. Every attempt is audited before anything is released.
    /// With `check`, the repository verifies the caller's enrollment first and throws
    /// ``ReleaseCallerRefused`` (having written nothing) if it does not hold.
    func resolve(_ keyID: KeyID, actor: String, route: String, chain: [ServerID], hops: Int, check: ReleaseCaller? = nil) async throws -> KeyResponse {
        // A key held here: one statement reads it and commits its release record. A key missing
        // here writes nothing yet: it is asked of the primary (when the option is on), then stored
        // and released in one commit, or its miss or the primary's refusal is audited. So each
        // server on a lookup's route commits once (a depth-3 lookup: three commits, was seven).
        var request = ReleaseRequest(keyID: keyID, actor: actor, route: route)
        request.auditIfMissing = false
        request.caller = check
        var key = try await audited { try await repository.releaseKey(request) }
        if key == nil {
            let found: KeyResponse?
            do {
                found = try await hierarchy.ask(keyID, chain: chain, hops: hops)
            } catch let error as KeyholdError {
                try await audited {
                    try await repository.appendAudit(AuditEvent(
                        time: request.time, actor: actor, action: "release", keyID: keyID, route: route,
                        result: error.code.rawValue, detail: "not here; the primary answered: \(error.message)"
                    ))
                }
                throw error
            }
            if let found {
                guard found.record.id == keyID, var bytes = Data(base64Encoded: found.secret) else {
                    throw KeyholdError(.internalError, "the primary's answer for key \(keyID) is malformed", hint: "check that the servers' versions match")
                }
                defer { bytes.withUnsafeMutableBytes { SecretKey.wipe($0) } }
                let stored = try masterKey.store(found.record, secret: try SecretKey(bytes: bytes), provenance: .hierarchy)
                let obtained = AuditEvent(actor: "server:\(serverID)", action: "obtain", keyID: keyID, route: "primary", result: "ok", detail: "through the hierarchy")
                var release = request
                release.detail = "obtained through the hierarchy"
                let (outcome, released) = try await audited { try await repository.insertAndRelease(stored, obtained: obtained, release: release) }
                if outcome == .conflict {
                    throw KeyholdError(.conflict, "key \(keyID) from the primary conflicts with this server's copy", hint: "an administrator must investigate: two secrets exist for one key id")
                }
                key = released
            } else {
                // No primary to ask (option off or none joined): the miss is audited here.
                try await audited { try await repository.appendAudit(request.auditEvent(for: nil)) }
            }
        }
        guard let key else {
            throw KeyholdError(
                .notFound, "key \(keyID) is not known to this server or its primaries",
                hint: try await hierarchy.enabled()
                    ? "the key may not have reached the top yet (pushes happen at each heartbeat); try again later, or import it"
                    : "the key was escrowed elsewhere: enable the hierarchy ('keyhold-server hierarchy enable') or import it"
            )
        }
        if key.blocked || key.record.state == .revoked {
            throw KeyholdError(.keyBlocked, "key \(keyID) is blocked and is not released", hint: "ask an administrator ('keyhold-server key unblock')")
        }
        let secret = try masterKey.unwrap(key.wrappedSecret, keyID: keyID)
        return KeyResponse(record: key.record, secret: secret.withUnsafeBytes { Data($0).base64EncodedString() })
    }

    /// Runs a release or its audit record; a failure to write the record becomes `audit_failed`.
    @discardableResult
    private func audited<T>(_ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch let refused as ReleaseCallerRefused {
            throw refused  // nothing was written: the caller's enrollment did not check out
        } catch {
            logger.error("audit write failed; key not released", metadata: ["error": "\(error)"])
            throw KeyholdError(.auditFailed, "the audit record could not be written, so the key was not released", hint: "the server's database needs attention; try again later")
        }
    }

    // MARK: Hierarchy (secondaries calling this server)

    func requireHierarchy(_ caller: Caller, action: String) async throws {
        try require(caller, .server)
        guard try await hierarchy.enabled() else {
            try? await repository.appendAudit(AuditEvent(actor: caller.actor, action: action, route: "secondary:\(caller.client.id)", result: "hierarchy_disabled"))
            throw KeyholdError(
                .hierarchyDisabled, "server \(serverID) refuses hierarchy requests (hierarchy_disabled: its 'use hierarchy to obtain encryption keys' option is off)",
                hint: "on server \(serverID) an administrator can run 'keyhold-server hierarchy enable'; until then move keys by export/import"
            )
        }
    }

    func receivePush(_ request: PushRequest, caller: Caller) async throws -> PushResponse {
        try await requireHierarchy(caller, action: "push_receive")
        guard request.keys.count <= 10_000 else { throw KeyholdError(.invalidRequest, "a push carries at most 10000 keys", hint: "send smaller batches") }
        let batch = try request.keys.map { pushed -> StoredKey in
            guard var bytes = Data(base64Encoded: pushed.secret) else {
                throw KeyholdError(.invalidRequest, "key \(pushed.record.id) has a malformed secret", hint: "send 32 bytes in base64")
            }
            defer { bytes.withUnsafeMutableBytes { SecretKey.wipe($0) } }
            let secret = try SecretKey(bytes: bytes)
            return try masterKey.store(pushed.record, secret: secret, provenance: .pushed, blocked: pushed.blocked)
        }
        let outcomes = try await repository.insertKeys(
            batch, audit: AuditEvent(actor: caller.actor, action: "push_receive", route: "secondary:\(caller.client.id)", result: "ok")
        )
        let conflicts = zip(batch, outcomes).filter { $0.1 == .conflict }.map { $0.0.record.id }
        if !conflicts.isEmpty { logger.warning("pushed keys conflict with stored ones", metadata: ["count": "\(conflicts.count)", "from": "\(caller.actor)"]) }
        return PushResponse(accepted: outcomes.filter { $0 == .inserted }.count, alreadyPresent: outcomes.filter { $0 == .alreadyPresent }.count, conflicts: conflicts)
    }

    /// A secondary's lookup straight from its connection's certificate: when the option is on and
    /// the request is well-formed, the enrollment check rides in the release statement (as for
    /// devices); everything else, and a failed check, takes ``lookup(_:chain:hops:caller:)``,
    /// which authenticates first and says why.
    func lookup(_ keyID: KeyID, chain: [ServerID], hops: Int, peer: PeerIdentity?) async throws -> KeyResponse {
        if let peer, let identity = peer.identity, identity.role == ClientRole.server.rawValue,
           !chain.contains(serverID), hops > 0, try await hierarchy.enabled() {
            let check = ReleaseCaller(id: identity.id, role: .server, certificateFingerprint: peer.fingerprint)
            do {
                return try await resolve(keyID, actor: "\(identity.role):\(identity.id)", route: "secondary:\(identity.id)", chain: chain + [serverID], hops: hops - 1, check: check)
            } catch is ReleaseCallerRefused {}
        }
        return try await lookup(keyID, chain: chain, hops: hops, caller: try await authenticate(peer))
    }

    func lookup(_ keyID: KeyID, chain: [ServerID], hops: Int, caller: Caller) async throws -> KeyResponse {
        try await requireHierarchy(caller, action: "release")
        guard !chain.contains(serverID) else {
            throw KeyholdError(.hierarchyLoop, "the lookup for key \(keyID) came back to server \(serverID): the configured hierarchy has a loop", hint: "fix the primaries so that they form a tree ('keyhold-server primary leave' on one server of the loop)")
        }
        guard hops > 0 else {
            throw KeyholdError(.hierarchyTooDeep, "the lookup for key \(keyID) passed \(Hierarchy.hopLimit) servers", hint: "the hierarchy is deeper than Keyhold allows; flatten it")
        }
        return try await resolve(keyID, actor: caller.actor, route: "secondary:\(caller.client.id)", chain: chain + [serverID], hops: hops - 1)
    }

    func heartbeat(_ request: HeartbeatRequest, caller: Caller) async throws -> HeartbeatResponse {
        try await repository.recordHeartbeat(id: caller.client.id, at: Date(), agentVersion: String(request.agentVersion.prefix(32)), keyCount: max(0, request.keyCount))
        return HeartbeatResponse(serverID: serverID, serverTime: Date())
    }

    // MARK: Administration

    func status() async throws -> StatusResponse {
        let clients = try await repository.listClients(role: nil)
        return StatusResponse(
            serverID: serverID, version: KeyholdVersion.current, database: databaseDescription, keyCount: try await repository.keyCount(),
            devices: clients.filter { $0.role == .device && $0.state == .active }.count,
            secondaries: clients.filter { $0.role == .server && $0.state == .active }.count, started: started,
            hierarchy: try await hierarchy.status()
        )
    }

    func createToken(_ request: TokenCreateRequest, caller: Caller, api: String, enroll: String) async throws -> TokenCreateResponse {
        guard let role = ClientRole(rawValue: request.role), role != .admin else {
            throw KeyholdError(.invalidRequest, "a token's role is device or server, not '\(request.role)'", hint: "use --role device or --role server")
        }
        guard request.uses >= 1, request.ttlSeconds >= 1 else {
            throw KeyholdError(.invalidRequest, "uses and ttl must be positive", hint: "for example --uses 1 --ttl 24h")
        }
        let secret = SecureRandom.bytes(count: 32)
        let record = EnrollmentTokenRecord(
            id: .random(), secretHash: Array(SHA256.hash(data: secret)), role: role, usesLeft: request.uses,
            expires: Date().addingTimeInterval(TimeInterval(request.ttlSeconds))
        )
        try await repository.insertToken(record)
        try await repository.appendAudit(AuditEvent(actor: caller.actor, action: "token_create", route: "admin-api", result: "ok", detail: "token \(record.id) role \(role.rawValue) uses \(request.uses)"))
        let token = EnrollmentToken(apiAddress: api, enrollAddress: enroll, caFingerprint: authority.fingerprint, id: record.id, secret: Base64URL.encode(secret))
        return TokenCreateResponse(token: token.text, id: record.id, expires: record.expires)
    }

    func block(_ keyID: KeyID, blocked: Bool, caller: Caller) async throws {
        let found = try await repository.setBlocked(
            id: keyID, blocked: blocked,
            audit: AuditEvent(actor: caller.actor, action: blocked ? "block" : "unblock", keyID: keyID, route: "admin-api", result: "ok")
        )
        guard found else { throw KeyholdError(.notFound, "key \(keyID) is not known to this server", hint: "list keys with 'keyhold-server key list'") }
    }

    func revoke(_ id: DeviceID, caller: Caller) async throws {
        guard try await repository.setClientState(id: id, state: .revoked) else {
            throw KeyholdError(.notFound, "no device or secondary \(id) is enrolled here", hint: "list them with 'keyhold-server device list'")
        }
        try await repository.appendAudit(AuditEvent(actor: caller.actor, action: "revoke", route: "admin-api", result: "ok", detail: "client \(id)"))
    }

    func clients() async throws -> [ClientInfo] {
        try await repository.listClients(role: nil).filter { $0.role != .admin }.map {
            ClientInfo(id: $0.id, role: $0.role.rawValue, name: $0.name, state: $0.state.rawValue, enrolled: $0.enrolled, lastSeen: $0.lastSeen, agentVersion: $0.agentVersion, keyCount: $0.reportedKeyCount)
        }
    }

    func keys(after: KeyID?, limit: Int) async throws -> KeyListResponse {
        let page = try await repository.listKeys(after: after, limit: limit)
        return KeyListResponse(
            keys: page.map { KeyInfo(record: $0.record, provenance: $0.provenance.rawValue, stored: $0.stored, blocked: $0.blocked) },
            next: page.count == limit ? page.last?.record.id : nil
        )
    }

    func audit(after: Int64, limit: Int) async throws -> [AuditEntry] {
        try await repository.audit(after: after, limit: limit).map {
            AuditEntry(sequence: $0.sequence ?? 0, time: $0.time, actor: $0.actor, action: $0.action, keyID: $0.keyID, route: $0.route, result: $0.result, detail: $0.detail)
        }
    }
}
