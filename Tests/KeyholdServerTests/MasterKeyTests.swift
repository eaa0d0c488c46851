import Crypto
import Foundation
import KeyholdCore
import KeyholdProtocol
import SwiftASN1
import Testing
import X509

@testable import KeyholdServer

@Suite struct MasterKeyTests {
    @Test func wrapIsBoundToTheKeyID() throws {
        let master = MasterKey(.generate())
        let secret = SecretKey.generate()
        let id = KeyID.random()
        let wrapped = try master.wrap(secret, keyID: id)
        #expect(wrapped.count == 12 + 32 + 16)
        #expect(try master.unwrap(wrapped, keyID: id).constantTimeEquals(secret))
        // The same wrapped bytes under another key id (a row copied onto another id) do not unwrap.
        #expect(throws: KeyholdError.self) { _ = try master.unwrap(wrapped, keyID: .random()) }
        // Nor under another master key.
        #expect(throws: KeyholdError.self) { _ = try MasterKey(.generate()).unwrap(wrapped, keyID: id) }
        // Wrapping is randomised; the fingerprint is not.
        #expect(try master.wrap(secret, keyID: id) != wrapped)
        #expect(master.fingerprint(secret, keyID: id) == master.fingerprint(secret, keyID: id))
        #expect(master.fingerprint(secret, keyID: id) != master.fingerprint(.generate(), keyID: id))
        #expect(master.fingerprint(secret, keyID: id) != MasterKey(.generate()).fingerprint(secret, keyID: id))
    }

    @Test func issuedCertificatesCarryTheIdentityAndVerify() throws {
        let (ca, _) = try CertificateAuthority.create(serverID: .random(), name: "t")
        let key = P256.Signing.PrivateKey()
        let csr = try CertificateSigningRequest(
            version: .v1, subject: try DistinguishedName { CommonName("laptop") }, privateKey: .init(key),
            attributes: .init(), signatureAlgorithm: .ecdsaWithSHA256
        )
        let identity = CertificateIdentity(role: .device, id: .random())
        let cert = try ca.issueClientCertificate(csr: csr, identity: identity, name: "laptop")
        #expect(CertificateIdentity(certificate: cert) == identity)
        #expect(cert.publicKey == Certificate.PublicKey(key.publicKey))
        #expect(ca.certificate.publicKey.isValidSignature(cert.signature, for: cert))
        #expect(try cert.extensions.extendedKeyUsage?.contains(.clientAuth) == true)
        #expect(try cert.extensions.basicConstraints == .notCertificateAuthority)
    }

    @Test func aCSRWithAForgedSignatureIsRefused() throws {
        let (ca, _) = try CertificateAuthority.create(serverID: .random(), name: "t")
        let mine = P256.Signing.PrivateKey()
        let victim = P256.Signing.PrivateKey()
        let real = try CertificateSigningRequest(
            version: .v1, subject: try DistinguishedName { CommonName("x") }, privateKey: .init(mine),
            attributes: .init(), signatureAlgorithm: .ecdsaWithSHA256
        )
        // Swap in another public key: the signature no longer matches.
        let forged = try CertificateSigningRequest(
            version: real.version, subject: real.subject, publicKey: .init(victim.publicKey), attributes: real.attributes,
            signatureAlgorithm: real.signatureAlgorithm, signature: real.signature
        )
        #expect(throws: KeyholdError.self) {
            _ = try ca.issueClientCertificate(csr: forged, identity: .init(role: .device, id: .random()), name: "x")
        }
    }
}
