import Foundation
import KeyholdCore
import KeyholdProtocol
import KeyholdStore
import KeyholdSystem
import Logging
import NIOCore
import NIOSSL
import ServiceLifecycle
import SwiftASN1
import Synchronization
import X509

/// The TLS certificate both listeners present, replaceable while the server runs: every TLS
/// handshake asks for the current one (swift-nio-ssl's context callback, called once per client
/// hello), so a renewed certificate is served from the next connection on, without a restart.
/// Devices and secondaries pin the CA, not this certificate, so nothing else changes.
final class ServedCertificate: Sendable {
    private struct Loaded: Sendable {
        let chain: [NIOSSLCertificate]
        let key: NIOSSLPrivateKey
        let certificate: Certificate
    }

    private let directory: DataDirectory
    private let current: Mutex<Loaded>
    /// Renewals one at a time: they write the same `.next` files.
    private let renewing = Mutex(())

    /// The certificate in the data directory (an interrupted replacement finished first).
    init(directory: DataDirectory) throws {
        self.directory = directory
        try Self.finishReplacement(directory)
        current = Mutex(try Self.load(directory))
    }

    /// The certificate served now.
    var certificate: Certificate { current.withLock { $0.certificate } }

    /// The chain and key served now, in the form a TLS configuration takes.
    var chainAndKey: (chain: [NIOSSLCertificateSource], key: NIOSSLPrivateKeySource) {
        current.withLock { ($0.chain.map { .certificate($0) }, .privateKey($0.key)) }
    }

    /// The callback that hands each handshake the current certificate and key.
    var contextCallback: NIOSSLContextCallback {
        { [self] _, promise in
            let (chain, key) = self.chainAndKey
            var override = NIOSSLContextConfigurationOverride()
            override.certificateChain = chain
            override.privateKey = key
            promise.succeed(override)
        }
    }

    /// Whether two thirds of the served certificate's lifetime have passed.
    func renewalDue(now: Date = Date()) -> Bool {
        let c = certificate
        return CertificateRenewal.isDue(notValidBefore: c.notValidBefore, notValidAfter: c.notValidAfter, now: now)
    }

    /// Issues a new certificate (a new key, the same names) valid for `lifetime`, replaces
    /// `tls.pem` and `tls.key` as a pair and serves it from the next handshake on. `chainSuffix`
    /// (PEM) follows the certificate in `tls.pem` and in the chain sent: during a CA rotation's
    /// overlap, the new CA cross-signed by the old one.
    @discardableResult
    func renew(authority: CertificateAuthority, serverID: ServerID, lifetime: TimeInterval, chainSuffix: String = "") throws -> Certificate {
        try renewing.withLock { _ in try renewNow(authority, chainSuffix, serverID: serverID, lifetime: lifetime) }
    }

    /// ``renew(authority:serverID:lifetime:chainSuffix:)`` with the CA and chain suffix that
    /// `authorities` hold when the renewal's turn comes.
    @discardableResult
    func renew(authorities: CertificateAuthorities, serverID: ServerID, lifetime: TimeInterval) throws -> Certificate {
        try renewing.withLock { _ in
            let (authority, suffix) = authorities.issuing
            return try renewNow(authority, suffix, serverID: serverID, lifetime: lifetime)
        }
    }

    private func renewNow(_ authority: CertificateAuthority, _ chainSuffix: String, serverID: ServerID, lifetime: TimeInterval) throws -> Certificate
    {
        let sans = Array(try certificate.extensions.subjectAlternativeNames ?? SubjectAlternativeNames([]))
        let (next, keyPEM) = try authority.issueServerCertificate(serverID: serverID, sans: sans, lifetime: lifetime)
        try Self.replace(directory, certificatePEM: Self.pemLine(next.pem) + chainSuffix, keyPEM: keyPEM)
        let loaded = try Self.load(directory)
        current.withLock { $0 = loaded }
        return loaded.certificate
    }

    /// Whether the chain served now ends with the certificates in `suffix` (PEM; empty: any chain).
    func chain(endsWith suffix: String) -> Bool {
        guard let wanted = try? PEMDocument.parseMultiple(pemString: suffix), !wanted.isEmpty else { return true }
        guard let pem = try? String(contentsOfFile: directory.tlsCertificate, encoding: .utf8),
            let served = try? PEMDocument.parseMultiple(pemString: pem)
        else { return false }
        return served.count > wanted.count && Array(served.suffix(wanted.count).map(\.derBytes)) == wanted.map(\.derBytes)
    }

    /// The audit record of a renewal (`tls_renew`) that produced `next`, with `how` before the
    /// certificate's fingerprint and expiry in its detail.
    static func renewalAudit(_ next: Certificate, actor: AuditActor, route: AuditRoute, how: String = "") -> AuditEvent {
        AuditEvent(
            actor: actor, action: .tlsRenew, route: route, result: .ok,
            detail:
                "\(how)new TLS certificate \(CertificateAuthority.fingerprint(next).prefix(16)), expires \(ISO8601DateFormatter().string(from: next.notValidAfter))"
        )
    }

    private static func load(_ directory: DataDirectory) throws -> Loaded {
        let pem = String(decoding: try directory.read(directory.tlsCertificate), as: UTF8.self)
        let chain = try NIOSSLCertificate.fromPEMBytes(Array(pem.utf8))
        let key = try NIOSSLPrivateKey(bytes: Array(try directory.read(directory.tlsKey)), format: .pem)
        return Loaded(chain: chain, key: key, certificate: try Self.leaf(pem))
    }

    /// The first certificate of a PEM chain (the server's own; what follows are CA certificates).
    static func leaf(_ pem: String) throws -> Certificate {
        guard let first = try PEMDocument.parseMultiple(pemString: pem).first else {
            throw KeyholdError(.configuration, "tls.pem holds no certificate", hint: "restore the data directory from a backup")
        }
        return try Certificate(pemDocument: first)
    }

    /// `pem` ending in a newline, so that another PEM block can follow it.
    static func pemLine(_ pem: String) -> String { pem.hasSuffix("\n") ? pem : pem + "\n" }

    /// The pair is replaced in three durable steps: both new files written beside the old ones
    /// (`tls.key.next`, `tls.pem.next`), then the key renamed over `tls.key`, then the certificate
    /// over `tls.pem`. A crash in between leaves `tls.pem.next`, and ``finishReplacement(_:)``
    /// completes the same steps at the next start: the pair on disk always matches once it runs.
    private static func replace(_ directory: DataDirectory, certificatePEM: String, keyPEM: String) throws {
        let keyNext = directory.tlsKey + ".next"
        let certificateNext = directory.tlsCertificate + ".next"
        try AtomicFileWriter.replace(keyNext, with: Data(keyPEM.utf8), mode: 0o600)
        try AtomicFileWriter.replace(certificateNext, with: Data(certificatePEM.utf8), mode: 0o644)
        try finishReplacement(directory)
    }

    /// Completes a replacement a crash interrupted (nothing to do when none was under way).
    static func finishReplacement(_ directory: DataDirectory) throws {
        let keyNext = directory.tlsKey + ".next"
        let certificateNext = directory.tlsCertificate + ".next"
        guard FileManager.default.fileExists(atPath: certificateNext) else {
            // A key written without its certificate: the replacement never got that far.
            if FileManager.default.fileExists(atPath: keyNext) { try FileManager.default.removeItem(atPath: keyNext) }
            return
        }
        if FileManager.default.fileExists(atPath: keyNext) {
            _ = try SystemCall.check("rename", path: keyNext) { rename(keyNext, directory.tlsKey) }
        }
        _ = try SystemCall.check("rename", path: certificateNext) { rename(certificateNext, directory.tlsCertificate) }
        try AtomicFileWriter.syncFolder(of: directory.tlsCertificate)
    }
}

/// Renews the served certificate once two thirds of its lifetime have passed (checked every
/// second), until the group shuts down; a failed renewal is tried again a minute later.
struct TLSRenewal: Service {
    let served: ServedCertificate
    let authority: CertificateAuthorities
    let serverID: ServerID
    let lifetime: TimeInterval
    let repository: any Repository
    let logger: Logger

    func run() async throws {
        var retryAfter = Date.distantPast
        while !Task.isShuttingDownGracefully, !Task.isCancelled {
            if served.renewalDue(), Date() >= retryAfter {
                do {
                    let next = try served.renew(authorities: authority, serverID: serverID, lifetime: lifetime)
                    try? await repository.appendAudit(
                        ServedCertificate.renewalAudit(next, actor: .server(serverID), route: .local, how: "renewed by the server: "))
                    logger.notice("TLS certificate renewed", metadata: ["expires": "\(ISO8601DateFormatter().string(from: next.notValidAfter))"])
                } catch {
                    logger.error("TLS certificate renewal failed; trying again in a minute", metadata: ["error": "\(error)"])
                    retryAfter = Date().addingTimeInterval(60)
                }
            }
            // A check is a look at the certificate in memory, so it can come every second: a
            // certificate renewed on demand with a short lifetime is then watched as closely.
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: .seconds(1)) }
        }
    }
}
