import Foundation
import KeyholdClient
import KeyholdCore
import KeyholdSystem

/// The agent's state directory (default `/var/lib/keyhold`, mode 0700): the enrolled identity
/// (certificate, private key, server address), the cache key and the sealed key cache. Every file
/// is root-only; the agent refuses to start when any is looser.
struct StateDirectory: Sendable {
    let path: String

    var identity: String { path + "/identity.json" }
    var cacheKey: String { path + "/cache.key" }
    var cache: String { path + "/cache.sealed" }
    /// The identity at a new server while `keyhold reassign` re-escrows (removed once switched).
    var pendingIdentity: String { path + "/reassign-pending.json" }
    /// Held by the running agent.
    var lock: String { path + "/agent.lock" }
    /// Offline requests waiting for their response (docs/spec/offline-access.md).
    var offline: String { path + "/offline" }

    /// Creates the directory if needed and checks its permissions and those of its files.
    func prepare() throws {
        let fm = FileManager.default
        if !fm.fileExists(atPath: path) {
            try fm.createDirectory(atPath: path, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        }
        for file in [path, identity, cacheKey, cache, pendingIdentity, lock, offline] where fm.fileExists(atPath: file) {
            let attrs = try fm.attributesOfItem(atPath: file)
            let mode = (attrs[.posixPermissions] as? Int) ?? 0
            let owner = (attrs[.ownerAccountID] as? NSNumber)?.uint32Value ?? 0
            guard mode & 0o077 == 0, owner == geteuid() else {
                throw KeyholdError(
                    .configuration, "\(file) is accessible to other users (mode \(String(mode, radix: 8)), owner \(owner))",
                    hint: "the state directory holds the device's private key and keys: run 'chown -R root: \(path) && chmod -R go-rwx \(path)'"
                )
            }
        }
    }

    /// Takes the directory's lock for this process's life: one running agent per state directory.
    func lockForRunning() throws -> ProcessLock {
        try ProcessLock(path: lock, protecting: "the state directory \(path)", holder: "keyhold-agent")
    }

    /// Writes a root-only file atomically: temporary file, fsync, rename, fsync of the folder.
    func write(_ target: String, _ data: Data) throws {
        try AtomicFileWriter.replace(target, with: data, mode: 0o600)
    }

    func read(_ file: String) -> Data? { FileManager.default.contents(atPath: file) }

    func loadIdentity(_ file: String? = nil) throws -> EnrolledIdentity? {
        let file = file ?? identity
        guard let data = read(file) else { return nil }
        do {
            return try JSONDecoder().decode(EnrolledIdentity.self, from: data)
        } catch {
            throw KeyholdError(.configuration, "\(file) is damaged", hint: "restore it from a backup, or remove it and enroll again")
        }
    }

    func save(identity value: EnrolledIdentity, to file: String? = nil) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try write(file ?? identity, try encoder.encode(value))
    }

    func remove(_ file: String) {
        unlink(file)
        let dir = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dir >= 0 {
            fsync(dir)
            close(dir)
        }
    }
}
