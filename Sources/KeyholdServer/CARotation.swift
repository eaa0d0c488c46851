import Foundation
import KeyholdCore
import KeyholdProtocol
import KeyholdStore
import KeyholdSystem
import Logging
import SwiftASN1
import Synchronization
import X509

/// The server's CAs (docs/operations.md, "CA rotation"): the current one, which issues every
/// certificate, and during a rotation's overlap the previous one — whose client certificates the
/// API listener still accepts — and the current CA's certificate cross-signed by it, which the
/// listeners send after their own certificate so that clients that trust only the previous CA
/// still verify them. Files: `ca.pem`/`ca.key` (current), `ca-previous.pem`, `ca-cross.pem`.
final class CertificateAuthorities: Sendable {
    private struct State: Sendable {
        var current: CertificateAuthority
        var previous: Certificate?
        var cross: Certificate?
        var rotated: Date?
    }

    private let directory: DataDirectory
    private let state: Mutex<State>
    /// Whether a rotation or retirement is under way: one at a time.
    private let busy = Mutex(false)

    /// The CAs in `directory` (a rotation that a crash interrupted is finished first).
    init(directory: DataDirectory) throws {
        self.directory = directory
        try Self.finishRotation(directory)
        state = Mutex(try Self.load(directory))
    }

    /// A single CA (process tests without a data directory).
    init(_ authority: CertificateAuthority, directory: DataDirectory) {
        self.directory = directory
        state = Mutex(State(current: authority))
    }

    /// The CA that issues certificates now.
    var current: CertificateAuthority { state.withLock { $0.current } }
    /// The previous CA during an overlap.
    var previous: Certificate? { state.withLock { $0.previous } }
    /// The current CA cross-signed by the previous one, during an overlap.
    var cross: Certificate? { state.withLock { $0.cross } }
    /// When the overlap began.
    var rotated: Date? { state.withLock { $0.rotated } }

    /// What clients should trust now.
    var trust: CATrust {
        state.withLock { CATrust(current: $0.current.certificate.pem, previous: $0.previous?.pem, cross: $0.cross?.pem) }
    }

    /// The CAs whose client certificates the API listener accepts: the current one, and the
    /// previous one during an overlap.
    var trusted: [Certificate] { state.withLock { [$0.current.certificate] + ($0.previous.map { [$0] } ?? []) } }

    /// What follows the listeners' own certificate in the chain they send: the cross certificate
    /// during an overlap.
    var chainSuffix: String { cross.map(\.pem) ?? "" }

    /// The current CA and the chain suffix, read together (a renewal of the listeners'
    /// certificate must not pair one state's CA with another's suffix).
    var issuing: (CertificateAuthority, String) { state.withLock { ($0.current, $0.cross.map(\.pem) ?? "") } }

    /// Runs `body` as the one rotation or retirement under way; another one at the same time is
    /// refused (`conflict`).
    func exclusively<T>(_ body: () async throws -> T) async throws -> T {
        let taken = busy.withLock { running in
            if running { return false }
            running = true
            return true
        }
        guard taken else {
            throw KeyholdError(.conflict, "another CA rotation or retirement is under way", hint: "wait for it, then see 'keyhold-server ca status'")
        }
        defer { busy.withLock { $0 = false } }
        return try await body()
    }

    /// Makes a new CA, cross-signed by the current one, and makes it current; the old one stays
    /// trusted until ``retirePrevious()``. The files change in durable steps: the new key and
    /// certificate, the cross certificate and the old certificate are written beside the current
    /// files, then the new key and certificate are renamed over `ca.key` and `ca.pem` (a crash
    /// in between is finished by the next start). Refused during an overlap.
    func rotate(serverID: ServerID) throws -> CertificateAuthority {
        let old = state.withLock { $0 }
        guard old.previous == nil else {
            throw KeyholdError(
                .conflict, "a CA rotation is under way: the previous CA is still trusted",
                hint: "finish it first: 'keyhold-server ca status', then 'keyhold-server ca retire-old'")
        }
        let stamp = ISO8601DateFormatter.string(from: Date(), timeZone: .gmt, formatOptions: [.withFullDate, .withTime])
        let (next, keyPEM) = try CertificateAuthority.create(commonName: "Keyhold CA \(serverID) \(stamp)")
        let cross = try old.current.crossSign(next.certificate)
        try AtomicFileWriter.replace(directory.file(Self.nextKey), with: Data(keyPEM.utf8), mode: 0o600)
        try AtomicFileWriter.replace(directory.file(Self.crossFile), with: Data(cross.pem.utf8), mode: 0o644)
        try AtomicFileWriter.replace(directory.file(Self.previousFile), with: Data(old.current.certificate.pem.utf8), mode: 0o644)
        try AtomicFileWriter.replace(directory.file(Self.nextCertificate), with: Data(next.certificate.pem.utf8), mode: 0o644)
        try Self.finishRotation(directory)
        let loaded = try Self.load(directory)
        state.withLock { $0 = loaded }
        return next
    }

    /// Ends the overlap: the previous CA and the cross certificate are removed.
    func retirePrevious() throws {
        for name in [Self.crossFile, Self.previousFile] where FileManager.default.fileExists(atPath: directory.file(name)) {
            try FileManager.default.removeItem(atPath: directory.file(name))
        }
        try AtomicFileWriter.syncFolder(of: directory.caCertificate)
        state.withLock {
            $0.previous = nil
            $0.cross = nil
            $0.rotated = nil
        }
    }

    static let nextKey = "ca-next.key"
    static let nextCertificate = "ca-next.pem"
    static let previousFile = "ca-previous.pem"
    static let crossFile = "ca-cross.pem"

    /// Completes an interrupted rotation: `ca-next.pem` is written last, so its presence means
    /// that everything else was written. The key is renamed (and the folder synced) before the
    /// certificate, so a `ca-next.key` left alone is either a rotation that never got that far
    /// (discarded) or — should a file system reorder the renames anyway — the key of a
    /// certificate already in place (renamed after it).
    static func finishRotation(_ directory: DataDirectory) throws {
        let key = directory.file(nextKey)
        let certificate = directory.file(nextCertificate)
        guard FileManager.default.fileExists(atPath: certificate) else {
            guard FileManager.default.fileExists(atPath: key) else { return }
            let keyPEM = String(decoding: try directory.read(key), as: UTF8.self)
            let currentPEM = String(decoding: try directory.read(directory.caCertificate), as: UTF8.self)
            if let orphan = try? Certificate.PrivateKey(pemEncoded: keyPEM), let current = try? Certificate(pemEncoded: currentPEM),
                orphan.publicKey == current.publicKey
            {
                _ = try SystemCall.check("rename", path: key) { Foundation.rename(key, directory.caKey) }
                try AtomicFileWriter.syncFolder(of: directory.caKey)
            } else {
                try FileManager.default.removeItem(atPath: key)
            }
            return
        }
        if FileManager.default.fileExists(atPath: key) {
            _ = try SystemCall.check("rename", path: key) { Foundation.rename(key, directory.caKey) }
            try AtomicFileWriter.syncFolder(of: directory.caKey)
        }
        _ = try SystemCall.check("rename", path: certificate) { Foundation.rename(certificate, directory.caCertificate) }
        try AtomicFileWriter.syncFolder(of: directory.caCertificate)
    }

    private static func load(_ directory: DataDirectory) throws -> State {
        let current = try CertificateAuthority(
            certificatePEM: String(decoding: try directory.read(directory.caCertificate), as: UTF8.self),
            keyPEM: String(decoding: try directory.read(directory.caKey), as: UTF8.self))
        guard current.privateKey.publicKey == current.certificate.publicKey else {
            throw KeyholdError(
                .configuration, "\(directory.caKey) is not the key of \(directory.caCertificate)",
                hint: "restore ca.pem and ca.key (and ca-previous.pem, ca-cross.pem) from the same backup")
        }
        let previousPath = directory.file(previousFile)
        let crossPath = directory.file(crossFile)
        guard FileManager.default.fileExists(atPath: previousPath) else { return State(current: current) }
        let previous = try Certificate(pemEncoded: String(decoding: try directory.read(previousPath), as: UTF8.self))
        // A rotation that stopped before the new CA was in place left the old one as "previous".
        if previous == current.certificate {
            try? FileManager.default.removeItem(atPath: previousPath)
            try? FileManager.default.removeItem(atPath: crossPath)
            return State(current: current)
        }
        // An overlap without its cross certificate would silently stop clients that know only the
        // old CA from verifying this server: refuse to start instead.
        guard let cross = try? Certificate(pemEncoded: String(decoding: try directory.read(crossPath), as: UTF8.self)),
            cross.publicKey == current.certificate.publicKey, cross.subject == current.certificate.subject, cross.issuer == previous.subject
        else {
            throw KeyholdError(
                .configuration, "a CA rotation is under way but \(crossPath) is missing or does not cross-sign \(directory.caCertificate)",
                hint: "copy ca-cross.pem from the data directory where 'ca rotate' ran (with ca.pem, ca.key and ca-previous.pem)")
        }
        let rotated = (try? FileManager.default.attributesOfItem(atPath: previousPath))?[.modificationDate] as? Date
        return State(current: current, previous: previous, cross: cross, rotated: rotated)
    }
}

extension ServerCore {
    /// The CA part of `status` from `clients`: during an overlap, the active clients whose
    /// certificate the previous CA issued (a renewed one not presented yet does not count).
    func caStatus(_ clients: [EnrolledClient]) -> CAStatus {
        let current = authority.current
        let previous = authority.previous
        let holders =
            previous == nil
            ? [] : clients.filter { $0.state == .active && $0.certificateIssuer != current.fingerprint }.sorted { $0.enrolled < $1.enrolled }
        return CAStatus(
            current: current.fingerprint, currentExpires: current.certificate.notValidAfter,
            previous: previous.map(CertificateAuthority.fingerprint), rotated: authority.rotated,
            onPrevious: holders.prefix(100).map { CAHolder(id: $0.id, role: $0.role, name: $0.name) }, onPreviousCount: holders.count)
    }

    /// `GET /v1/admin/ca`.
    func caStatus() async throws -> CAStatus { caStatus(try await repository.listClients(role: nil)) }

    /// `POST /v1/admin/ca/rotate`: a new CA, cross-signed by the current one, issues every
    /// certificate from now on; both are trusted until `ca retire-old`. The API listener accepts
    /// client certificates of both from the next connection, the listeners' certificate is
    /// renewed under the new CA and sent with the cross certificate (so clients that trust only
    /// the old CA still verify it), and `admin.pem` in the data directory is re-issued under the
    /// new CA for the same key. Clients learn the new CA at their next heartbeat or push and
    /// renew their certificates under it. Audited `ca_rotate`.
    func rotateCA(by caller: Caller) async throws -> CAStatus {
        try await authority.exclusively {
            let old = authority.current
            let next = try authority.rotate(serverID: serverID)
            // Recorded at once: what follows is redone by every start during the overlap.
            try await repository.appendAudit(
                AuditEvent(
                    actor: caller.actor, action: .caRotate, route: .adminAPI, result: .ok,
                    detail:
                        "new CA \(next.fingerprint.prefix(16)), cross-signed by \(old.fingerprint.prefix(16)), which stays trusted until ca retire-old"
                ))
            logger.notice("CA rotated", metadata: ["new": "\(next.fingerprint.prefix(16))", "old": "\(old.fingerprint.prefix(16))"])
            try await completeRotation(actor: caller.actor)
            return try await caStatus()
        }
    }

    /// The steps of a rotation after the new CA is in place, each done only if it is still to
    /// do, so that a start during the overlap finishes what a crash interrupted: the API listener
    /// trusts both CAs, the listeners' certificate comes from the new CA with the cross
    /// certificate after it, `admin.pem` comes from the new CA.
    func completeRotation(actor: AuditActor) async throws {
        guard authority.previous != nil else { return }
        try apiTLS?.reload(trusting: authority.trusted)
        let (current, suffix) = authority.issuing
        if let served, !current.issued(served.certificate) || !served.chain(endsWith: suffix) {
            try served.renew(authorities: authority, serverID: serverID, lifetime: certificateLifetimes.tls)
        }
        try await reissueLocalAdministrator(under: current, actor: actor)
    }

    /// `POST /v1/admin/ca/retire-old`: ends the overlap once no active client holds a certificate
    /// from the previous CA (refused with the holders otherwise): the previous CA is no longer
    /// trusted, and the listeners' certificate is renewed without the cross certificate.
    /// Audited `ca_retire`.
    func retireOldCA(by caller: Caller) async throws -> CAStatus {
        try await authority.exclusively { try await retire(by: caller) }
    }

    private func retire(by caller: Caller) async throws -> CAStatus {
        guard let previous = authority.previous else {
            throw KeyholdError(.usage, "no CA rotation is under way: only the current CA is trusted", hint: "see 'keyhold-server ca status'")
        }
        let status = try await caStatus()
        guard status.onPreviousCount == 0 else {
            let names = status.onPrevious.prefix(5).map { "\($0.role) \(PrintableText.escaped($0.name)) (\($0.id))" }.joined(separator: ", ")
            throw KeyholdError(
                .conflict,
                "\(status.onPreviousCount) active client\(status.onPreviousCount == 1 ? " still holds a certificate" : "s still hold certificates") from the previous CA: \(names)\(status.onPreviousCount > 5 ? ", …" : "")",
                hint:
                    "they renew at their next heartbeat or push; wait, or revoke the ones that are gone, then try again ('keyhold-server ca status')"
            )
        }
        try authority.retirePrevious()
        try apiTLS?.reload(trusting: authority.trusted)
        if let served { try served.renew(authorities: authority, serverID: serverID, lifetime: certificateLifetimes.tls) }
        try await repository.appendAudit(
            AuditEvent(
                actor: caller.actor, action: .caRetire, route: .adminAPI, result: .ok,
                detail: "CA \(CertificateAuthority.fingerprint(previous).prefix(16)) no longer trusted"))
        logger.notice("previous CA retired", metadata: ["retired": "\(CertificateAuthority.fingerprint(previous).prefix(16))"])
        return try await caStatus()
    }

    /// `admin.pem` of the data directory, re-issued under `ca` for the same key and offered as
    /// that administrator's next certificate (adopted when it is first presented).
    private func reissueLocalAdministrator(under ca: CertificateAuthority, actor: AuditActor) async throws {
        guard let pem = try? String(contentsOfFile: directory.adminCertificate, encoding: .utf8), let old = try? Certificate(pemEncoded: pem),
            let identity = CertificateIdentity(certificate: old), identity.role == .admin, !ca.issued(old)
        else { return }
        let fingerprint = CertificateAuthority.fingerprint(old)
        guard let admin = try await repository.client(id: identity.id), admin.state == .active, admin.certificateFingerprint == fingerprint else {
            return
        }
        let next = try ca.reissueClientCertificate(old, identity: identity, name: admin.name)
        let offered = try await repository.offerCertificate(
            id: admin.id, current: fingerprint, next: CertificateAuthority.fingerprint(next), expires: next.notValidAfter, issuer: ca.fingerprint,
            audit: AuditEvent(
                actor: actor, action: .certificateRenew, route: .adminAPI, result: .ok,
                detail: "admin.pem of administrator \(admin.id) re-issued under the new CA"))
        if offered { try AtomicFileWriter.replace(directory.adminCertificate, with: Data(next.pem.utf8), mode: 0o644) }
    }
}
