import Crypto
import Foundation
import KeyholdCore
import SwiftASN1
import X509

/// A new client key pair made here, and the certificate request that asks a server to certify
/// it: the private key never leaves the machine that made it (enrollment, `admin add`).
public struct ClientKey: Sendable {
    private let key: P256.Signing.PrivateKey
    /// The certificate signing request (PKCS#10, PEM), its subject's common name `name`.
    public let csrPEM: String

    /// A new P-256 key and its request, the common name `name` (cut to 64 characters).
    public init(name: String) throws {
        key = P256.Signing.PrivateKey()
        let csr = try CertificateSigningRequest(
            version: .v1, subject: try DistinguishedName { CommonName(String(name.prefix(64))) },
            privateKey: .init(key), attributes: .init(), signatureAlgorithm: .ecdsaWithSHA256
        )
        csrPEM = try csr.serializeAsPEM().pemString
    }

    /// The private key (PKCS#8 PEM): secret, to be written only to a 0600 file.
    public var privateKeyPEM: String { key.pemRepresentation }

    /// Checks that `certificatePEM` carries this key and is signed by a CA in `caPEM` (one CA, or
    /// during a CA rotation's overlap the current and the previous one).
    public func checkIssued(_ certificatePEM: String, caPEM: String) throws {
        let issued = try Certificate(pemEncoded: certificatePEM)
        guard issued.publicKey == Certificate.PublicKey(key.publicKey),
            try CATrustStore.certificates(caPEM).contains(where: { CATrustStore.issued(issued, by: $0) })
        else {
            throw KeyholdError(
                .internalError, "the server returned a certificate that is not ours or not from its CA", hint: "report this; do not use this server")
        }
    }
}
