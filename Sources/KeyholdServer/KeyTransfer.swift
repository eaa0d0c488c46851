import Foundation
import KeyholdCore
import KeyholdExport
import KeyholdProtocol
import KeyholdStore
import Logging
import Synchronization

/// Password-protected export and import of keys (docs/spec/export.md): the server writes and reads
/// the age file itself, so secrets never leave it unencrypted; the admin CLI only moves bytes.
extension ServerCore {
    /// Keys per page read from the repository, audited together before they are written out.
    static let exportPage = 5000

    /// Refuses a bad export request before any byte of the answer is sent: a short password, not
    /// exactly one selection, or named keys this repository lacks.
    func checkExport(_ request: ExportRequest) async throws {
        try TransferPassword.checkNew(request.password)
        guard request.selectionCount == 1 else {
            throw KeyholdError(
                .usage, "an export names exactly one selection (all, keys, device or since); this one names \(request.selectionCount)",
                hint: "use one of --all, --key, --device or --since")
        }
        if let ids = request.keys {
            var missing: [KeyID] = []
            for id in Set(ids).sorted() where try await repository.key(id: id) == nil { missing.append(id) }
            if !missing.isEmpty {
                throw KeyholdError(
                    .notFound,
                    "\(missing.count) of the named keys \(missing.count == 1 ? "is" : "are") not in this repository: \(missing.prefix(10).map(\.description).joined(separator: ", "))",
                    hint: "check the ids with 'keyhold-server key list'")
            }
        }
    }

    /// The export file for `request` (checked with ``checkExport(_:)``), produced page by page into `write`. Each page's `export`
    /// audit records commit before any of its keys is encrypted into the stream; a summary record
    /// follows at the end. Memory is bounded by one page.
    func export(_ request: ExportRequest, by caller: Caller, write: (ArraySlice<UInt8>) async throws -> Void) async throws {
        // scrypt (~256 MiB, about a second) runs here once per export.
        var encryptor = try AgeEncryptor(password: Array(request.password.utf8))
        var document = ExportDocumentWriter()
        var pending = encryptor.start()
        pending += try encryptor.append(document.opening(server: serverID, exported: Date()))

        var cursor: KeyID?
        let named = request.keys.map { Array(Set($0)).sorted() }
        while true {
            var page: [StoredKey]
            if let ids = named {
                // Named keys: in id order, a page at a time.
                let chunk = ids.drop { cursor != nil && $0 <= cursor! }.prefix(Self.exportPage)
                if chunk.isEmpty { break }
                cursor = chunk.last
                var found: [StoredKey] = []
                for id in chunk { if let key = try await repository.key(id: id) { found.append(key) } }
                page = found
            } else {
                let scanned = try await repository.listKeys(after: cursor, limit: Self.exportPage)
                if scanned.isEmpty { break }
                cursor = scanned.last?.record.id
                page = scanned.filter { key in
                    if let device = request.device { return key.record.originDeviceID == device }
                    if let since = request.since { return key.record.created >= since }
                    return true
                }
            }
            // A destroyed key has no secret left to export.
            page.removeAll { $0.destroyed != nil }
            if page.isEmpty { continue }
            try await audit(
                page.map {
                    AuditEvent(
                        actor: caller.actor, action: .export, keyID: $0.record.id, route: .adminAPI, result: .ok, detail: request.selectionDescription
                    )
                })
            for key in page {
                let secret = try masterKey.unwrap(key.wrappedSecret, keyID: key.record.id)
                pending += try encryptor.append(
                    try document.element(ExportedKey(KeyMaterial(record: key.record, secret: secret), blocked: key.blocked)))
            }
            try await write(pending[...])
            pending = []
        }
        pending += try encryptor.append(document.closing())
        pending += try encryptor.finish()
        try await audit([
            AuditEvent(
                actor: caller.actor, action: .exportFile, route: .adminAPI, result: .ok,
                detail: "\(document.count) keys (\(request.selectionDescription))")
        ])
        try await write(pending[...])
        logger.notice(
            "keys exported", metadata: ["actor": "\(caller.actor)", "count": "\(document.count)", "selection": "\(request.selectionDescription)"])
    }

    private func audit(_ events: [AuditEvent]) async throws {
        do {
            try await repository.appendAudit(events)
        } catch {
            logger.error("audit write failed; export stopped", metadata: ["error": "\(error)"])
            throw KeyholdError(
                .auditFailed, "the audit records could not be written, so no key was exported",
                hint: "the server's database needs attention; try again later")
        }
    }

    /// Imports the export file at `path` (spooled from the request) in one transaction.
    func importFile(at path: String, password: String, by caller: Caller) async throws -> ImportResponse {
        try TransferPassword.checkExisting(password)
        let source = try ExportFileSource(path: path, password: Array(password.utf8), masterKey: masterKey)
        let result: KeyImportResult
        do {
            result = try await repository.importKeys(
                from: source, audit: AuditEvent(actor: caller.actor, action: .importFile, route: .adminAPI, result: .ok))
        } catch let conflict as KeyImportConflict {
            let listed = conflict.ids.map { "  \($0)" }.joined(separator: "\n")
            throw KeyholdError(
                .conflict,
                "the import is refused and nothing was stored: \(conflict.count) key\(conflict.count == 1 ? "" : "s") in the file exist\(conflict.count == 1 ? "s" : "") here with another secret:\n\(listed)\(conflict.count > conflict.ids.count ? "\n  … and \(conflict.count - conflict.ids.count) more" : "")",
                hint: "two secrets for one key id must be investigated: compare the key records on both servers before importing"
            )
        }
        logger.notice(
            "keys imported", metadata: ["actor": "\(caller.actor)", "inserted": "\(result.inserted)", "already_present": "\(result.alreadyPresent)"])
        return ImportResponse(
            inserted: result.inserted, alreadyPresent: result.alreadyPresent, sourceServer: source.sourceServer, destroyed: result.destroyed)
    }
}

/// Reads an export file batch by batch for `Repository.importKeys` (called inside its transaction):
/// age decryption, the document reader, then each secret wrapped under this server's master key.
/// Any failure (wrong password, damage, malformed document) throws, and the import rolls back.
final class ExportFileSource: KeyBatchSource {
    private struct State {
        var handle: FileHandle
        var decryptor: AgeDecryptor
        var reader = ExportDocumentReader()
        var ready: [ExportedKey] = []
        var ended = false
    }
    private let state: Mutex<State>
    private let masterKey: MasterKey
    private let server = Mutex<String?>(nil)
    static let batchSize = 2000
    static let readSize = 1 << 20

    init(path: String, password: [UInt8], masterKey: MasterKey) throws {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw KeyholdError(.ioFailed, "cannot read the spooled import file", hint: "check the server's data directory")
        }
        state = Mutex(State(handle: handle, decryptor: AgeDecryptor(password: password)))
        self.masterKey = masterKey
    }

    deinit { state.withLock { try? $0.handle.close() } }

    /// The server id the document names, once its start was read.
    var sourceServer: String? { server.withLock { $0 } }

    func nextBatch() throws -> [StoredKey]? {
        let batch: [ExportedKey]? = try state.withLock { s in
            while s.ready.count < Self.batchSize, !s.ended {
                let data = try s.handle.read(upToCount: Self.readSize) ?? Data()
                if data.isEmpty {
                    s.ready += try s.reader.feed(try s.decryptor.finish())
                    try s.reader.finish()
                    s.ended = true
                } else {
                    s.ready += try s.reader.feed(try s.decryptor.feed(data))
                }
            }
            if s.ready.isEmpty { return nil }
            let n = min(Self.batchSize, s.ready.count)
            let out = Array(s.ready.prefix(n))
            s.ready.removeFirst(n)
            if let name = s.reader.server { server.withLock { $0 = name } }
            return out
        }
        guard let batch else { return nil }
        return try batch.map { key in
            try masterKey.store(key.record, secret: try key.secretKey(), provenance: .imported, blocked: key.blocked)
        }
    }
}
