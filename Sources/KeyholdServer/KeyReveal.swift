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
        guard !reason.isEmpty, PrintableText.isClean(reason, limit: Self.reasonLimit) else {
            throw KeyholdError(
                .invalidRequest, "a reveal needs a reason of 1 to \(Self.reasonLimit) printable characters",
                hint: "say why, for example --reason 'ticket 4711: user locked out of drive'")
        }
        let audit = AuditEvent(
            actor: caller.actor, action: .reveal, keyID: keyID, route: .adminAPI, result: .ok, detail: "reason: \(reason); rotation required")
        guard let stored = try await audited({ try await repository.revealKey(id: keyID, audit: audit) }) else {
            throw KeyholdError(
                .notFound, "key \(keyID) is not held by this server",
                hint: "reveal it on the server that holds it (its origin or a primary), or import it here first")
        }
        let secret = try masterKey.unwrap(stored.wrappedSecret, keyID: keyID)
        logger.notice("key revealed to an administrator", metadata: ["key": "\(keyID)", "by": "\(caller.actor)"])
        let bytes = secret.withUnsafeBytes { Array($0) }
        let base64 = Data(bytes).base64EncodedString()
        return RevealResponse(
            record: stored.record, secretHex: Hex.lowercase(bytes), secretBase64: base64,
            openCommand: stored.record.kind == .drive ? Self.openCommand(base64: base64, keyID: keyID) : nil, blocked: stored.blocked)
    }

    /// The shell command that opens a drive whose keyslot takes the 32 raw key bytes as its
    /// passphrase (docs/spec/luks2-token.md), on any Linux machine with cryptsetup: the bytes go
    /// through a pipe, never into a file. `DEVICE` stands for the drive's device path.
    static func openCommand(base64: String, keyID: KeyID) -> String {
        "echo '\(base64)' | base64 -d | cryptsetup open --key-file - DEVICE keyhold-\(keyID.description.prefix(8))"
    }
}
