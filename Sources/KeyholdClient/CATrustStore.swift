public import Foundation
import KeyholdCore
public import KeyholdProtocol
import SwiftASN1
import X509

/// The CAs a client trusts for its server (docs/operations.md, "CA rotation"), kept as one PEM
/// bundle in ``EnrolledIdentity/caPEM``: one CA, or during a rotation's overlap the current and
/// the previous one. A client adopts a new CA only through a cross-signature by a CA it already
/// trusts, so the server it talks to cannot hand it an arbitrary one.
public enum CATrustStore {
    /// The certificates of a PEM bundle.
    static func certificates(_ pem: String) throws -> [Certificate] {
        try PEMDocument.parseMultiple(pemString: pem).map { try Certificate(pemDocument: $0) }
    }

    /// Whether `certificate` is a CA certificate (basic constraints, certificate signing) valid at `now`.
    static func isCA(_ certificate: Certificate, now: Date) -> Bool {
        guard certificate.notValidBefore <= now, now < certificate.notValidAfter,
            let constraints = try? certificate.extensions.basicConstraints, case .isCertificateAuthority = constraints,
            let usage = try? certificate.extensions.keyUsage, usage.keyCertSign
        else { return false }
        return true
    }

    /// Whether `ca` issued `certificate` (its name and signature).
    static func issued(_ certificate: Certificate, by ca: Certificate) -> Bool {
        certificate.issuer == ca.subject && ca.publicKey.isValidSignature(certificate.signature, for: certificate)
    }

    /// The bundle to trust after the server said `trust`, given the bundle `held`; nil when
    /// nothing changes. The current CA must be trusted already or cross-signed (``CATrust/cross``)
    /// by a CA trusted already; the previous CA is kept only if it is trusted already; without a
    /// previous CA (the overlap ended) only the current one stays. Throws when the current CA
    /// cannot be trusted.
    public static func adopt(_ trust: CATrust, held: String, now: Date = Date()) throws -> String? {
        let trusted = try certificates(held)
        let current = try Certificate(pemEncoded: trust.current)
        // Never back: a CA held as the previous one (the bundle's first is the current one) does
        // not become current again (a server process still on the old CA answers so).
        if let index = trusted.firstIndex(of: current), index > 0 { return nil }
        if !trusted.contains(current) {
            guard isCA(current, now: now), issued(current, by: current), let crossPEM = trust.cross,
                let cross = try? Certificate(pemEncoded: crossPEM), isCA(cross, now: now), cross.subject == current.subject,
                cross.publicKey == current.publicKey, trusted.contains(where: { isCA($0, now: now) && issued(cross, by: $0) })
            else {
                throw KeyholdError(
                    .unauthenticated, "the server names a new CA that no CA this client trusts has cross-signed",
                    hint: "keep using the current one; if the server's CA really changed, enroll this client again")
            }
        }
        var next = [current]
        if let previousPEM = trust.previous, let previous = try? Certificate(pemEncoded: previousPEM), trusted.contains(previous),
            previous != current
        {
            next.append(previous)
        }
        guard Set(next.map(\.pem)) != Set(trusted.map(\.pem)) else { return nil }
        return next.map(\.pem).joined()
    }
}

extension Certificate {
    /// PEM text.
    fileprivate var pem: String { (try? serializeAsPEM().pemString).map { $0.hasSuffix("\n") ? $0 : $0 + "\n" } ?? "" }
}

extension EnrolledIdentity {
    /// This identity trusting what the server said (``CATrustStore/adopt(_:held:)``); nil when
    /// nothing changes.
    public func adopting(_ trust: CATrust) throws -> EnrolledIdentity? {
        guard let bundle = try CATrustStore.adopt(trust, held: caPEM) else { return nil }
        var next = self
        next.caPEM = bundle
        return next
    }

    /// Whether the server's current CA (`trust.current`) issued this identity's certificate; a
    /// certificate from the previous CA is renewed at once during a rotation's overlap.
    public func issuedByCurrentCA(_ trust: CATrust) -> Bool {
        guard let current = try? Certificate(pemEncoded: trust.current), let mine = try? Certificate(pemEncoded: certificatePEM),
            let held = try? CATrustStore.certificates(caPEM)
        else { return true }
        // A server that names the CA held as previous is behind: nothing to renew for it.
        if let index = held.firstIndex(of: current), index > 0 { return true }
        return CATrustStore.issued(mine, by: current)
    }
}
