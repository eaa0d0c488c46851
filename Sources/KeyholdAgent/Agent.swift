import Foundation
import KeyholdClient
import KeyholdCore
import KeyholdProtocol
import Logging

/// The agent's state and behaviour. One actor, so the identity and the cache change one step at a time.
actor Agent {
    private let state: StateDirectory
    private var identity: EnrolledIdentity?
    private var client: APIClient?
    private var cache: KeyCache
    private var creatingFileKey: Task<KeyMaterial, any Error>?
    private var lastHeartbeat: Date?
    private var lastHeartbeatError: String?
    /// Set when the server said this device is revoked or moved: heartbeats stop until the device
    /// enrolls or is reassigned, instead of adding a refusal to the server's audit every period.
    private var heartbeatStopped: String?
    /// The escrow checks of drives unlocked since the last heartbeat, the newest per key, sent
    /// (and then forgotten) with the next successful heartbeat.
    private var driveChecks: [KeyID: DriveCheck] = [:]
    /// Heartbeats that failed in a row (the service backs off by it).
    private(set) var heartbeatFailures = 0
    private let logger: Logger
    private let serverTimeout: Duration
    private let metrics = AgentMetrics()
    /// Where the metrics go at each heartbeat (node-exporter's textfile collector), if anywhere.
    private let metricsTextfile: String?

    init(state: StateDirectory, logger: Logger, serverTimeout: Duration = .seconds(15), metricsTextfile: String? = nil) throws {
        try state.prepare()
        self.state = state
        self.metricsTextfile = metricsTextfile
        self.logger = logger
        self.serverTimeout = serverTimeout
        self.cache = try KeyCache(state: state)
        self.identity = try state.loadIdentity()
        if let identity { client = try identity.client(timeout: serverTimeout) }
    }

    // MARK: Requests

    /// Answers one request of the local socket (its caller was already admitted).
    func handle(_ request: AgentRequest) async throws -> AgentResponse {
        switch request {
        case .status: return .status(status())
        case .enroll(let token, let name): return .status(try await enroll(tokenText: token, name: name))
        case .reassign(let token, let dryRun): return .reassign(try await reassign(tokenText: token, dryRun: dryRun))
        case .fileKey: return .key(try await fileKey())
        case .rotateFileKey(let old): return .key(try await fileKey(replacing: old))
        case .driveKey(let label): return .key(try await driveKey(label: label))
        case .key(let id): return .key(try await key(id))
        case .offlineRequest(let id, let kind): return .offlineRequest(try offlineRequest(id, kind: kind))
        case .offlineKey(let code, let keyID): return .key(try offlineKey(code, for: keyID))
        case .retireKey(let id, let replacedBy):
            try await retire(id, replacedBy: replacedBy)
            return .status(status())
        case .keyStatus(let id): return .keyStatus(try await keyStatus(id))
        case .driveCheck(let id, let opens):
            noteDriveCheck(DriveCheck(keyID: id, opens: opens, checked: Date()))
            return .status(status())
        }
    }

    /// Keeps a drive's escrow check for the next heartbeat (at most the heartbeat's limit: the
    /// oldest are dropped first).
    func noteDriveCheck(_ check: DriveCheck) {
        driveChecks[check.keyID] = check
        metrics.unlock(check.opens ? "verified" : "drift")
        if driveChecks.count > HeartbeatRequest.checkLimit, let oldest = driveChecks.values.min(by: { $0.checked < $1.checked }) {
            driveChecks[oldest.keyID] = nil
        }
        if !check.opens { logger.warning("escrow drift: the drive's escrowed key opened no keyslot", metadata: ["key": "\(check.keyID)"]) }
    }

    /// Whether the server blocked `id` or marks it for rotation (`GET /v1/keys/{id}/status`).
    func keyStatus(_ id: KeyID) async throws -> KeyStatusResponse {
        let (_, client) = try enrolled()
        return try await client.get(APIPath.keyStatus(id.description), as: KeyStatusResponse.self)
    }

    /// Asks the server to retire `old`, replaced by `new` on a drive (`keyhold drive rekey`),
    /// proving this device holds `old`.
    func retire(_ old: KeyID, replacedBy new: KeyID) async throws {
        let (_, client) = try enrolled()
        let oldKey = try await key(old)
        try await client.post(APIPath.keyRetire(old.description), RetireRequest(old: old, oldSecret: oldKey.secret, replacedBy: new))
        logger.info("drive key retired", metadata: ["key": "\(old)", "replaced by": "\(new)"])
    }

    // MARK: Offline access (docs/spec/offline-access.md)

    private var offline: PendingOfflineRequests { PendingOfflineRequests(folder: state.offline) }

    /// A request code for `keyID`, its private key kept until the response is used.
    func offlineRequest(_ keyID: KeyID, kind: KeyKind) throws -> OfflineRequestInfo {
        let (identity, _) = try enrolled()
        let (request, privateKey) = OfflineRequest.make(keyID: keyID, deviceID: identity.clientID)
        try offline.save(request, privateKey: privateKey, kind: kind)
        logger.info("offline request made", metadata: ["key": "\(keyID)", "request": "\(request.requestIDText)"])
        return OfflineRequestInfo(code: request.code, requestID: request.requestIDText, keyID: keyID, deviceID: identity.clientID)
    }

    /// The key an administrator's response code carries: opened with the pending request's
    /// private key, which is deleted before the key is handed out, so the response works once.
    /// Not cached; the server is not contacted.
    func offlineKey(_ code: String, for expected: KeyID?) throws -> KeyMaterial {
        let response = try OfflineResponse(code: code)
        guard let (request, privateKey, kind) = try offline.find(response.requestID) else {
            throw KeyholdError(
                .invalidCode, "this response answers request \(Hex.lowercase(response.requestID)), which this device has no open request for",
                hint: "a response works once, on the device that printed the request code; make a new request ('--offline')")
        }
        if let expected, expected != request.keyID {
            throw KeyholdError(
                .keyMismatch, "this response carries key \(request.keyID), not key \(expected) that this file needs",
                hint: "use it for the file or drive it was asked for; it stays usable")
        }
        let secret = try response.open(request, with: privateKey)
        try offline.remove(request.requestID)
        logger.notice("key obtained offline", metadata: ["key": "\(request.keyID)", "request": "\(request.requestIDText)"])
        let record = KeyRecord(
            id: request.keyID, kind: kind, originServerID: identity?.serverID ?? .zero, originDeviceID: .zero,
            label: "offline response to request \(request.requestIDText)")
        return KeyMaterial(record: record, secret: secret)
    }

    func status() -> AgentStatus {
        AgentStatus(
            enrolled: identity != nil, serverID: identity?.serverID, serverAddress: identity?.apiAddress, deviceID: identity?.clientID,
            lastHeartbeat: lastHeartbeat, lastHeartbeatError: lastHeartbeatError, heartbeatStopped: heartbeatStopped, cachedKeys: cache.keys.count,
            activeFileKey: cache.activeFileKey, outbox: creatingFileKey == nil ? 0 : 1, version: KeyholdVersion.current,
            certificateExpires: identity?.certificateExpires
        )
    }

    /// Enrolls with the server named by `tokenText` under `name` (the host name by default).
    /// Nothing is written unless enrollment succeeds.
    func enroll(tokenText: String, name: String? = nil) async throws -> AgentStatus {
        if let identity {
            throw KeyholdError(
                .usage, "this device is already enrolled with server \(identity.serverID) at \(identity.apiAddress)",
                hint: "a device has one server at a time; to start over, stop the agent and move \(state.identity) away (its cached keys stay)"
            )
        }
        let token = try EnrollmentToken(text: tokenText)
        let enrolled = try await Enrollment.enroll(token: token, name: name ?? ProcessInfo.processInfo.hostName)
        try state.save(identity: enrolled)
        identity = enrolled
        heartbeatStopped = nil
        heartbeatFailures = 0
        client = try enrolled.client(timeout: serverTimeout)
        logger.info("enrolled", metadata: ["server": "\(enrolled.serverID)", "device": "\(enrolled.clientID)"])
        return status()
    }

    /// The key new files are encrypted with. When there is none, a new key is made and escrowed
    /// first: it is cached and used only after the server acknowledged its commit.
    func fileKey() async throws -> KeyMaterial {
        if let id = cache.activeFileKey, let key = cache.key(id), key.record.state == .active { return key }
        if let pending = creatingFileKey { return try await pending.value }
        let task = Task { try await self.createFileKey() }
        creatingFileKey = task
        defer { creatingFileKey = nil }
        return try await task.value
    }

    /// The file key to re-encrypt a file under that was encrypted with `old` (`keyhold file
    /// rekey`): the active key unless it is `old` or its server marks it for rotation, else a
    /// new one, escrowed first, that becomes the active key.
    func fileKey(replacing old: KeyID) async throws -> KeyMaterial {
        if let id = cache.activeFileKey {
            var stale = id == old
            if !stale { stale = (try? await keyStatus(id))?.rotationRequired == true }
            if stale { try cache.retireActiveFileKey(id) }
        }
        return try await fileKey()
    }

    private func createFileKey() async throws -> KeyMaterial {
        try await createKey(kind: .file, label: "file key of \(ProcessInfo.processInfo.hostName)", makeActive: true)
    }

    /// A new key for a drive, escrowed (and cached) before it is returned.
    func driveKey(label: String) async throws -> KeyMaterial {
        try await createKey(kind: .drive, label: String(label.prefix(200)), makeActive: false)
    }

    /// Makes a key, escrows it and caches it: the caller gets it only after the server's acknowledgement.
    private func createKey(kind: KeyKind, label: String, makeActive: Bool) async throws -> KeyMaterial {
        let (identity, client) = try enrolled()
        // The id is derived from the secret (docs/spec/key-id.md), so no one who reads it in a
        // file header can escrow another secret under it that wins a conflict in the hierarchy.
        let material = KeyMaterial.generate(
            kind: kind, originServerID: identity.serverID, originDeviceID: DeviceID(enrollment: identity.clientID), label: label)
        let request = EscrowRequest(key: material)
        let start = ContinuousClock.now
        do {
            _ = try await client.put(APIPath.key(material.record.id.description), request, as: EscrowResponse.self)
            metrics.escrowed(after: ContinuousClock.now - start)
        } catch let error as KeyholdError {
            metrics.escrowFailed()
            logger.warning("escrow failed; no key created", metadata: ["error": "\(error.code)"])
            throw KeyholdError(
                error.code, "the new \(kind.rawValue) key could not be escrowed, so nothing was encrypted: \(error.message)",
                hint: error.code == .unreachable ? "check that the Keyhold server is reachable, then try again" : error.hint
            )
        }
        try cache.add(material, makeActive: makeActive)
        logger.info("new key escrowed", metadata: ["key": "\(material.record.id)", "kind": "\(kind.rawValue)"])
        return material
    }

    /// A key by id: from the cache, else from the server (then cached).
    func key(_ id: KeyID) async throws -> KeyMaterial {
        if let key = cache.key(id) { return key }
        let (_, client) = try enrolled()
        let material = try await client.get(APIPath.key(id.description), as: KeyMaterial.self)
        guard material.record.id == id else {
            throw KeyholdError(
                .internalError, "the server answered key \(material.record.id) for key \(id)", hint: "check that client and server versions match")
        }
        try cache.add(material, makeActive: false)
        return material
    }

    private func enrolled() throws -> (EnrolledIdentity, APIClient) {
        guard let identity, let client else {
            throw KeyholdError(
                .configuration, "this device is not enrolled with a Keyhold server",
                hint: "enroll it: 'keyhold enroll TOKEN' (the administrator makes the token)")
        }
        return (identity, client)
    }

    // MARK: Reassignment

    /// Moves this device to the server named by `tokenText` without losing access to its data
    /// (docs/spec/agent-socket.md, `reassign`): verify the new server's CA; enroll with it (or reuse
    /// the identity a failed earlier attempt left for the same server); re-escrow every key held
    /// and wait for every acknowledgement; only then switch the identity file atomically; finally
    /// tell the old server (best effort). Until the switch the device stays with its old server,
    /// fully working.
    func reassign(tokenText: String, dryRun: Bool) async throws -> ReassignReport {
        let (old, oldClient) = try enrolled()
        let token = try EnrollmentToken(text: tokenText)
        if token.apiAddress == old.apiAddress {
            throw KeyholdError(
                .usage, "this device is already with the server at \(old.apiAddress)", hint: "use a token from the server the device should move to")
        }
        try await Enrollment.verifyServer(token)
        if dryRun {
            return ReassignReport(
                dryRun: true, fromServerID: old.serverID, fromAddress: old.apiAddress, toServerID: nil, toAddress: token.apiAddress,
                deviceID: nil, keys: cache.keys.keys.sorted(), reescrowed: 0, alreadyPresent: 0, oldServerNotified: false, oldServerNote: nil
            )
        }

        // 1. The new identity: a pending one for this server from an interrupted attempt, else enroll.
        var next: EnrolledIdentity
        if let pending = try? state.loadIdentity(state.pendingIdentity), pending.apiAddress == token.apiAddress {
            next = pending
            logger.info("reassign: resuming with the identity enrolled earlier", metadata: ["server": "\(pending.serverID)"])
        } else {
            next = try await Enrollment.enroll(token: token, name: old.name ?? ProcessInfo.processInfo.hostName)
            try state.save(identity: next, to: state.pendingIdentity)
        }
        let newClient = try next.client(timeout: serverTimeout)
        var switched = false
        defer { if !switched { Task { await newClient.shutdown() } } }

        // 2. Re-escrow every key held, until a pass finds none left (keys made meanwhile included).
        var done = Set<KeyID>()
        var stored = 0
        var present = 0
        do {
            while case let pending = cache.keys.keys.filter({ !done.contains($0) }).sorted(), !pending.isEmpty {
                for id in pending {
                    guard let material = cache.key(id) else {
                        done.insert(id)
                        continue
                    }
                    let request = EscrowRequest(key: material, reassignedFrom: old.serverID)
                    let answer = try await newClient.put(APIPath.key(id.description), request, as: EscrowResponse.self)
                    if answer.outcome == .inserted { stored += 1 } else { present += 1 }
                    done.insert(id)
                }
            }
        } catch let error as KeyholdError {
            logger.warning("reassign: re-escrow failed; still with the old server", metadata: ["error": "\(error.code)", "done": "\(done.count)"])
            throw KeyholdError(
                error.code,
                "re-escrow to the new server failed after \(done.count) of \(cache.keys.count) keys, so this device stays with server \(old.serverID): \(error.message)",
                hint: "fix the cause (\(error.hint)), then run 'keyhold reassign' again with the same token: it resumes"
            )
        }

        // 3. Switch: the identity file is replaced atomically (written, synced, renamed, folder synced).
        try state.save(identity: next)
        identity = next
        client = newClient
        switched = true
        state.remove(state.pendingIdentity)
        lastHeartbeat = nil
        lastHeartbeatError = nil
        heartbeatStopped = nil
        heartbeatFailures = 0
        logger.notice("reassigned", metadata: ["from": "\(old.serverID)", "to": "\(next.serverID)", "keys": "\(done.count)"])

        // 4. Tell the old server (best effort), then heartbeat the new one.
        var notified = false
        var note: String?
        do {
            try await oldClient.post(APIPath.leave, LeaveRequest(newServerID: next.serverID, newAddress: next.apiAddress))
            notified = true
        } catch let error as KeyholdError {
            note = "\(error.code): \(error.message)"
        }
        await oldClient.shutdown()
        await heartbeat()
        return ReassignReport(
            dryRun: false, fromServerID: old.serverID, fromAddress: old.apiAddress, toServerID: next.serverID, toAddress: next.apiAddress,
            deviceID: next.clientID, keys: done.sorted(), reescrowed: stored, alreadyPresent: present, oldServerNotified: notified,
            oldServerNote: note
        )
    }

    // MARK: Heartbeat

    /// One heartbeat, unless the server said this device is revoked or moved (then none until
    /// the device enrolls or is reassigned).
    func heartbeat() async {
        defer { writeMetrics() }
        guard heartbeatStopped == nil else { return }
        await renewCertificateIfDue()
        guard let client else { return }
        let checks = driveChecks.values.sorted { $0.checked < $1.checked }
        let active = cache.activeFileKey
        do {
            let answer = try await client.post(
                APIPath.heartbeat,
                HeartbeatRequest(agentVersion: KeyholdVersion.current, keyCount: cache.keys.count, driveChecks: checks, activeFileKey: active),
                as: HeartbeatResponse.self)
            for sent in checks where driveChecks[sent.keyID] == sent { driveChecks[sent.keyID] = nil }
            if answer.rotateFileKey, let active {
                // Revealed: new files get a new key from now on (the old one still opens old files).
                try? cache.retireActiveFileKey(active)
                logger.notice("the active file key was revealed; new files get a new key", metadata: ["key": "\(active)"])
            }
            lastHeartbeat = Date()
            lastHeartbeatError = nil
            heartbeatFailures = 0
            if let identity, identity.previousCertificatePEM != nil { keep(identity.confirmed, "the renewed certificate works") }
            if let trust = answer.ca { await adopt(trust) }
        } catch let error as KeyholdError where error.code == .unauthenticated && identity?.reverted != nil {
            // The server refused the renewed certificate: back to the one it renewed.
            lastHeartbeatError = "\(error.code): \(error.message)"
            heartbeatFailures += 1
            metrics.heartbeatFailed()
            if let previous = identity?.reverted { keep(previous, "the server refused the renewed certificate; the previous one is back") }
        } catch let error as KeyholdError {
            lastHeartbeatError = "\(error.code): \(error.message)"
            heartbeatFailures += 1
            metrics.heartbeatFailed()
            if error.code == .clientRevoked || error.code == .clientMoved {
                heartbeatStopped =
                    error.code == .clientRevoked
                    ? "the server revoked this device; enroll it again ('keyhold enroll TOKEN')"
                    : "this device moved to another server; reassign it ('keyhold reassign TOKEN') or enroll it again"
                logger.warning("heartbeats stopped", metadata: ["reason": "\(error.code)"])
            } else {
                logger.notice("heartbeat failed", metadata: ["error": "\(error.code)", "failures": "\(heartbeatFailures)"])
            }
        } catch {
            lastHeartbeatError = "\(error)"
            heartbeatFailures += 1
            metrics.heartbeatFailed()
        }
    }

    /// Renews the device's certificate once two thirds of its lifetime have passed (a new key
    /// pair made here, a CSR over the current connection); the new identity is written
    /// atomically with the old certificate kept in it until the new one has been used once — by
    /// the heartbeat that follows. A failure is logged and tried again at the next heartbeat.
    private func renewCertificateIfDue(force: Bool = false) async {
        guard let identity, let client, force || identity.renewalDue() else { return }
        do {
            let renewed = try await identity.renewed(over: client)
            try state.save(identity: renewed)
            self.identity = renewed
            self.client = try renewed.client(timeout: serverTimeout)
            retire(client)
            metrics.certificateRenewed()
            logger.notice(
                "certificate renewed", metadata: ["expires": "\(renewed.certificateExpires.map { ISO8601DateFormatter().string(from: $0) } ?? "?")"])
        } catch {
            metrics.certificateRenewalFailed()
            logger.warning("certificate renewal failed; trying again at the next heartbeat", metadata: ["error": "\(error)"])
        }
    }

    /// Trusts the CAs the server names (docs/operations.md, "CA rotation"): a new CA only through
    /// its cross-signature by one trusted already, the previous one dropped once the server no
    /// longer names it; then renews the certificate at once if the previous CA issued it.
    private func adopt(_ trust: CATrust) async {
        guard let identity else { return }
        do {
            if let next = try identity.adopting(trust) { keep(next, "the server's CAs changed (CA rotation)") }
        } catch {
            logger.warning("not trusting the CA the server names", metadata: ["error": "\(error)"])
            return
        }
        if let current = self.identity, current.previousCertificatePEM == nil, !current.issuedByCurrentCA(trust) {
            await renewCertificateIfDue(force: true)
        }
    }

    /// Saves `next` as the identity and uses it from now on (a failure to save is logged: the
    /// file keeps the identity that still has both certificates).
    private func keep(_ next: EnrolledIdentity, _ why: String) {
        do {
            try state.save(identity: next)
            let old = client
            client = try next.client(timeout: serverTimeout)
            identity = next
            if let old { retire(old) }
            logger.info("identity updated", metadata: ["why": "\(why)"])
        } catch {
            logger.warning("cannot update the identity", metadata: ["why": "\(why)", "error": "\(error)"])
        }
    }

    /// Shuts `old` down once the requests still using it had their time: the actor lets a request
    /// that started with it go on while the identity changes.
    private func retire(_ old: APIClient) {
        let grace = serverTimeout + .seconds(1)
        Task {
            try? await Task.sleep(for: grace)
            await old.shutdown()
        }
    }

    /// Writes the metrics textfile, if one is configured (a failure is logged, never fatal).
    private func writeMetrics() {
        guard let metricsTextfile else { return }
        metrics.state(cachedKeys: cache.keys.count, lastContact: lastHeartbeat, certificateExpires: identity?.certificateExpires)
        do {
            try metrics.write(to: metricsTextfile)
        } catch {
            logger.warning("cannot write the metrics textfile", metadata: ["path": "\(metricsTextfile)", "error": "\(error)"])
        }
    }

    func shutdown() async {
        await client?.shutdown()
    }
}
