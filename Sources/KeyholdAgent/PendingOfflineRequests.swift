import Crypto
import Foundation
import KeyholdCore
import KeyholdProtocol
import KeyholdSystem

/// The offline requests this agent made and has not used (docs/spec/offline-access.md §5): one
/// root-only file per request in `offline/` of the state directory, holding the request and its
/// ephemeral private key. A request's file is deleted when its response is used (so a response
/// works once) and after ``lifetime``.
struct PendingOfflineRequests: Sendable {
    /// How long an unanswered request is kept.
    static let lifetime: TimeInterval = 7 * 86_400

    let folder: String

    private struct Entry: Codable {
        var request: Data
        var privateKey: Data
        var kind: KeyKind
        var created: Date
    }

    private func file(_ requestID: [UInt8]) -> String { "\(folder)/\(Hex.lowercase(requestID)).json" }

    /// Keeps `request` and its private key until used.
    func save(_ request: OfflineRequest, privateKey: Curve25519.KeyAgreement.PrivateKey, kind: KeyKind) throws {
        try prepare()
        prune()
        let entry = Entry(
            request: Data(request.bytes), privateKey: privateKey.rawRepresentation, kind: kind, created: Date())
        try AtomicFileWriter.replace(file(request.requestID), with: try JSONEncoder().encode(entry), mode: 0o600)
    }

    /// The pending request with `requestID`, its private key and the key's kind, if this agent
    /// made it and has not used it.
    func find(_ requestID: [UInt8]) throws -> (OfflineRequest, Curve25519.KeyAgreement.PrivateKey, KeyKind)? {
        guard let data = FileManager.default.contents(atPath: file(requestID)) else { return nil }
        guard let entry = try? JSONDecoder().decode(Entry.self, from: data), let request = try? OfflineRequest(bytes: Array(entry.request)),
            let key = try? Curve25519.KeyAgreement.PrivateKey(rawRepresentation: entry.privateKey)
        else {
            throw KeyholdError(.configuration, "\(file(requestID)) is damaged", hint: "remove it and make a new request")
        }
        return (request, key, entry.kind)
    }

    /// Forgets request `requestID` durably (its response then opens nothing).
    func remove(_ requestID: [UInt8]) throws {
        try FileManager.default.removeItem(atPath: file(requestID))
        try AtomicFileWriter.syncFolder(of: file(requestID))
    }

    /// Creates the folder (0700) if needed.
    func prepare() throws {
        if !FileManager.default.fileExists(atPath: folder) {
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        }
    }

    /// Removes requests older than ``lifetime``.
    private func prune() {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []
        for name in names where name.hasSuffix(".json") {
            let path = "\(folder)/\(name)"
            let created = (try? FileManager.default.attributesOfItem(atPath: path)[.modificationDate] as? Date) ?? .distantPast
            if Date().timeIntervalSince(created) > Self.lifetime { try? FileManager.default.removeItem(atPath: path) }
        }
    }
}
