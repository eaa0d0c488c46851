import Crypto
import Foundation
import KeyholdCore
import KeyholdProtocol
import KeyholdStore
import Logging
import SwiftASN1
import X509

/// The server's behaviour, independent of HTTP: one entry point per operation of the protocol
/// (docs/spec/protocol.md). Whether a caller is an active enrollment is decided in one place,
/// ``authenticate(_:)``; releases check it inside their statement and fall back to it to say why.
/// Every key release and every refusal is audited; a key leaves only after its audit record
/// committed.
struct ServerCore: Sendable {
    let serverID: ServerID
    let repository: any Repository
    let masterKey: MasterKey
    /// The CAs: the current one issues every certificate (docs/operations.md, "CA rotation").
    let authority: CertificateAuthorities
    /// The API listener's TLS, rebuilt when the CAs it trusts change (nil in process tests
    /// without listeners).
    var apiTLS: APITLS?
    let databaseDescription: String
    let hierarchy: Hierarchy
    /// What each secondary's pushes showed since this server started (`hierarchy tree`).
    let secondaries = SecondaryActivity()
    /// The addresses the listeners bound, and what tokens advertise.
    let addresses: BoundAddresses
    /// The data directory: its certificates, and where uploaded import files are spooled (never in
    /// memory, never in /tmp).
    let directory: DataDirectory
    var spoolDirectory: String { directory.path }
    /// Anonymous refusals, summed up into the audit trail per window.
    let refusals: RefusalLedger
    /// Enrollment requests per source address.
    let enrollLimiter: RateLimiter<String>
    /// Key releases per device.
    let releaseLimiter: RateLimiter<ClientID>
    /// Distinct keys released per device, for the alert.
    let releaseWatch: ReleaseWatch
    /// Which devices may receive a key.
    let releasePolicy: ReleasePolicy
    /// Seconds an approved release request stays usable (`release_policy = approval`).
    let approvalLifetime: TimeInterval
    /// How long the certificates of devices and secondaries are valid.
    var certificateLifetimes = CertificateLifetimes()
    /// How long the keys of a deleted device are kept before they are destroyed.
    var keyRetention = KeyRetention.standard
    /// The listeners' TLS certificate (nil in process tests without listeners).
    var served: ServedCertificate?
    /// Master-key rotation (nil in process tests that never rotate).
    var masterKeyRotation: MasterKeyRotation?
    let started = Date()
    let logger: Logger
    /// The Prometheus metrics (served on the metrics listener when one is configured).
    var metrics = ServerMetrics()

    // MARK: Authentication

    /// The active enrollment `peer` presents, or the reason it is refused (audited for a client
    /// that is no longer active). The one place that decides whether a caller is served.
    func authenticate(_ peer: Peer) async throws -> Caller {
        let notEnrolled = KeyholdError(
            .unauthenticated, "\(peer.role) \(peer.id) is not enrolled with this server (or presented a certificate it replaced)",
            hint: "enroll again with a new token ('keyhold enroll TOKEN')"
        )
        guard var client = try await repository.client(id: peer.id), client.role == peer.role else { throw notEnrolled }
        if client.certificateFingerprint != peer.fingerprint {
            // A renewed certificate, presented for the first time: from now on it is the current one.
            guard client.state == .active, client.nextCertificateFingerprint == peer.fingerprint else { throw notEnrolled }
            if try await !repository.adoptCertificate(id: peer.id, fingerprint: peer.fingerprint) {
                // Another request with the same certificate adopted it first, or a newer renewal replaced it.
                guard let again = try await repository.client(id: peer.id), again.certificateFingerprint == peer.fingerprint else {
                    throw notEnrolled
                }
                client = again
            } else {
                client.certificateFingerprint = peer.fingerprint
                client.certificateExpires = client.nextCertificateExpires
                client.certificateIssuer = client.nextCertificateIssuer
                client.nextCertificateFingerprint = nil
                client.nextCertificateExpires = nil
                client.nextCertificateIssuer = nil
                logger.info("a renewed certificate is now the current one", metadata: ["role": "\(peer.role)", "id": "\(peer.id)"])
            }
        }
        switch client.state {
        case .active:
            return Caller(client: client)
        case .revoked, .deleted:
            try? await repository.appendAudit(AuditEvent(actor: peer.actor, action: .request, route: .api, result: .refused(.clientRevoked)))
            throw KeyholdError(
                .clientRevoked, "\(peer.role) \(peer.id) is \(client.state) on this server",
                hint: "ask an administrator to enroll this device again")
        case .moved:
            try? await repository.appendAudit(AuditEvent(actor: peer.actor, action: .request, route: .api, result: .refused(.clientMoved)))
            throw KeyholdError(
                .clientMoved, "\(peer.role) \(peer.id) moved to another server", hint: "this device moved to another server; use that one"
            )
        }
    }

    // MARK: Enrollment

    /// The longest label a key record may carry.
    static let labelLimit = 256
    /// The longest enrollment name kept (a host name).
    static let nameLimit = 64

    /// Takes one enrollment request's place in `address`'s budget, or refuses it (`429`, counted
    /// in the refusal ledger, not audited one by one). Called before the body is read.
    func admitEnrollment(from address: String) throws {
        if let wait = enrollLimiter.take(address) {
            refusals.record(.rateLimited, from: address)
            throw RateLimited("too many enrollment requests from \(address)", wait: wait)
        }
    }

    /// Counts the refusal of an enrollment request nobody authenticated and throws `error`.
    func refuseAnonymous(_ error: KeyholdError, from address: String) throws -> Never {
        refusals.record(error.code, from: address)
        throw error
    }

    /// Redeems a token for a certificate (`POST /v1/enroll`). The request is checked whole (secret,
    /// token, name, CSR and its signature) before a use of the token is taken, so a bad request
    /// costs the token nothing. A request without a real token and its secret is anonymous: its
    /// refusal is counted in the refusal ledger. Every other refusal is audited one by one.
    func enroll(_ request: EnrollRequest, from address: String) async throws -> EnrollResponse {
        do {
            let answer = try await redeem(request, from: address)
            metrics.enrollment(result: "ok")
            return answer
        } catch let error as KeyholdError {
            metrics.enrollment(result: error.code.rawValue)
            throw error
        }
    }

    private func redeem(_ request: EnrollRequest, from address: String) async throws -> EnrollResponse {
        func refuse(_ error: KeyholdError, _ detail: String) async throws -> Never {
            try await repository.appendAudit(
                AuditEvent(
                    actor: .anonymous, action: .enroll, route: .enrollment, result: .refused(error.code),
                    detail: "token \(request.tokenID) from \(address): \(detail)")
            )
            throw error
        }
        func why(_ redemption: TokenRedemption) -> String {
            switch redemption {
            case .expired: return "expired"
            case .usedUp: return "used up"
            case .revoked: return "revoked"
            case .unknown, .redeemed: return "not known to this server"
            }
        }
        func tokenError(_ redemption: TokenRedemption) -> KeyholdError {
            KeyholdError(
                .tokenInvalid, "the enrollment token is \(why(redemption))",
                hint: "ask the administrator for a new token ('keyhold-server token create')")
        }
        guard let secret = Base64URL.decode(request.secret) else {
            try refuseAnonymous(
                KeyholdError(.tokenInvalid, "the enrollment token's secret is malformed", hint: "copy the whole token"), from: address)
        }
        let secretHash = Array(SHA256.hash(data: secret))
        // Unknown token or wrong secret: nobody is authenticated, so the refusal is only counted.
        let check = try await repository.checkToken(id: request.tokenID, secretHash: secretHash, now: Date())
        switch check {
        case .redeemed: break
        case .unknown: try refuseAnonymous(tokenError(check), from: address)
        case .expired, .usedUp, .revoked: try await refuse(tokenError(check), why(check))
        }
        let name = request.name.trimmingCharacters(in: .whitespaces)
        guard !name.isEmpty, PrintableText.isClean(name, limit: Self.nameLimit) else {
            try await refuse(
                KeyholdError(
                    .invalidRequest, "the enrollment name must be 1 to \(Self.nameLimit) printable characters (no control characters)",
                    hint: "enroll from a machine with an ordinary host name"
                ), "name refused: \(PrintableText.escaped(String(request.name.prefix(Self.nameLimit))))"
            )
        }
        let csr: CertificateSigningRequest
        do {
            csr = try CertificateAuthority.verifiedRequest(request.csrPEM)
        } catch let error as KeyholdError {
            try await refuse(error, "certificate request refused (\(error.message))")
        }
        let redemption = try await repository.redeemToken(id: request.tokenID, secretHash: secretHash, now: Date())
        guard case .redeemed(let token) = redemption else {
            // The last use went to a concurrent enrollment, or the token was revoked meanwhile.
            try await refuse(tokenError(redemption), why(redemption))
        }
        let id = ClientID.random()
        let ca = authority.current
        let certificate = try ca.issueClientCertificate(
            csr: csr, identity: CertificateIdentity(role: token.role, id: id), name: name, lifetime: certificateLifetimes.lifetime(of: token.role))
        try await repository.insertClient(
            EnrolledClient(
                id: id, role: token.role, name: name, certificateFingerprint: CertificateAuthority.fingerprint(certificate),
                certificateExpires: certificate.notValidAfter, certificateIssuer: ca.fingerprint)
        )
        try await repository.appendAudit(
            AuditEvent(actor: AuditActor(token.role, id), action: .enroll, route: .enrollment, result: .ok, detail: "name \(name), token \(token.id)")
        )
        logger.info("enrolled", metadata: ["role": "\(token.role)", "id": "\(id)", "name": "\(PrintableText.escaped(name))"])
        return EnrollResponse(clientID: id, role: token.role, certificatePEM: certificate.pem, caPEM: ca.certificate.pem, serverID: serverID)
    }

    // MARK: Keys

    /// Stores a device's key (`PUT /v1/keys/{id}`); answers after the commit. Counted by
    /// outcome, and timed (request to acknowledged commit) when newly stored.
    func escrow(_ request: EscrowRequest, keyID: KeyID, by caller: Caller) async throws -> EscrowResponse {
        let start = ContinuousClock.now
        do {
            let answer = try await storeEscrow(request, keyID: keyID, by: caller)
            metrics.escrow(outcome: answer.outcome.rawValue, duration: answer.outcome == .inserted ? ContinuousClock.now - start : nil)
            return answer
        } catch let error as KeyholdError {
            metrics.escrow(outcome: error.code.rawValue, duration: nil)
            throw error
        }
    }

    private func storeEscrow(_ request: EscrowRequest, keyID: KeyID, by caller: Caller) async throws -> EscrowResponse {
        let record = request.key.record
        guard record.label.count <= Self.labelLimit else {
            throw KeyholdError(.invalidRequest, "a key's label has at most \(Self.labelLimit) characters", hint: "shorten the label")
        }
        guard record.id == keyID else {
            throw KeyholdError(
                .invalidRequest, "the path names key \(keyID) but the record is key \(record.id)", hint: "PUT the record to its own key id")
        }
        try await checkOrigin(record, of: request, from: caller)
        var stored = try masterKey.store(record, secret: request.key.secret, provenance: .escrow)
        stored.escrowedBy = caller.client.id
        let audit =
            request.reassignedFrom.map {
                AuditEvent(
                    actor: caller.actor, action: .reescrow, keyID: keyID, route: .agent, result: .ok,
                    detail: "\(record.kind) key of a device reassigned from server \($0)"
                )
            } ?? AuditEvent(actor: caller.actor, action: .escrow, keyID: keyID, route: .agent, result: .ok, detail: "\(record.kind) key")
        switch try await repository.insertKey(stored, audit: audit) {
        case .inserted: return EscrowResponse(keyID: keyID, outcome: .inserted)
        case .alreadyPresent: return EscrowResponse(keyID: keyID, outcome: .alreadyPresent)
        case .destroyed: throw Self.destroyedError(keyID)
        case .conflict:
            logger.warning("escrow conflict: key id exists with another secret", metadata: ["key": "\(keyID)", "caller": "\(caller.actor)"])
            throw KeyholdError(
                .conflict, "key \(keyID) is already escrowed with a different secret", hint: "create a new key; an escrowed key is never replaced")
        }
    }

    /// Who escrowed a key is this server's to say, not the caller's: a new key must name this
    /// server and the calling device as its origin. A device moving here re-escrows the keys it
    /// holds with their records as it holds them (its own from the old server, and others' it
    /// fetched), which this server cannot check, but it may not claim another device of this
    /// server nor a move from this server. A refusal is audited.
    private func checkOrigin(_ record: KeyRecord, of request: EscrowRequest, from caller: Caller) async throws {
        let device = DeviceID(enrollment: caller.client.id)
        let problem: String?
        if let from = request.reassignedFrom {
            if from == serverID {
                problem = "it says it moved here from this server"
            } else if record.originServerID == serverID && record.originDeviceID != device {
                problem = "it names another device of this server (\(record.originDeviceID)) as the key's origin"
            } else {
                problem = nil
            }
        } else if record.originServerID != serverID || record.originDeviceID != device {
            problem =
                "the record names origin server \(record.originServerID) and device \(record.originDeviceID), but device \(device) of server \(serverID) escrows it"
        } else {
            problem = nil
        }
        guard let problem else { return }
        try await repository.appendAudit(
            AuditEvent(
                actor: caller.actor, action: request.reassignedFrom == nil ? .escrow : .reescrow, keyID: record.id, route: .agent,
                result: .refused(.invalidRequest), detail: "origin refused: \(problem)")
        )
        throw KeyholdError(
            .invalidRequest, "key \(record.id) is refused: \(problem)",
            hint: "a device escrows its own new keys; this server records who escrowed them"
        )
    }

    /// A device says it moved to another server (`POST /v1/leave`): it is marked `moved` (refused
    /// from now on, with a hint naming the move); its keys stay here.
    func leave(_ request: LeaveRequest, by caller: Caller) async throws {
        _ = try await repository.setClientState(id: caller.client.id, state: .moved)
        try await repository.appendAudit(
            AuditEvent(
                actor: caller.actor, action: .deviceMoved, route: .agent, result: .ok,
                detail: "to server \(request.newServerID) at \(request.newAddress)"
            ))
        logger.info("device moved to another server", metadata: ["device": "\(caller.client.id)", "to": "\(request.newServerID)"])
    }

    /// A key for a device (`GET /v1/keys/{id}`). The enrollment check rides in the release
    /// statement (one database round trip, shared with concurrent releases).
    /// A device's request for a key (`GET /v1/keys/{id}`) within its release budget: over it, the
    /// refusal is audited and answered `429` with `Retry-After`. A release that makes the device's
    /// distinct keys in the window reach the alert threshold is logged at warning and audited
    /// (`release_alert`).
    func release(_ keyID: KeyID, to peer: Peer) async throws -> KeyMaterial {
        if let wait = releaseLimiter.take(peer.id) {
            let limited = RateLimited("\(peer.role) \(peer.id) asked for more keys than its release budget allows", wait: wait)
            try await auditRefusedRelease(
                keyID, to: peer.actor, .rateLimited,
                "over the release budget (\(releaseLimiter.limit.burst) at once, \(releaseLimiter.limit.perSecond)/s)")
            throw limited
        }
        let approval = try await checkReleasePolicy(keyID, for: peer)
        let (key, _) = try await resolve(
            keyID, for: peer, route: .agent, chain: [serverID], hops: Hierarchy.hopLimit,
            detail: approval.map { "approved by admin:\($0.decidedBy?.description ?? "?") (request \($0.id))" } ?? "")
        if let approval { await consumeApproval(approval) }
        if releaseWatch.released(keyID, to: peer.id) {
            let alert = releaseWatch.alert
            let detail = "\(alert.keys) distinct keys released to this \(peer.role) within \(alert.window.components.seconds) s"
            logger.warning("release alert: one device received many distinct keys", metadata: ["client": "\(peer.id)", "detail": "\(detail)"])
            try? await repository.appendAudit(AuditEvent(actor: peer.actor, action: .releaseAlert, route: .agent, result: .ok, detail: detail))
        }
        return key
    }

    /// Refuses (audited, `403 forbidden`) a key the release policy keeps from `peer`. Under
    /// `same_server` and `origin_device` only keys held here are released to devices (no
    /// hierarchy lookup): a key from elsewhere has another origin server, and a device's own
    /// keys were escrowed, or re-escrowed by `keyhold reassign`, here. Under `approval` what
    /// `origin_device` refuses waits for an administrator instead: the approved request is
    /// returned (to be closed once the key went out), or `pending_approval` thrown. Under any
    /// policy but `any` the caller is authenticated first, so a refused device hears why.
    private func checkReleasePolicy(_ keyID: KeyID, for peer: Peer) async throws -> ApprovalRecord? {
        guard releasePolicy != .any else { return nil }
        let caller = try await authenticate(peer)
        let why: String?
        if let stored = try await repository.key(id: keyID) {
            why = releasePolicy.refusal(of: stored.record, to: peer.id, here: serverID)
        } else {
            why = releasePolicy == .approval ? "it is not held here" : "it is not held here, and only keys escrowed here are released"
        }
        guard let why else { return nil }
        if releasePolicy == .approval { return try await approvedRequest(for: keyID, by: caller, why: why) }
        try await auditRefusedRelease(keyID, to: peer.actor, .forbidden, "release_policy \(releasePolicy.rawValue): \(why)")
        throw KeyholdError(
            .forbidden, "release_policy = \(releasePolicy.rawValue) keeps key \(keyID) from this device: \(why)",
            hint: "ask an administrator: they can export the key for you, or change release_policy")
    }

    /// Records a device's heartbeat (`POST /v1/heartbeat`) and the drive checks it carries.
    func heartbeat(_ request: HeartbeatRequest, by caller: Caller) async throws -> HeartbeatResponse {
        if !request.driveChecks.isEmpty { try await recordDriveChecks(request.driveChecks, by: caller) }
        try await repository.recordHeartbeat(
            id: caller.client.id, at: Date(), agentVersion: String(request.agentVersion.prefix(32)), keyCount: max(0, request.keyCount)
        )
        var rotate = false
        if let active = request.activeFileKey { rotate = try await repository.rotationRequired([active]).contains(active) }
        return HeartbeatResponse(serverID: serverID, serverTime: Date(), rotateFileKey: rotate, ca: authority.trust)
    }

    /// `POST /v1/certificate/renew`: a new certificate for the caller's enrollment, on the key in
    /// the CSR, recorded as its next certificate (audited in the same commit). The current one
    /// keeps working until the caller first presents the new one (``authenticate(_:)``).
    func renewCertificate(_ request: CertificateRenewRequest, by caller: Caller) async throws -> CertificateRenewResponse {
        let csr = try CertificateAuthority.verifiedRequest(request.csrPEM)
        let client = caller.client
        let ca = authority.current
        let certificate = try ca.issueClientCertificate(
            csr: csr, identity: CertificateIdentity(role: client.role, id: client.id), name: client.name,
            lifetime: certificateLifetimes.lifetime(of: client.role))
        let fingerprint = CertificateAuthority.fingerprint(certificate)
        let expires = certificate.notValidAfter
        let audit = AuditEvent(
            actor: caller.actor, action: .certificateRenew, route: .api, result: .ok,
            detail: "new certificate \(fingerprint.prefix(16)), expires \(ISO8601DateFormatter().string(from: expires))")
        guard
            try await repository.offerCertificate(
                id: client.id, current: client.certificateFingerprint, next: fingerprint, expires: expires, issuer: ca.fingerprint, audit: audit)
        else {
            throw KeyholdError(
                .unauthenticated, "\(client.role) \(client.id) changed while its certificate was renewed",
                hint: "renewal is retried at the next heartbeat")
        }
        logger.info("certificate renewed", metadata: ["role": "\(client.role)", "id": "\(client.id)", "expires": "\(expires)"])
        return CertificateRenewResponse(certificatePEM: certificate.pem, expires: expires)
    }

    /// The key for `peer`: from this repository, else (option on, primary configured) from the
    /// primary, which is then kept here. Every attempt is audited before anything is released. The
    /// peer's enrollment is checked inside the release statement; when that check refuses,
    /// ``authenticate(_:)`` says why (and audits it). Also returns how many servers up the key was
    /// found: 0 when it is held here.
    func resolve(
        _ keyID: KeyID, for peer: Peer, route: AuditRoute, chain: [ServerID], hops: Int, detail: String = ""
    ) async throws -> (KeyMaterial, hops: Int) {
        do {
            return try await resolve(keyID, for: peer, check: true, route: route, chain: chain, hops: hops, detail: detail)
        } catch is ReleaseCallerRefused {
            // Throws the precise refusal; if the enrollment became valid in between, ask again.
            _ = try await authenticate(peer)
            return try await resolve(keyID, for: peer, check: false, route: route, chain: chain, hops: hops, detail: detail)
        }
    }

    private func resolve(
        _ keyID: KeyID, for peer: Peer, check: Bool, route: AuditRoute, chain: [ServerID], hops: Int, detail: String
    ) async throws -> (KeyMaterial, hops: Int) {
        // A key held here: one statement reads it and commits its release record. A key missing
        // here writes nothing yet: it is asked of the primary (when the option is on), then stored
        // and released in one commit, or its miss or the primary's refusal is audited. So each
        // server on a lookup's route commits once.
        var request = ReleaseRequest(keyID: keyID, actor: peer.actor, route: route, detail: detail)
        request.auditIfMissing = false
        request.caller = check ? peer.releaseCheck : nil
        if let key = try await audited({ try await repository.releaseKey(request) }) {
            try refuseIfBlocked(key)
            return (KeyMaterial(record: key.record, secret: try masterKey.unwrap(key.wrappedSecret, keyID: keyID)), 0)
        }
        let found: Hierarchy.Answer?
        do {
            found = try await hierarchy.ask(keyID, chain: chain, hops: hops)
            if let found { metrics.lookup(result: "found", hops: found.hops) }
        } catch let error as KeyholdError {
            metrics.lookup(result: error.code.rawValue, hops: nil)
            try await audited {
                try await repository.appendAudit(
                    AuditEvent(
                        time: request.time, actor: peer.actor, action: .release, keyID: keyID, route: route,
                        result: .refused(error.code), detail: "not here; the primary answered: \(error.message)"
                    ))
            }
            throw error
        }
        guard let found else {
            // No primary to ask (option off or none joined): the miss is audited here.
            try await audited { try await repository.appendAudit(request.auditEvent(for: nil)) }
            throw KeyholdError(
                .notFound, "key \(keyID) is not known to this server or its primaries",
                hint: try await hierarchy.enabled()
                    ? "the key may not have reached the top yet (pushes happen at each heartbeat); try again later, or import it"
                    : "the key was escrowed elsewhere: enable the hierarchy ('keyhold-server hierarchy enable') or import it"
            )
        }
        guard found.key.record.id == keyID else {
            throw KeyholdError(
                .internalError, "the primary answered key \(found.key.record.id) for key \(keyID)", hint: "check that the servers' versions match")
        }
        let stored = try masterKey.store(found.key.record, secret: found.key.secret, provenance: .hierarchy)
        let obtained = AuditEvent(
            actor: .server(serverID), action: .obtain, keyID: keyID, route: .primary(found.primary), result: .ok, detail: "through the hierarchy"
        )
        var release = request
        release.detail = detail.isEmpty ? "obtained through the hierarchy" : "\(detail); obtained through the hierarchy"
        let (outcome, released) = try await audited { try await repository.insertAndRelease(stored, obtained: obtained, release: release) }
        if outcome == .conflict {
            throw KeyholdError(
                .conflict, "key \(keyID) from the primary conflicts with this server's copy",
                hint: "an administrator must investigate: two secrets exist for one key id")
        }
        guard let released else {
            throw KeyholdError(.internalError, "key \(keyID) was stored but not released", hint: "report this bug")
        }
        try refuseIfBlocked(released)
        // The secret came from the primary: answer with it rather than unwrap what was just wrapped.
        return (KeyMaterial(record: released.record, secret: found.key.secret), found.hops)
    }

    /// The answer about a destroyed key, everywhere: a release, a lookup, an escrow of its id.
    static func destroyedError(_ keyID: KeyID) -> KeyholdError {
        KeyholdError(
            .keyDestroyed, "key \(keyID) was destroyed: its secret is gone for good",
            hint: "data encrypted under it cannot be opened through Keyhold; 'keyhold-server audit' shows when and why it was destroyed")
    }

    private func refuseIfBlocked(_ key: StoredKey) throws {
        if key.destroyed != nil { throw Self.destroyedError(key.record.id) }
        if key.blocked || key.record.state == .revoked {
            throw KeyholdError(
                .keyBlocked, "key \(key.record.id) is blocked and is not released", hint: "ask an administrator ('keyhold-server key unblock')")
        }
    }

    /// Audits the refusal of a device's request for `keyID` (fail-closed: `audit_failed` if the
    /// record cannot be written).
    func auditRefusedRelease(_ keyID: KeyID, to actor: AuditActor, _ code: KeyholdError.Code, _ detail: String) async throws {
        try await audited {
            try await repository.appendAudit(
                AuditEvent(actor: actor, action: .release, keyID: keyID, route: .agent, result: .refused(code), detail: detail))
        }
    }

    /// Runs a release or its audit record; a failure to write the record becomes `audit_failed`.
    @discardableResult
    func audited<T>(_ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch let refused as ReleaseCallerRefused {
            throw refused  // nothing was written: the caller's enrollment did not check out
        } catch {
            metrics.auditWriteFailure()
            logger.error("audit write failed; key not released", metadata: ["error": "\(error)"])
            throw KeyholdError(
                .auditFailed, "the audit record could not be written, so the key was not released",
                hint: "the server's database needs attention; try again later")
        }
    }

    // MARK: Hierarchy (secondaries calling this server)

    /// Refuses a secondary's request while the option is off here (audited).
    private func requireHierarchy(_ actor: AuditActor, _ route: AuditRoute, action: AuditAction, audit: Bool = true) async throws {
        guard try await hierarchy.enabled() else {
            if audit {
                try? await repository.appendAudit(AuditEvent(actor: actor, action: action, route: route, result: .refused(.hierarchyDisabled)))
            }
            throw KeyholdError(
                .hierarchyDisabled,
                "server \(serverID) refuses hierarchy requests (hierarchy_disabled: its 'use hierarchy to obtain encryption keys' option is off)",
                hint: "on server \(serverID) an administrator can run 'keyhold-server hierarchy enable'; until then move keys by export/import"
            )
        }
    }

    /// Why a hierarchy request (`what`: "the lookup for key …") that arrived along `chain` with
    /// `hops` left must go no further: it came back to this server (a loop), or it ran out of
    /// hops. Nil when it may go on.
    private func routeRefusal(_ what: String, chain: [ServerID], hops: Int) -> KeyholdError? {
        if chain.contains(serverID) {
            return KeyholdError(
                .hierarchyLoop, "\(what) came back to server \(serverID): the configured hierarchy has a loop",
                hint: "fix the primaries so that they form a tree ('keyhold-server primary leave' on one server of the loop)")
        }
        if hops <= 0 {
            return KeyholdError(
                .hierarchyTooDeep, "\(what) passed \(Hierarchy.hopLimit) servers", hint: "the hierarchy is deeper than Keyhold allows; flatten it")
        }
        return nil
    }

    /// Stores a batch a secondary pushed (`POST /v1/hierarchy/push`); answers after the commit.
    /// The push is noted for `hierarchy tree`; with a report, as the secondary's last contact.
    func receivePush(_ request: PushRequest, by caller: Caller) async throws -> PushResponse {
        let id = caller.client.id
        do {
            let response = try await storePush(request, by: caller)
            let now = Date()
            await secondaries.received(from: id, keys: request.keys.count, report: request.report, at: now)
            if let report = request.report {
                // Bookkeeping only: the batch is committed, so its answer must not turn into an error.
                do {
                    try await repository.recordHeartbeat(
                        id: id, at: now, agentVersion: String(report.version.prefix(64)), keyCount: max(0, report.keyCount))
                } catch {
                    logger.warning("cannot record a secondary's push as its last contact", metadata: ["secondary": "\(id)", "error": "\(error)"])
                }
            }
            return response
        } catch let error as KeyholdError {
            await secondaries.refused(id, code: error.code, at: Date())
            throw error
        }
    }

    private func storePush(_ request: PushRequest, by caller: Caller) async throws -> PushResponse {
        let route = AuditRoute.secondary(caller.client.id)
        // An empty push is a heartbeat's poll for state changes: refused, it carries nothing worth
        // a durable record (it would be one per secondary and heartbeat).
        try await requireHierarchy(caller.actor, route, action: .pushReceive, audit: !request.keys.isEmpty)
        guard request.keys.count + request.destroyed.count <= Hierarchy.batchSize else {
            throw KeyholdError(.invalidRequest, "a push carries at most \(Hierarchy.batchSize) keys", hint: "send smaller batches")
        }
        // The state changes are read after the batch committed, so a block the batch carried up
        // is in them (and the secondary that sent it finds its own state again: a no-op).
        let changes = { (after: Int64?) async throws -> [KeyStateChange] in
            guard let after else { return [] }
            return try await self.repository.stateChanges(after: after, limit: PushResponse.changeLimit)
        }
        if !request.destroyed.isEmpty { try await destroyPushed(request.destroyed, by: caller) }
        // An empty push only asks for the changes: nothing is stored, nothing is audited.
        guard !request.keys.isEmpty else {
            return PushResponse(
                accepted: 0, alreadyPresent: 0, conflicts: [], changes: try await changes(request.changesAfter), ca: authority.trust)
        }
        let batch = try request.keys.map { pushed in
            var stored = try masterKey.store(pushed.key.record, secret: pushed.key.secret, provenance: .pushed, blocked: pushed.blocked)
            if pushed.own { stored.escrowedBy = caller.client.id }  // held here for the secondary
            return stored
        }
        let outcomes = try await repository.insertKeys(batch, audit: AuditEvent(actor: caller.actor, action: .pushReceive, route: route, result: .ok))
        var conflicts: [KeyID] = []
        var replaced = 0
        for (i, outcome) in outcomes.enumerated() where outcome == .conflict {
            if try await resolveConflict(request.keys[i].key, stored: batch[i], by: caller) {
                replaced += 1
            } else {
                conflicts.append(batch[i].record.id)
            }
        }
        if !conflicts.isEmpty {
            logger.warning("pushed keys conflict with stored ones", metadata: ["count": "\(conflicts.count)", "from": "\(caller.actor)"])
        }
        return PushResponse(
            // A key destroyed here is acknowledged as present: its final state is here.
            accepted: outcomes.filter { $0 == .inserted }.count + replaced,
            alreadyPresent: outcomes.filter { $0 == .alreadyPresent || $0 == .destroyed }.count,
            conflicts: conflicts,
            changes: try await changes(request.changesAfter), ca: authority.trust
        )
    }

    /// Keys a secondary destroyed: this server destroys its copies too (crypto-shredding up the
    /// hierarchy) — only keys it holds for that secondary (pushed as its own), and not while an
    /// active device's drive here uses them.
    private func destroyPushed(_ notices: [DestroyedKeyNotice], by caller: Caller) async throws {
        _ = try await destroyFromElsewhere(
            notices.map(\.record.id), rule: .ownedBy(caller.client.id), actor: caller.actor, route: .secondary(caller.client.id),
            detail: "destroyed by the secondary that pushed it")
    }

    /// Destroys `ids` as another server asked (a secondary's push, the primary's change feed)
    /// under `rule`; the keys the rule spares are audited as refused. The ids destroyed.
    func destroyFromElsewhere(
        _ ids: [KeyID], rule: DestructionRule, actor: AuditActor, route: AuditRoute, detail: String
    ) async throws -> [KeyID] {
        let requests = ids.map {
            KeyDestruction(
                keyID: $0, audit: AuditEvent(actor: actor, action: .keyDestroy, keyID: $0, route: route, result: .ok, detail: detail), rule: rule)
        }
        let outcomes = try await repository.destroyKeys(requests, at: Date())
        let spared = zip(requests, outcomes).filter { $0.1 == .spared }.map(\.0)
        if !spared.isEmpty {
            let why =
                if case .ownedBy = rule { "kept: it is not held here for that secondary, or a device's drive here uses it" } else {
                    "kept: it is held here for an active client, or a device's drive here uses it"
                }
            try await repository.appendAudit(
                spared.map {
                    var e = $0.audit
                    e.result = .refused(.forbidden)
                    e.detail += "; \(why)"
                    return e
                })
            logger.notice("kept keys another server destroyed: devices here still use them", metadata: ["keys": "\(spared.count)"])
        }
        let destroyed = zip(ids, outcomes).filter { $0.1 == .destroyed }.map(\.0)
        if !destroyed.isEmpty { logger.notice("destroyed keys another server destroyed", metadata: ["keys": "\(destroyed.count)"]) }
        return destroyed
    }

    /// A pushed key that conflicts with the stored one wins when its id is derived from its secret
    /// and the stored one's is not (docs/spec/key-id.md): nobody can choose a second secret for a
    /// derived id, so the stored one was escrowed by someone who only read the id. Replaced in
    /// one transaction with a `key_replaced` audit record; true when replaced.
    private func resolveConflict(_ incoming: KeyMaterial, stored replacement: StoredKey, by caller: Caller) async throws -> Bool {
        guard incoming.idIsDerived, let current = try await repository.key(id: incoming.record.id) else { return false }
        let currentSecret = try masterKey.unwrap(current.wrappedSecret, keyID: current.record.id)
        guard !KeyMaterial(record: current.record, secret: currentSecret).idIsDerived else { return false }
        let detail =
            "the stored secret (origin server \(current.record.originServerID), device \(current.record.originDeviceID)) does not match the id; replaced by the pushed one, whose id is derived from it (origin server \(incoming.record.originServerID), device \(incoming.record.originDeviceID))"
        let done = try await repository.replaceKey(
            replacement, replacing: current.secretFingerprint,
            audit: AuditEvent(
                actor: caller.actor, action: .keyReplaced, keyID: incoming.record.id, route: .secondary(caller.client.id), result: .ok, detail: detail
            ))
        if done { logger.warning("a conflicting key was replaced by one whose id proves it", metadata: ["key": "\(incoming.record.id)"]) }
        return done
    }

    /// A secondary's lookup (`GET /v1/hierarchy/keys/{id}`): the same rule as a device's release,
    /// one hop further up; refused when the option is off here, on a loop or past the hop limit.
    /// A refusal authenticates the secondary first, so a revoked one hears that it is revoked.
    /// Also returns how many servers above the asking one the key was held (1: here), which the
    /// answer carries in its `Keyhold-Hops` header.
    func lookup(_ keyID: KeyID, chain: [ServerID], hops: Int, for peer: Peer) async throws -> (KeyMaterial, hops: Int) {
        let route = AuditRoute.secondary(peer.id)
        let refusal = routeRefusal("the lookup for key \(keyID)", chain: chain, hops: hops)
        if try await !hierarchy.enabled() || refusal != nil {
            let caller = try await authenticate(peer)
            try await requireHierarchy(caller.actor, route, action: .release)
            if let refusal { throw refusal }
        }
        let (key, above) = try await resolve(keyID, for: peer, route: route, chain: chain + [serverID], hops: hops - 1)
        return (key, above + 1)
    }

    // MARK: Administration

    /// `GET /v1/admin/status`.
    func status() async throws -> StatusResponse {
        let clients = try await repository.listClients(role: nil)
        let now = Date()
        let expiring = expiringClients(clients, now: now)
        return StatusResponse(
            serverID: serverID, version: KeyholdVersion.current, database: databaseDescription, keyCount: try await repository.keyCount(),
            devices: clients.filter { $0.role == .device && $0.state == .active }.count,
            secondaries: clients.filter { $0.role == .server && $0.state == .active }.count, started: started,
            hierarchy: try await hierarchy.status(), escrowDrift: try await repository.driftedEscrowChecks(limit: 100).map(\.keyID),
            certificates: await ownCertificates(administrators: clients, now: now), expiringClients: Array(expiring.prefix(100)),
            expiringClientCount: expiring.count, masterKey: try await masterKeyRotation?.status(), ca: caStatus(clients)
        )
    }

    private var rotation: MasterKeyRotation {
        get throws {
            guard let masterKeyRotation else {
                throw KeyholdError(
                    .configuration, "this server process does not rotate its master key", hint: "run the server with its data directory")
            }
            return masterKeyRotation
        }
    }

    /// `GET /v1/admin/master-key`.
    func masterKeyStatus() async throws -> MasterKeyStatus { try await rotation.status() }

    /// `POST /v1/admin/master-key/rotate`.
    func rotateMasterKey(_ request: MasterKeyRotateRequest, by caller: Caller) async throws -> MasterKeyStatus {
        try await rotation.rotate(prepare: request.prepare, actor: caller.actor)
    }

    /// `POST /v1/admin/master-key/retire-old`.
    func retireOldMasterKeys(by caller: Caller) async throws -> MasterKeyStatus { try await rotation.retireOld(actor: caller.actor) }

    /// `POST /v1/admin/tls/renew`: a new TLS certificate now (a new key, the same names), served
    /// from the next connection on; audited `tls_renew`.
    func renewTLS(by caller: Caller) async throws -> TLSRenewResponse {
        guard let served else {
            throw KeyholdError(.configuration, "this server has no TLS listener to renew a certificate for", hint: "run it with its listeners")
        }
        let next = try served.renew(authorities: authority, serverID: serverID, lifetime: certificateLifetimes.tls)
        try await repository.appendAudit(ServedCertificate.renewalAudit(next, actor: caller.actor, route: .adminAPI))
        logger.notice("TLS certificate renewed", metadata: ["expires": "\(next.notValidAfter)", "by": "\(caller.actor)"])
        return TLSRenewResponse(expires: next.notValidAfter, fingerprint: CertificateAuthority.fingerprint(next))
    }

    /// How long before its expiry `status` warns about a certificate.
    static let expiryWarning: TimeInterval = 30 * 86_400

    /// This server's certificates — its CA, its TLS certificate, its certificate at its primary —
    /// and those of the active administrators among `administrators`.
    func ownCertificates(administrators: [EnrolledClient], now: Date = Date()) async -> [CertificateExpiry] {
        func entry(_ kind: String, _ expires: Date, holder: String? = nil, window: TimeInterval = Self.expiryWarning) -> CertificateExpiry {
            CertificateExpiry(kind: kind, holder: holder, expires: expires, soon: expires.timeIntervalSince(now) < window)
        }
        var out = [entry("ca", authority.current.certificate.notValidAfter)]
        if let tls = served?.certificate
            ?? (try? String(contentsOfFile: directory.tlsCertificate, encoding: .utf8)).flatMap({ try? ServedCertificate.leaf($0) })
        {
            // Like a client's: it renews with a third left, so warn only once that was missed.
            out.append(entry("tls", tls.notValidAfter, window: min(Self.expiryWarning, tls.notValidAfter.timeIntervalSince(tls.notValidBefore) / 4)))
        }
        if let primary = await hierarchy.primaryCertificate() {
            out.append(entry("primary", primary.expires, window: min(Self.expiryWarning, primary.lifetime / 4)))
        }
        for admin in administrators where admin.role == .admin && admin.state == .active {
            if let expires = admin.certificateExpires { out.append(entry("administrator", expires, holder: "\(admin.name) (\(admin.id))")) }
        }
        return out
    }

    /// The active devices and secondaries among `clients` whose certificates expire within 30
    /// days — or within a quarter of their lifetime, when that is shorter: they renew with a
    /// third left, so one still unrenewed then has missed its heartbeats — soonest first.
    func expiringClients(_ clients: [EnrolledClient], now: Date) -> [CertificateExpiry] {
        clients.compactMap { client -> CertificateExpiry? in
            guard client.role != .admin, client.state == .active, let expires = client.certificateExpires else { return nil }
            let window = min(Self.expiryWarning, certificateLifetimes.lifetime(of: client.role) / 4)
            guard expires.timeIntervalSince(now) < window else { return nil }
            return CertificateExpiry(
                kind: client.role == .device ? "device" : "secondary", holder: "\(client.name) (\(client.id))", expires: expires, soon: true)
        }.sorted { $0.expires < $1.expires }
    }

    /// How many enrollments a token may allow.
    static let tokenUses = 1...10_000
    /// How long a token may live, in seconds (30 days at most).
    static let tokenLifetime = 1...(30 * 86_400)

    /// `POST /v1/admin/tokens`: a new enrollment token carrying the advertised addresses.
    func createToken(_ request: TokenCreateRequest, by caller: Caller) async throws -> TokenCreateResponse {
        guard request.role != .admin else {
            throw KeyholdError(.invalidRequest, "a token's role is device or server, not admin", hint: "use --role device or --role server")
        }
        guard Self.tokenUses.contains(request.uses) else {
            throw KeyholdError(
                .invalidRequest, "a token allows \(Self.tokenUses.lowerBound) to \(Self.tokenUses.upperBound) enrollments, not \(request.uses)",
                hint: "for a large fleet make several tokens, for example --uses 1000"
            )
        }
        guard Self.tokenLifetime.contains(request.ttlSeconds) else {
            throw KeyholdError(
                .invalidRequest, "a token lives 1 second to \(Self.tokenLifetime.upperBound / 86_400) days, not \(request.ttlSeconds) seconds",
                hint: "for example --ttl 24h; make a new token when it runs out"
            )
        }
        let secret = SecureRandom.bytes(count: 32)
        let record = EnrollmentTokenRecord(
            id: .random(), secretHash: Array(SHA256.hash(data: secret)), role: request.role, usesLeft: request.uses,
            expires: Date().addingTimeInterval(TimeInterval(request.ttlSeconds))
        )
        try await repository.insertToken(record)
        try await repository.appendAudit(
            AuditEvent(
                actor: caller.actor, action: .tokenCreate, route: .adminAPI, result: .ok,
                detail: "token \(record.id) role \(request.role) uses \(request.uses)"
            ))
        let (api, enroll) = await addresses.advertised()
        let token = EnrollmentToken(
            apiAddress: api, enrollAddress: enroll, caFingerprint: authority.current.fingerprint, id: record.id, secret: Base64URL.encode(secret))
        return TokenCreateResponse(token: token.text, id: record.id, expires: record.expires)
    }

    /// `GET /v1/admin/tokens`: every token, newest first, without secrets.
    func tokens() async throws -> [TokenInfo] {
        let now = Date()
        return try await repository.listTokens().sorted { ($0.created, $0.id.description) > ($1.created, $1.id.description) }.map { t in
            let state: TokenInfo.State =
                t.revoked ? .revoked : t.expires <= now ? .expired : t.usesLeft <= 0 ? .usedUp : .active
            return TokenInfo(id: t.id, role: t.role, usesLeft: t.usesLeft, created: t.created, expires: t.expires, state: state)
        }
    }

    /// `POST /v1/admin/tokens/{id}/revoke`: the token's remaining uses are refused from now on
    /// (a leaked multi-use token need not wait for its expiry). Audited; revoking a revoked
    /// token again changes nothing and is not an error.
    func revokeToken(_ id: TokenID, by caller: Caller) async throws {
        guard try await repository.revokeToken(id: id) else {
            throw KeyholdError(.notFound, "no enrollment token has the id \(id)", hint: "see 'keyhold-server token list'")
        }
        try await repository.appendAudit(
            AuditEvent(actor: caller.actor, action: .tokenRevoke, route: .adminAPI, result: .ok, detail: "token \(id)"))
        logger.notice("enrollment token revoked", metadata: ["token": "\(id)", "by": "\(caller.actor)"])
    }

    /// `POST /v1/admin/keys/{id}/block` and `…/unblock`.
    func block(_ keyID: KeyID, blocked: Bool, by caller: Caller) async throws {
        if try await repository.key(id: keyID)?.destroyed != nil { throw Self.destroyedError(keyID) }
        let found = try await repository.setBlocked(
            id: keyID, blocked: blocked,
            audit: AuditEvent(actor: caller.actor, action: blocked ? .block : .unblock, keyID: keyID, route: .adminAPI, result: .ok)
        )
        guard found else {
            throw KeyholdError(.notFound, "key \(keyID) is not known to this server", hint: "list keys with 'keyhold-server key list'")
        }
    }

    /// `POST /v1/admin/clients/{id}/revoke`: a device or secondary is refused from its next
    /// request on. Administrators are not devices: they are revoked with ``revokeAdministrator(_:by:)``.
    func revoke(_ id: ClientID, by caller: Caller) async throws {
        guard let client = try await repository.client(id: id), client.role != .admin else {
            if try await repository.client(id: id) != nil {
                throw KeyholdError(
                    .forbidden, "\(id) is an administrator, not a device or secondary",
                    hint: "revoke administrators with 'keyhold-server admin revoke \(id)'"
                )
            }
            throw KeyholdError(.notFound, "no device or secondary \(id) is enrolled here", hint: "list them with 'keyhold-server device list'")
        }
        guard client.state != .deleted else {
            throw KeyholdError(
                .forbidden, "\(client.role) \(id) is deleted; it stays refused and its keys are destroyed after the retention",
                hint: "nothing to revoke; enroll the device again with a new token if it should be served")
        }
        _ = try await repository.setClientState(id: id, state: .revoked)
        try await repository.appendAudit(
            AuditEvent(actor: caller.actor, action: .revoke, route: .adminAPI, result: .ok, detail: "\(client.role) \(id)"))
    }

    /// `POST /v1/admin/clients/{id}/delete`: a revoked or moved device or secondary is deleted
    /// (audited `device_delete`); the keys it escrowed here are destroyed once the retention has
    /// passed (``KeyRetentionService``). An active one must be revoked first; deleting a deleted
    /// one again changes nothing.
    func deleteClient(_ id: ClientID, by caller: Caller) async throws -> ClientDeleteResponse {
        guard let client = try await repository.client(id: id), client.role != .admin else {
            throw KeyholdError(.notFound, "no device or secondary \(id) is enrolled here", hint: "list them with 'keyhold-server device list'")
        }
        var deleted = client.deleted ?? Date()
        switch client.state {
        case .active:
            throw KeyholdError(
                .forbidden, "\(client.role) \(id) is active; only a revoked or moved one can be deleted",
                hint: "revoke it first ('keyhold-server device revoke \(id)'), then delete it")
        case .deleted:
            break
        case .revoked, .moved:
            deleted = Date()
            let due = deleted.addingTimeInterval(keyRetention.seconds)
            let audit = AuditEvent(
                actor: caller.actor, action: .deviceDelete, route: .adminAPI, result: .ok,
                detail: "\(client.role) \(id) (\(client.state)); its keys are destroyed after \(ISO8601DateFormatter().string(from: due))")
            guard try await repository.deleteClient(id: id, at: deleted, audit: audit) else {
                throw KeyholdError(
                    .conflict, "\(client.role) \(id) changed while it was deleted", hint: "look at it again with 'keyhold-server device list'")
            }
            logger.notice("client deleted", metadata: ["id": "\(id)", "by": "\(caller.actor)"])
        }
        return ClientDeleteResponse(
            id: id, deleted: deleted, keysDestroyedAfter: deleted.addingTimeInterval(keyRetention.seconds),
            keys: try await repository.liveKeyCount(escrowedBy: id))
    }

    /// `POST /v1/admin/keys/{id}/destroy`: the key's secret is erased now, whoever still uses it
    /// (an administrator's decision, with a reason; audited `key_destroy`). The destruction then
    /// travels up and down the hierarchy, where servers spare the keys their own devices use.
    func destroyKey(_ keyID: KeyID, _ request: KeyDestroyRequest, by caller: Caller) async throws -> KeyDestroyResponse {
        let reason = request.reason.trimmingCharacters(in: .whitespaces)
        try Self.checkReason(reason, for: "a destruction")
        let now = Date()
        let audit = AuditEvent(actor: caller.actor, action: .keyDestroy, keyID: keyID, route: .adminAPI, result: .ok, detail: "reason: \(reason)")
        switch try await repository.destroyKeys([KeyDestruction(keyID: keyID, audit: audit, rule: .always)], at: now).first {
        case .destroyed:
            logger.notice("key destroyed", metadata: ["key": "\(keyID)", "by": "\(caller.actor)"])
            return KeyDestroyResponse(keyID: keyID, destroyed: now, newlyDestroyed: true)
        case .alreadyDestroyed:
            let when = try await repository.key(id: keyID)?.destroyed ?? now
            return KeyDestroyResponse(keyID: keyID, destroyed: when, newlyDestroyed: false)
        case .notFound, .spared, nil:
            throw KeyholdError(.notFound, "key \(keyID) is not known to this server", hint: "list keys with 'keyhold-server key list'")
        }
    }

    /// `POST /v1/admin/administrators/{id}/revoke`: refused for the last active administrator,
    /// so that nobody locks every administrator out (the local `admin recover` is the way back).
    func revokeAdministrator(_ id: ClientID, by caller: Caller) async throws {
        let admins = try await repository.listClients(role: .admin)
        guard let target = admins.first(where: { $0.id == id }) else {
            throw KeyholdError(.notFound, "no administrator \(id) is enrolled here", hint: "list them with 'keyhold-server admin list'")
        }
        guard target.state == .active else { return }
        guard admins.contains(where: { $0.id != id && $0.state == .active }) else {
            throw KeyholdError(
                .forbidden, "\(id) is the last active administrator; revoking it would leave nobody to administer this server",
                hint: "make another administrator first, or keep this one"
            )
        }
        _ = try await repository.setClientState(id: id, state: .revoked)
        try await repository.appendAudit(
            AuditEvent(actor: caller.actor, action: .revoke, route: .adminAPI, result: .ok, detail: "administrator \(id)"))
    }

    /// `POST /v1/admin/administrators`: a certificate for a new administrator named `name`,
    /// signed from the caller's request (the key pair never leaves the caller), recorded as
    /// active and audited (`admin_add`) with the administrator who made it.
    func addAdministrator(_ request: AdministratorCreateRequest, by caller: Caller) async throws -> AdministratorCreateResponse {
        let name = request.name
        guard !name.isEmpty, PrintableText.isClean(name, limit: Self.nameLimit) else {
            throw KeyholdError(
                .invalidRequest, "an administrator's name must be 1 to \(Self.nameLimit) printable characters",
                hint: "use the person's name or login, for example 'alice'")
        }
        if try await repository.listClients(role: .admin).contains(where: { $0.state == .active && $0.name == name }) {
            throw KeyholdError(
                .conflict, "an active administrator is already named '\(name)'",
                hint: "choose another name, or revoke the old one first ('keyhold-server admin revoke ID')")
        }
        let csr = try CertificateAuthority.verifiedRequest(request.csrPEM)
        let id = ClientID.random()
        let ca = authority.current
        let certificate = try ca.issueClientCertificate(csr: csr, identity: CertificateIdentity(role: .admin, id: id), name: name)
        try await repository.insertClient(
            EnrolledClient(
                id: id, role: .admin, name: name, certificateFingerprint: CertificateAuthority.fingerprint(certificate),
                certificateExpires: certificate.notValidAfter, certificateIssuer: ca.fingerprint))
        try await repository.appendAudit(
            AuditEvent(actor: caller.actor, action: .adminAdd, route: .adminAPI, result: .ok, detail: "administrator \(id) '\(name)'"))
        logger.notice("administrator added", metadata: ["id": "\(id)", "by": "\(caller.actor)"])
        return AdministratorCreateResponse(id: id, certificatePEM: certificate.pem, caPEM: ca.certificate.pem)
    }

    /// `GET /v1/admin/clients`: devices and secondaries (not administrators), with the escrow
    /// checks of the drives each device unlocked.
    func clients() async throws -> [ClientInfo] {
        let clients = try await repository.listClients(role: nil).filter { $0.role != .admin }
        let checks = Dictionary(grouping: try await repository.escrowChecks(clients: clients.map(\.id)), by: \.clientID)
        return clients.map { client in
            var info = Self.info(client)
            let own = checks[client.id] ?? []
            info.escrowVerified = own.filter(\.opens).map(\.checked).max()
            info.escrowDrift = own.filter { !$0.opens }.map(\.keyID).sorted()
            return info
        }
    }

    // MARK: Explain

    /// This server's part of an explanation for `keyID`: its option, whether and how it holds the
    /// key, whether its primary acknowledged it, and its last lookup of it.
    func explainHop(_ keyID: KeyID) async throws -> ExplainHop {
        let status = try await hierarchy.status()
        var hop = ExplainHop(serverID: serverID, held: false)
        hop.useHierarchy = status.useHierarchy
        hop.primaryServerID = status.primaryServerID
        if status.primaryServerID != nil { hop.primaryRefuses = status.primaryRefuses }
        if let key = try await repository.key(id: keyID) {
            hop.held = true
            hop.state = key.destroyed == nil ? "\(key.record.state)" : "destroyed"
            hop.blocked = key.blocked
            hop.destroyed = key.destroyed
            hop.provenance = key.provenance.rawValue
            hop.stored = key.stored
            if status.primaryServerID != nil { hop.acknowledgedByPrimary = key.sequence <= status.pushCursor }
        }
        if let last = await hierarchy.lastLookup(keyID) {
            hop.lastLookup = last.answer
            hop.lastLookupAt = last.at
        }
        return hop
    }

    /// `GET /v1/hierarchy/explain/{id}`: this server's hop and those above it, for a secondary's
    /// `explain`; refused like a lookup (option off here, a loop, too many hops).
    func explainForSecondary(_ keyID: KeyID, chain: [ServerID], hops: Int, by caller: Caller) async throws -> [ExplainHop] {
        try await requireHierarchy(caller.actor, .secondary(caller.client.id), action: .release, audit: false)
        if let refusal = routeRefusal("the explanation for key \(keyID)", chain: chain, hops: hops) { throw refusal }
        // What this server last looked up for its own devices is none of a secondary's business.
        var own = try await explainHop(keyID)
        own.lastLookup = nil
        own.lastLookupAt = nil
        return [own] + (await hierarchy.explainAbove(keyID, chain: chain + [serverID], hops: hops - 1))
    }

    /// `GET /v1/admin/explain/{id}`: the hops from here to the top for `keyID`, what the release
    /// policy says of `device`, and the conclusion. Changes nothing and audits nothing: no
    /// secret is read.
    func explain(_ keyID: KeyID, device: ClientID?) async throws -> KeyExplanation {
        let hops = [try await explainHop(keyID)] + (await hierarchy.explainAbove(keyID, chain: [serverID], hops: Hierarchy.hopLimit))
        var view: ExplainDevice?
        if let device {
            let client = try await repository.client(id: device)
            var refusal: String?
            if let held = try await repository.key(id: keyID) {
                refusal = releasePolicy.refusal(of: held.record, to: device, here: serverID)
            } else if releasePolicy != .any {
                refusal =
                    releasePolicy == .approval
                    ? "it is not held here (a request waits for approval)" : "it is not held here, and only keys escrowed here are released"
            }
            view = ExplainDevice(
                id: device, enrolled: client != nil && client?.role == .device, state: client?.state, name: client?.name,
                releasePolicy: releasePolicy.rawValue, policyRefusal: refusal)
        }
        return KeyExplanation(keyID: keyID, hops: hops, device: view, verdict: Self.verdict(keyID, hops, view))
    }

    /// The one sentence an explanation comes to. A request is answered by the first server on
    /// the way up that holds the key, on its own copy's state: a block or destruction further up
    /// is named too, as on its way down (it arrives with the next push's state changes).
    static func verdict(_ keyID: KeyID, _ hops: [ExplainHop], _ device: ExplainDevice?) -> String {
        if let device {
            if !device.enrolled { return "device \(device.id) is not a device enrolled here: it gets no key from this server" }
            if device.state != .active {
                return "device \(device.id) is \(device.state.map { "\($0)" } ?? "not active"): it gets no key from this server"
            }
        }
        // The hops that answered, up to the first that holds the key or did not answer.
        guard let index = hops.firstIndex(where: { $0.held || $0.refusal != nil }) else {
            if hops.first?.useHierarchy == false {
                return
                    "key \(keyID) is not held here, and this server's 'use hierarchy' option is off: it asks no primary (enable it, or import the key)"
            }
            if hops.first?.primaryServerID == nil { return "key \(keyID) is not held here, and this server has no primary to ask: import it" }
            if let last = hops.last, last.useHierarchy == false, hops.count > 1 {
                return "key \(keyID) is not held up to server \(last.serverID), whose 'use hierarchy' option is off: it asks no primary above it"
            }
            return
                "key \(keyID) is not held here or at any primary up to the top: it has not been pushed up yet (pushes happen at each heartbeat) or was escrowed in another tree"
        }
        let holder = hops[index]
        let location = index == 0 ? "here" : "at server \(holder.serverID), \(index) server(s) up"
        if let refusal = holder.refusal { return "the lookup stops at server \(holder.serverID), \(index) server(s) up: \(refusal)" }
        let above = hops[(index + 1)...]
        let coming =
            if let b = above.first(where: { $0.destroyed != nil }) {
                "; it was destroyed at server \(b.serverID) above, which reaches this copy with a later push's state changes unless a device's drive keeps it"
            } else if let b = above.first(where: { $0.blocked == true }) {
                "; it is blocked at server \(b.serverID) above, which reaches this copy with the next push's state changes"
            } else { "" }
        let first = "the first server holding it"
        if holder.destroyed != nil { return "key \(keyID) was destroyed \(location), \(first): nobody gets it there any more" }
        if holder.blocked == true { return "key \(keyID) is blocked \(location), \(first): it is never released there or below it" }
        if holder.state == "revoked" { return "key \(keyID) is revoked \(location), \(first): it is never released" }
        if let refusal = device?.policyRefusal {
            return "release_policy = \(device?.releasePolicy ?? "?") keeps key \(keyID) from device \(device?.id.description ?? "?"): \(refusal)"
        }
        if index == 0 { return "key \(keyID) is held here: it is released to an active device that asks\(coming)" }
        return "key \(keyID) is held \(location): a device's request here is answered through the hierarchy\(coming)"
    }

    /// `GET /v1/admin/hierarchy/tree`: this server's option and push upward, and each secondary
    /// with its last push (recorded), its last report, the keys it pushed and its last refusal
    /// (since this server started).
    func hierarchyTree() async throws -> HierarchyTree {
        let upward = try await hierarchy.status()
        var nodes: [SecondaryNode] = []
        for c in try await repository.listClients(role: .server) {
            var node = SecondaryNode(
                id: c.id, name: c.name, state: c.state, lastPush: c.lastSeen, version: c.agentVersion, keyCount: c.reportedKeyCount)
            if let seen = await secondaries.entry(c.id) {
                node.pending = seen.report?.pending
                node.lagSeconds = seen.report?.lagSeconds
                node.keysReceived = seen.keysReceived
                node.lastKeys = seen.lastKeys
                node.lastRefusal = seen.lastRefusal
                node.lastRefusalAt = seen.lastRefusalAt
            }
            nodes.append(node)
        }
        nodes.sort { ($0.state == .active ? 0 : 1, $0.name, $0.id.description) < ($1.state == .active ? 0 : 1, $1.name, $1.id.description) }
        return HierarchyTree(
            serverID: serverID, upward: upward, lagSeconds: try await hierarchy.lag(pending: upward.pending, after: upward.pushCursor),
            secondaries: nodes)
    }

    /// `GET /v1/admin/administrators`.
    func administrators() async throws -> [ClientInfo] {
        try await repository.listClients(role: .admin).map(Self.info)
    }

    private static func info(_ c: EnrolledClient) -> ClientInfo {
        ClientInfo(
            id: c.id, role: c.role, name: c.name, state: c.state, enrolled: c.enrolled, lastSeen: c.lastSeen, agentVersion: c.agentVersion,
            keyCount: c.reportedKeyCount, certificateExpires: c.certificateExpires, deleted: c.deleted
        )
    }

    /// `GET /v1/admin/keys`: one page of key metadata in id order.
    func keys(after: KeyID?, limit: Int) async throws -> KeyListResponse {
        let page = try await repository.listKeys(after: after, limit: limit)
        let rotation = try await repository.rotationRequired(page.map(\.record.id))
        let checks = Dictionary(
            try await repository.escrowChecks(keys: page.map(\.record.id)).map { ($0.keyID, $0) }, uniquingKeysWith: { a, _ in a })
        return KeyListResponse(
            keys: page.map {
                KeyInfo(
                    record: $0.record, provenance: $0.provenance, stored: $0.stored, blocked: $0.blocked,
                    rotationRequired: rotation.contains($0.record.id),
                    check: checks[$0.record.id].map { EscrowCheck(deviceID: $0.clientID, checked: $0.checked, opens: $0.opens) },
                    destroyed: $0.destroyed)
            },
            next: page.count == limit ? page.last?.record.id : nil
        )
    }

    /// `GET /v1/admin/audit`: records after `after`, oldest first.
    func audit(after: Int64, limit: Int) async throws -> [AuditEvent] {
        try await repository.audit(after: after, limit: limit)
    }

    /// `POST /v1/admin/hierarchy`: sets the option (audited).
    func setHierarchy(_ request: HierarchyOptionRequest, by caller: Caller) async throws -> HierarchyStatus {
        try await hierarchy.setEnabled(request.enabled)
        try await repository.appendAudit(
            AuditEvent(
                actor: caller.actor, action: request.enabled ? .hierarchyEnable : .hierarchyDisable, route: .adminAPI, result: .ok
            ))
        return try await hierarchy.status()
    }
}
