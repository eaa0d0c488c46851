import Crypto
import Foundation
import KeyholdCore
import KeyholdProtocol

/// The keys this device created or obtained, kept so it can reopen its own data while its server
/// is unreachable. On disk the cache is one file sealed with AES-256-GCM under `cache.key`
/// (32 random bytes, 0600, made on first use), with a fixed label as associated data; every change
/// is written atomically and synced before it is used.
struct KeyCache {
    private(set) var keys: [KeyID: KeyMaterial] = [:]
    /// The key new files are encrypted with.
    private(set) var activeFileKey: KeyID?
    private let state: StateDirectory
    private let sealingKey: SymmetricKey
    private static let label = Data("keyhold agent key cache v1".utf8)

    init(state: StateDirectory) throws {
        self.state = state
        if let existing = state.read(state.cacheKey) {
            guard existing.count == 32 else {
                throw KeyholdError(.configuration, "\(state.cacheKey) is not a 32-byte key", hint: "restore it from a backup")
            }
            sealingKey = SymmetricKey(data: existing)
        } else {
            let fresh = SecretKey.generate()
            try state.write(state.cacheKey, fresh.withUnsafeBytes { Data($0) })
            sealingKey = fresh.withUnsafeBytes { SymmetricKey(data: $0) }
        }
        guard let sealed = state.read(state.cache) else { return }
        let contents: Contents
        do {
            var plain = try AES.GCM.open(try AES.GCM.SealedBox(combined: sealed), using: sealingKey, authenticating: Self.label)
            defer { plain.withUnsafeMutableBytes { SecretKey.wipe($0) } }
            contents = try WireFormat.decoder().decode(Contents.self, from: plain)
        } catch {
            throw KeyholdError(
                .configuration, "the key cache \(state.cache) does not open with \(state.cacheKey)", hint: "restore both files from the same backup")
        }
        for entry in contents.keys {
            var json = Data(base64Encoded: entry) ?? Data()
            defer { json.withUnsafeMutableBytes { SecretKey.wipe($0) } }
            let material = try KeyMaterial(keyFileJSON: json)
            keys[material.record.id] = material
        }
        activeFileKey = contents.active
    }

    private struct Contents: Codable {
        /// Each key as a base64 key-file JSON (record + secret).
        var keys: [String]
        var active: KeyID?
    }

    func key(_ id: KeyID) -> KeyMaterial? { keys[id] }

    /// Adds `material` (and makes it the active file key if asked) and writes the cache durably.
    mutating func add(_ material: KeyMaterial, makeActive: Bool) throws {
        var next = self
        next.keys[material.record.id] = material
        if makeActive { next.activeFileKey = material.record.id }
        try next.persist()
        self = next
    }

    /// Stops using `id` for new files (it stays in the cache for the files it opens); the next
    /// file key request makes a new one.
    mutating func retireActiveFileKey(_ id: KeyID) throws {
        guard activeFileKey == id else { return }
        var next = self
        next.activeFileKey = nil
        try next.persist()
        self = next
    }

    private func persist() throws {
        var entries: [String] = []
        for material in keys.values.sorted(by: { $0.record.id < $1.record.id }) {
            var json = try material.keyFileJSON()
            entries.append(json.base64EncodedString())
            json.withUnsafeMutableBytes { SecretKey.wipe($0) }
        }
        var plain = try WireFormat.encoder().encode(Contents(keys: entries, active: activeFileKey))
        defer { plain.withUnsafeMutableBytes { SecretKey.wipe($0) } }
        let box = try AES.GCM.seal(plain, using: sealingKey, authenticating: Self.label)
        guard let combined = box.combined else { throw KeyholdError(.internalError, "AES-GCM gave no combined form", hint: "report this bug") }
        try state.write(state.cache, combined)
    }
}
