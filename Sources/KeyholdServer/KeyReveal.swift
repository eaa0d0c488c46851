import Foundation
import KeyholdCore
import KeyholdProtocol
import KeyholdStore
import Logging

/// The help desk's reveal (`POST /v1/admin/keys/{id}/reveal`, docs/operations.md "The help
/// desk"): an administrator is shown a key's secret with a reason, fail-closed like every
/// release, and the key is marked *rotation required*.
extension ServerCore {
    /// The key `keyID` for the administrator `caller`, who gives `reason`: read, marked and
    /// audited (`reveal`, with the reason) in one transaction. Blocked keys are revealed too —
    /// the administrator asks on purpose — and say so. Only keys held here.
    func reveal(_ keyID: KeyID, reason: String, by caller: Caller) async throws -> RevealResponse {
        try Self.checkReason(reason, for: "a reveal")
        if try await repository.key(id: keyID)?.destroyed != nil {
            try await audited {
                try await repository.appendAudit(
                    AuditEvent(
                        actor: caller.actor, action: .reveal, keyID: keyID, route: .adminAPI, result: .refused(.keyDestroyed),
                        detail: "reason: \(reason)"))
            }
            throw Self.destroyedError(keyID)
        }
        let audit = AuditEvent(
            actor: caller.actor, action: .reveal, keyID: keyID, route: .adminAPI, result: .ok, detail: "reason: \(reason); rotation required")
        guard let stored = try await audited({ try await repository.revealKey(id: keyID, audit: audit) }) else {
            throw KeyholdError(
                .notFound, "key \(keyID) is not held by this server",
                hint: "reveal it on the server that holds it (its origin or a primary), or import it here first")
        }
        if stored.destroyed != nil { throw Self.destroyedError(keyID) }  // destroyed meanwhile: nothing was written
        let secret = try masterKey.unwrap(stored.wrappedSecret, keyID: keyID)
        logger.notice("key revealed to an administrator", metadata: ["key": "\(keyID)", "by": "\(caller.actor)"])
        let bytes = secret.withUnsafeBytes { Array($0) }
        let base64 = Data(bytes).base64EncodedString()
        return RevealResponse(
            record: stored.record, secretHex: Hex.lowercase(bytes), secretBase64: base64,
            openCommand: stored.record.kind == .drive ? Self.openCommand(base64: base64, keyID: keyID) : nil, blocked: stored.blocked)
    }

    /// `POST /v1/keys/{id}/retire`: the device `caller` re-keyed a drive from `old` to
    /// `body.replacedBy`. It must have escrowed the new key here and prove it holds the old one;
    /// the old key is then blocked (it travels to every server holding a copy through the change
    /// feed) with a `retire` record. Retiring a retired key again changes nothing.
    func retire(_ old: KeyID, _ body: RetireRequest, by caller: Caller) async throws {
        let device = DeviceID(enrollment: caller.client.id)
        guard let new = try await repository.key(id: body.replacedBy), new.record.originDeviceID == device else {
            throw KeyholdError(
                .forbidden, "key \(body.replacedBy) was not escrowed here by this device", hint: "a device retires a key only for one it escrowed")
        }
        guard let stored = try await repository.key(id: old) else {
            throw KeyholdError(.notFound, "key \(old) is not held by this server", hint: "retire it on the server that holds it")
        }
        if stored.destroyed != nil { throw Self.destroyedError(old) }
        let secret = try masterKey.unwrap(stored.wrappedSecret, keyID: old)
        guard let proof = Data(base64Encoded: body.proof),
            RetireRequest.verify(Array(proof), oldSecret: secret, old: old, new: body.replacedBy)
        else {
            try? await repository.appendAudit(
                AuditEvent(
                    actor: caller.actor, action: .retire, keyID: old, route: .agent, result: .refused(.forbidden),
                    detail: "no proof of holding the key"))
            throw KeyholdError(.forbidden, "the request does not prove that this device holds key \(old)", hint: "only the key's holder retires it")
        }
        _ = try await repository.setBlocked(
            id: old, blocked: true,
            audit: AuditEvent(
                actor: caller.actor, action: .retire, keyID: old, route: .agent, result: .ok, detail: "replaced by \(body.replacedBy) (drive rekey)"))
        logger.info("key retired", metadata: ["key": "\(old)", "by": "\(caller.actor)"])
    }

    /// Seconds an offline response may stay usable.
    static let offlineValidity = 1...(7 * 86_400)

    /// `POST /v1/admin/keys/offline-response`: the key a device's request code asks for, sealed
    /// to that request (docs/spec/offline-access.md §5). The device must be an active device of
    /// this server, the key held here and not blocked; the `offline_release` record (with the
    /// administrator, device, request, expiry and reason) and the rotation mark commit before
    /// the response is made.
    func respondOffline(_ body: OfflineRespondRequest, by caller: Caller) async throws -> OfflineRespondResponse {
        let request = try OfflineRequest(code: body.requestCode)
        try Self.checkReason(body.reason, for: "an offline response")
        guard Self.offlineValidity.contains(body.validSeconds) else {
            throw KeyholdError(
                .invalidRequest, "a response stays usable 1 s to 7 days, not \(body.validSeconds) s", hint: "for example --valid 3600")
        }
        guard let device = try await repository.client(id: request.deviceID), device.role == .device else {
            throw KeyholdError(
                .notFound, "the request names device \(request.deviceID), which is not enrolled here",
                hint: "answer it on the device's own server ('keyhold status' on the device shows it)")
        }
        guard device.state == .active else {
            throw KeyholdError(
                .forbidden, "device \(request.deviceID) (\(PrintableText.escaped(device.name))) is \(device.state) here: it may be the lost one",
                hint: "check who asks; a device that should be served must be enrolled again")
        }
        guard let held = try await repository.key(id: request.keyID) else {
            throw KeyholdError(.notFound, "key \(request.keyID) is not held by this server", hint: "answer it on a server that holds the key")
        }
        if held.destroyed != nil { throw Self.destroyedError(request.keyID) }
        guard !held.blocked else {
            throw KeyholdError(
                .keyBlocked, "key \(request.keyID) is blocked", hint: "unblock it first if the device should have it ('keyhold-server key unblock')")
        }
        let expiry = Date(timeIntervalSince1970: (Date().timeIntervalSince1970 + Double(body.validSeconds)).rounded(.down))
        let audit = AuditEvent(
            actor: caller.actor, action: .offlineRelease, keyID: request.keyID, route: .adminAPI, result: .ok,
            detail:
                "to device \(request.deviceID), request \(request.requestIDText), valid until \(ISO8601DateFormatter().string(from: expiry)): \(body.reason); rotation required"
        )
        guard let stored = try await audited({ try await repository.revealKey(id: request.keyID, audit: audit) }) else {
            throw KeyholdError(.notFound, "key \(request.keyID) is not held by this server", hint: "answer it on a server that holds the key")
        }
        if stored.destroyed != nil { throw Self.destroyedError(request.keyID) }  // destroyed meanwhile: nothing was written
        let response = try OfflineResponse.seal(try masterKey.unwrap(stored.wrappedSecret, keyID: request.keyID), to: request, expiry: expiry)
        logger.notice("offline response made", metadata: ["key": "\(request.keyID)", "device": "\(request.deviceID)", "by": "\(caller.actor)"])
        return OfflineRespondResponse(
            responseCode: response.code, keyID: request.keyID, deviceID: request.deviceID, requestID: request.requestIDText, expiry: expiry)
    }

    /// Refuses a missing, overlong or unprintable reason.
    static func checkReason(_ reason: String, for what: String) throws {
        guard !reason.isEmpty, PrintableText.isClean(reason, limit: reasonLimit) else {
            throw KeyholdError(
                .invalidRequest, "\(what) needs a reason of 1 to \(reasonLimit) printable characters",
                hint: "say why, for example --reason 'ticket 4711: user locked out'")
        }
    }

    /// The shell command that opens a drive whose keyslot takes the 32 raw key bytes as its
    /// passphrase (docs/spec/luks2-token.md), on any Linux machine with cryptsetup: the bytes go
    /// through a pipe, never into a file. `DEVICE` stands for the drive's device path.
    static func openCommand(base64: String, keyID: KeyID) -> String {
        "echo '\(base64)' | base64 -d | cryptsetup open --key-file - DEVICE keyhold-\(keyID.description.prefix(8))"
    }
}
