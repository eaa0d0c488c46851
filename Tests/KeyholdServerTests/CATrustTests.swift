import Foundation
import KeyholdClient
import KeyholdCore
import KeyholdProtocol
import KeyholdTestSupport
import SwiftASN1
import Testing
import X509

@testable import KeyholdServer

/// What a client trusts after a server names its CAs (docs/operations.md, "CA rotation"): a new
/// CA only through a cross-signature by one it trusts, never an arbitrary one, never back.
@Suite struct CATrustTests {
    static func ca(_ name: String) throws -> CertificateAuthority { try CertificateAuthority.create(commonName: name).0 }

    @Test func aNewCAIsAdoptedOnlyThroughACrossSignatureByATrustedOne() throws {
        let old = try Self.ca("old")
        let new = try Self.ca("new")
        let held = old.certificate.pem
        let rotation = CATrust(current: new.certificate.pem, previous: old.certificate.pem, cross: try old.crossSign(new.certificate).pem)

        // The overlap: both trusted, the current one first.
        let overlap = try #require(try CATrustStore.adopt(rotation, held: held))
        #expect(overlap.components(separatedBy: "BEGIN CERTIFICATE").count - 1 == 2)
        #expect(overlap.hasPrefix(new.certificate.pem.prefix(40)))
        #expect(try CATrustStore.adopt(rotation, held: overlap) == nil, "nothing changes on the next heartbeat")
        // The end of the overlap: the new one alone.
        let after = try #require(try CATrustStore.adopt(CATrust(current: new.certificate.pem), held: overlap))
        #expect(after.components(separatedBy: "BEGIN CERTIFICATE").count - 1 == 1)
        // Never back: a server still on the old CA names it as current.
        #expect(try CATrustStore.adopt(CATrust(current: old.certificate.pem), held: overlap) == nil)

        // Refused: no cross, a cross by a CA not trusted, a "cross" that is not a CA certificate.
        let stranger = try Self.ca("stranger")
        #expect(throws: KeyholdError.self) { _ = try CATrustStore.adopt(CATrust(current: new.certificate.pem), held: held) }
        #expect(throws: KeyholdError.self) {
            _ = try CATrustStore.adopt(CATrust(current: new.certificate.pem, cross: try stranger.crossSign(new.certificate).pem), held: held)
        }
        let leafKey = try ClientKey(name: "not a CA")
        let leaf = try old.issueClientCertificate(
            csr: try CertificateSigningRequest(pemEncoded: leafKey.csrPEM), identity: CertificateIdentity(role: .device, id: .random()), name: "d")
        #expect(throws: KeyholdError.self) {
            _ = try CATrustStore.adopt(CATrust(current: new.certificate.pem, cross: leaf.pem), held: held)
        }
    }
}
