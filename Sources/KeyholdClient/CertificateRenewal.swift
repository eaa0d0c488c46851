public import Foundation
import KeyholdCore
public import KeyholdProtocol
import SwiftASN1
import X509

/// Renewing a client certificate before it expires (docs/operations.md, "Certificate renewal"):
/// once two thirds of its lifetime have passed, the client makes a new key pair here, sends a CSR
/// over its current mutual-TLS connection and gets a certificate for the same role and id. It
/// keeps the old certificate and key until the new one has been used once; the server accepts
/// both until then.
extension EnrolledIdentity {
    /// When the current certificate stops being valid (nil if it does not parse).
    public var certificateExpires: Date? { (try? Certificate(pemEncoded: certificatePEM))?.notValidAfter }

    /// Whether the certificate should be renewed now: two thirds of its lifetime have passed.
    public func renewalDue(now: Date = Date()) -> Bool {
        guard let certificate = try? Certificate(pemEncoded: certificatePEM) else { return false }
        return CertificateRenewal.isDue(notValidBefore: certificate.notValidBefore, notValidAfter: certificate.notValidAfter, now: now)
    }

    /// Asks the server for a renewed certificate over `client` (this identity's current
    /// certificate) and returns the identity to save: the new certificate and key, the current
    /// ones kept as ``previousCertificatePEM``/``previousKeyPEM``. Nothing is written here.
    public func renewed(over client: APIClient) async throws -> EnrolledIdentity {
        let key = try ClientKey(name: "keyhold \(role) \(clientID)")
        let answer = try await client.post(APIPath.certificateRenew, CertificateRenewRequest(csrPEM: key.csrPEM), as: CertificateRenewResponse.self)
        try key.checkIssued(answer.certificatePEM, caPEM: caPEM)
        let issued = try Certificate(pemEncoded: answer.certificatePEM)
        guard (try? issued.extensions.subjectAlternativeNames)?.contains(.uniformResourceIdentifier("urn:keyhold:\(role):\(clientID)")) == true
        else {
            throw KeyholdError(
                .internalError, "the server renewed this certificate for another identity than \(role) \(clientID)",
                hint: "report this; the current certificate stays in use")
        }
        var next = self
        next.previousCertificatePEM = certificatePEM
        next.previousKeyPEM = keyPEM
        next.certificatePEM = answer.certificatePEM
        next.keyPEM = key.privateKeyPEM
        return next
    }

    /// This identity once its new certificate was used: the previous one forgotten.
    public var confirmed: EnrolledIdentity {
        var next = self
        next.previousCertificatePEM = nil
        next.previousKeyPEM = nil
        return next
    }

    /// The identity with the certificate this one renewed, if it still holds it (the server
    /// refused the new one).
    public var reverted: EnrolledIdentity? {
        guard let previousCertificatePEM, let previousKeyPEM else { return nil }
        var next = self
        next.certificatePEM = previousCertificatePEM
        next.keyPEM = previousKeyPEM
        next.previousCertificatePEM = nil
        next.previousKeyPEM = nil
        return next
    }
}
