import Crypto
import Foundation
import KeyholdCore
import KeyholdProtocol
import KeyholdStore
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

    @Test func aLegacyMasterKeyIsVersionOneAndItsSecretsStayReadableAfterARotation() throws {
        let legacy = SecretKey.generate()
        let before = MasterKey(legacy)
        let id = KeyID.random()
        let secret = SecretKey.generate()
        let v1 = try before.wrap(secret, keyID: id)
        #expect(v1.count == WrappedSecretHeader.bareCount && WrappedSecretHeader.version(of: v1) == 1, "version 1 has no header")

        // The 32-byte file reads as version 1; a version added, written as JSON, read back.
        var file = try MasterKeyFile(contents: legacy.withUnsafeBytes { Data($0) }, path: "master.key")
        #expect(file.versions.map(\.version) == [1])
        file.add(version: 2, now: Date(timeIntervalSince1970: 1_800_000_000))  // whole seconds: the file's dates are ISO 8601
        let reread = try MasterKeyFile(contents: try file.encoded(), path: "master.key")
        #expect(reread == file)
        let ring = MasterKey(file: reread)
        #expect(ring.currentVersion == 2 && ring.versions == [1, 2])
        #expect(try ring.unwrap(v1, keyID: id).constantTimeEquals(secret))
        let v2 = try ring.wrap(secret, keyID: id)
        #expect(v2.count == WrappedSecretHeader.count + WrappedSecretHeader.bareCount)
        #expect(Array(v2.prefix(4)) == Array("KM".utf8) + [0, 2] && WrappedSecretHeader.version(of: v2) == 2)
        #expect(try ring.unwrap(v2, keyID: id).constantTimeEquals(secret))
        // The fingerprint is the same across versions: equal secrets still look equal.
        #expect(ring.fingerprint(secret, keyID: id) == before.fingerprint(secret, keyID: id))

        // The header is authenticated: relabelled as version 3 — here the same key under another
        // number — the bytes do not unwrap.
        var twin = file
        twin.versions.append(.init(version: 3, key: file.versions[1].key, created: Date()))
        var relabelled = v2
        relabelled[3] = 3
        #expect(throws: KeyholdError.self) { _ = try MasterKey(file: twin).unwrap(relabelled, keyID: id) }
        #expect(try MasterKey(file: twin).unwrap(v2, keyID: id).constantTimeEquals(secret))
        // A process without the version says which one it lacks.
        #expect {
            _ = try before.unwrap(v2, keyID: id)
        } throws: { error in
            (error as? KeyholdError)?.message.contains("version 2") == true && (error as? KeyholdError)?.hint.contains("master.key") == true
        }

        // Wrapping follows `use(current:)`, and only to versions the ring holds.
        #expect(ring.use(current: 1))
        #expect(WrappedSecretHeader.version(of: try ring.wrap(secret, keyID: id)) == 1)
        // Told to use a version it lacks, it wraps nothing (rather than under an older version).
        #expect(!ring.use(current: 9))
        #expect(throws: KeyholdError.self) { _ = try ring.wrap(secret, keyID: id) }
        #expect(try ring.unwrap(v2, keyID: id).constantTimeEquals(secret), "reading goes on")
        #expect(ring.use(current: 2))
        // A reload without version 1 (retired) keeps reading version 2 and wraps under it.
        var retired = reread
        retired.versions.removeAll { $0.version == 1 }
        ring.reload(retired)
        #expect(ring.versions == [2] && ring.currentVersion == 2)
        #expect(WrappedSecretHeader.version(of: try ring.wrap(secret, keyID: id)) == 2)
        #expect(throws: KeyholdError.self) { _ = try ring.unwrap(v1, keyID: id) }
        #expect(try ring.unwrap(v2, keyID: id).constantTimeEquals(secret))
        #expect(ring.fingerprint(secret, keyID: id) == before.fingerprint(secret, keyID: id), "the fingerprint key outlives version 1")
    }

    @Test func aDamagedMasterKeyFileIsRefusedWithAHint() throws {
        var file = MasterKeyFile(legacy: .generate())
        file.add(version: 2)
        func variant(_ change: (inout MasterKeyFile) -> Void) throws -> String {
            var copy = file
            change(&copy)
            return String(decoding: try copy.encoded(), as: UTF8.self)
        }
        let good = String(decoding: try file.encoded(), as: UTF8.self)
        let damaged = [
            "", "{}", String(good.dropLast(3)), try variant { $0.format = "keyhold-master-key/9" },
            try variant { $0.versions[1].version = 1 }, try variant { $0.versions[1].version = 70_000 },
            try variant { $0.versions[0].key = Data(count: 16) }, try variant { $0.versions = [] },
            try variant { $0.fingerprintKey = Data(count: 31) },
        ]
        for text in damaged {
            #expect(text != good)
            #expect {
                _ = try MasterKeyFile(contents: Data(text.utf8), path: "/d/master.key")
            } throws: { error in
                (error as? KeyholdError)?.message.contains("/d/master.key") == true && (error as? KeyholdError)?.hint.isEmpty == false
            }
        }
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
