import Foundation
import KeyholdCore
import KeyholdTestSupport
import SwiftASN1
import Testing
import X509

@testable import KeyholdServer

/// The TLS certificate's replacement on disk (docs/operations.md, "The server's TLS
/// certificate"): however a crash cut it, the next start leaves a `tls.pem` and `tls.key` that
/// belong together, and no `.next` file.
@Suite struct ServedCertificateTests {
    /// A data directory with a CA, a TLS pair, and the pair a renewal would write beside it.
    static func directory() throws -> (DataDirectory, CertificateAuthority, next: (pem: String, key: String)) {
        let dir = DataDirectory(try Paths.temporaryFolder("served").path)
        let serverID = ServerID.random()
        let (authority, _) = try CertificateAuthority.create(serverID: serverID, name: "served")
        let (tls, key) = try authority.issueServerCertificate(serverID: serverID, names: ["127.0.0.1"])
        try dir.write("tls.pem", Data(tls.pem.utf8), mode: 0o644)
        try dir.write("tls.key", Data(key.utf8), mode: 0o600)
        let (next, nextKey) = try authority.issueServerCertificate(serverID: serverID, names: ["127.0.0.1"])
        return (dir, authority, (next.pem, nextKey))
    }

    /// Whether the private key in `tls.key` is the one `tls.pem` certifies.
    static func matches(_ dir: DataDirectory) throws -> Bool {
        let certificate = try Certificate(pemEncoded: String(decoding: try dir.read(dir.tlsCertificate), as: UTF8.self))
        let key = try Certificate.PrivateKey(pemEncoded: String(decoding: try dir.read(dir.tlsKey), as: UTF8.self))
        return certificate.publicKey == key.publicKey
    }

    static func leftovers(_ dir: DataDirectory) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasSuffix(".next") }
    }

    @Test func aCrashAfterBothFilesWereWrittenIsCompletedAtStart() throws {
        let (dir, _, next) = try Self.directory()
        try dir.write("tls.key.next", Data(next.key.utf8), mode: 0o600)
        try dir.write("tls.pem.next", Data(next.pem.utf8), mode: 0o644)
        let served = try ServedCertificate(directory: dir)
        #expect(served.certificate == (try Certificate(pemEncoded: next.pem)))
        #expect(try Self.matches(dir) && (try Self.leftovers(dir)).isEmpty)
    }

    @Test func aCrashAfterTheKeyWasRenamedIsCompletedAtStart() throws {
        let (dir, _, next) = try Self.directory()
        try dir.write("tls.key", Data(next.key.utf8), mode: 0o600)
        try dir.write("tls.pem.next", Data(next.pem.utf8), mode: 0o644)
        #expect(try !Self.matches(dir), "the state a crash between the two renames leaves")
        let served = try ServedCertificate(directory: dir)
        #expect(served.certificate == (try Certificate(pemEncoded: next.pem)))
        #expect(try Self.matches(dir) && (try Self.leftovers(dir)).isEmpty)
    }

    @Test func aKeyWrittenWithoutItsCertificateIsDropped() throws {
        let (dir, _, next) = try Self.directory()
        let before = try dir.read(dir.tlsCertificate)
        try dir.write("tls.key.next", Data(next.key.utf8), mode: 0o600)
        _ = try ServedCertificate(directory: dir)
        #expect(try dir.read(dir.tlsCertificate) == before)
        #expect(try Self.matches(dir) && (try Self.leftovers(dir)).isEmpty)
    }

    @Test func aRenewalKeepsTheNamesAndTakesTheNewLifetime() throws {
        let (dir, authority, _) = try Self.directory()
        let served = try ServedCertificate(directory: dir)
        let old = served.certificate
        let renewed = try served.renew(authority: authority, serverID: .random(), lifetime: 600)
        #expect(served.certificate == renewed && renewed != old)
        #expect(try renewed.extensions.subjectAlternativeNames == old.extensions.subjectAlternativeNames)
        #expect(abs(renewed.notValidAfter.timeIntervalSinceNow - 600) < 5)
        #expect(try Self.matches(dir) && (try Self.leftovers(dir)).isEmpty)
        #expect(!served.renewalDue() && served.renewalDue(now: Date().addingTimeInterval(400)))
    }
}
