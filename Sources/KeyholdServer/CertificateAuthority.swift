import Crypto
public import Foundation
import KeyholdCore
import KeyholdProtocol
import SwiftASN1
import X509

/// How long the certificates of devices and secondaries are valid (`device_certificate_lifetime`,
/// `server_certificate_lifetime`). Clients renew theirs once two thirds of it have passed.
public struct CertificateLifetimes: Sendable, Equatable {
    /// The default: 90 days.
    public static let standard: TimeInterval = 90 * 86_400
    /// Devices' certificates.
    public var device: TimeInterval
    /// Secondaries' certificates (towards this server as their primary).
    public var server: TimeInterval
    /// This server's TLS certificate (renewed by the server itself).
    public var tls: TimeInterval = standard

    /// Lifetimes, 90 days unless given.
    public init(device: TimeInterval = standard, server: TimeInterval = standard) {
        self.device = device
        self.server = server
    }

    /// The lifetime of a certificate for `role` (administrators': the CA's leaf lifetime).
    func lifetime(of role: ClientRole) -> TimeInterval {
        switch role {
        case .device: device
        case .server: server
        case .admin: CertificateAuthority.leafLifetime
        }
    }
}

/// Who a certificate issued by a Keyhold CA belongs to, read from its `urn:keyhold:<role>:<id>`
/// subject alternative name.
struct CertificateIdentity: Equatable, Sendable {
    var role: ClientRole
    var id: ClientID

    var uri: String { "urn:keyhold:\(role):\(id)" }

    init(role: ClientRole, id: ClientID) {
        self.role = role
        self.id = id
    }

    /// Finds the identity URI in a certificate's SANs.
    init?(certificate: Certificate) {
        guard let sans = try? certificate.extensions.subjectAlternativeNames else { return nil }
        for name in sans {
            if case .uniformResourceIdentifier(let uri) = name, uri.hasPrefix("urn:keyhold:") {
                let parts = uri.split(separator: ":")
                if parts.count == 4, let role = ClientRole(rawValue: String(parts[2])), let id = ClientID(String(parts[3])) {
                    self.init(role: role, id: id)
                    return
                }
            }
        }
        return nil
    }
}

/// The server's certificate authority: issues its own TLS certificate, the administrator's
/// certificate and, at enrollment, device and secondary certificates from their CSRs.
///
/// Keys are ECDSA P-256; certificates are ordinary X.509 that `openssl verify` accepts.
struct CertificateAuthority: Sendable {
    let certificate: Certificate
    let privateKey: Certificate.PrivateKey

    static let caLifetime: TimeInterval = 20 * 365 * 86_400
    /// The TLS certificate's and administrators' certificates' lifetime.
    static let leafLifetime: TimeInterval = 5 * 365 * 86_400

    /// A new self-signed CA for server `serverID`; returns it with its key's PEM.
    static func create(serverID: ServerID, name: String) throws -> (CertificateAuthority, keyPEM: String) {
        try create(commonName: "Keyhold CA \(name) \(serverID)")
    }

    /// A new self-signed CA named `commonName`; returns it with its key's PEM.
    static func create(commonName: String) throws -> (CertificateAuthority, keyPEM: String) {
        let key = P256.Signing.PrivateKey()
        let subject = try DistinguishedName {
            OrganizationName("Keyhold")
            CommonName(commonName)
        }
        let now = Date()
        let cert = try Certificate(
            version: .v3, serialNumber: .init(), publicKey: .init(key.publicKey),
            notValidBefore: now.addingTimeInterval(-300), notValidAfter: now.addingTimeInterval(caLifetime),
            issuer: subject, subject: subject, signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                // One CA below it: the CA a rotation cross-signs (docs/operations.md, "CA rotation").
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 1))
                Critical(KeyUsage(keyCertSign: true, cRLSign: true))
                SubjectKeyIdentifier(hash: .init(key.publicKey))
            },
            issuerPrivateKey: .init(key)
        )
        return (CertificateAuthority(certificate: cert, privateKey: .init(key)), key.pemRepresentation)
    }

    init(certificate: Certificate, privateKey: Certificate.PrivateKey) {
        self.certificate = certificate
        self.privateKey = privateKey
    }

    init(certificatePEM: String, keyPEM: String) throws {
        self.certificate = try Certificate(pemEncoded: certificatePEM)
        self.privateKey = try Certificate.PrivateKey(pemEncoded: keyPEM)
    }

    /// Lowercase hex SHA-256 of the CA certificate's DER encoding (what tokens carry).
    var fingerprint: String { Self.fingerprint(certificate) }

    static func fingerprint(_ certificate: Certificate) -> String {
        var serializer = DER.Serializer()
        try? serializer.serialize(certificate)
        return Hex.lowercase(SHA256.hash(data: serializer.serializedBytes))
    }

    /// The server's TLS certificate, valid for `names` (host names or IP addresses).
    func issueServerCertificate(
        serverID: ServerID, names: [String], lifetime: TimeInterval = leafLifetime
    ) throws -> (Certificate, keyPEM: String) {
        var sans: [GeneralName] = [
            .uniformResourceIdentifier(CertificateIdentity(role: .server, id: ClientID(high: serverID.high, low: serverID.low)).uri)
        ]
        for name in Set(names).sorted() {
            if let ip = Self.ipAddressBytes(name) {
                sans.append(.ipAddress(ASN1OctetString(contentBytes: ArraySlice(ip))))
            } else {
                sans.append(.dnsName(name))
            }
        }
        return try issueServerCertificate(serverID: serverID, sans: sans, lifetime: lifetime)
    }

    /// A TLS certificate with a new key for the names `sans` (a renewal keeps the old one's).
    func issueServerCertificate(
        serverID: ServerID, sans: [GeneralName], lifetime: TimeInterval = leafLifetime
    ) throws -> (Certificate, keyPEM: String) {
        let key = P256.Signing.PrivateKey()
        let cert = try issue(
            publicKey: .init(key.publicKey), commonName: "keyhold-server \(serverID)",
            usage: [.serverAuth, .clientAuth], sans: sans, lifetime: lifetime
        )
        return (cert, key.pemRepresentation)
    }

    /// The certificate request in `pem`, if it parses and its signature verifies.
    static func verifiedRequest(_ pem: String) throws -> CertificateSigningRequest {
        let csr: CertificateSigningRequest
        do {
            csr = try CertificateSigningRequest(pemEncoded: pem)
        } catch {
            throw KeyholdError(.invalidRequest, "the certificate signing request is not valid PEM", hint: "send a PEM-encoded PKCS#10 request")
        }
        guard csr.publicKey.isValidSignature(csr.signature, for: csr) else {
            throw KeyholdError(
                .invalidRequest, "the certificate request's signature does not verify", hint: "send a CSR signed by its own private key")
        }
        return csr
    }

    /// A client certificate for `identity` on the key in a CSR that ``verifiedRequest(_:)`` accepted
    /// (checked again here).
    func issueClientCertificate(
        csr: CertificateSigningRequest, identity: CertificateIdentity, name: String, lifetime: TimeInterval = leafLifetime
    ) throws -> Certificate {
        guard csr.publicKey.isValidSignature(csr.signature, for: csr) else {
            throw KeyholdError(
                .invalidRequest, "the certificate request's signature does not verify", hint: "send a CSR signed by its own private key")
        }
        return try issue(
            publicKey: csr.publicKey, commonName: "keyhold \(identity.role) \(name)".prefix(64).description,
            usage: [.clientAuth], sans: [.uniformResourceIdentifier(identity.uri)], lifetime: lifetime
        )
    }

    /// A client certificate with a new key (the administrator's, made by `init`).
    func issueClientCertificate(identity: CertificateIdentity, name: String) throws -> (Certificate, keyPEM: String) {
        let key = P256.Signing.PrivateKey()
        let cert = try issue(
            publicKey: .init(key.publicKey), commonName: "keyhold \(identity.role) \(name)", usage: [.clientAuth],
            sans: [.uniformResourceIdentifier(identity.uri)])
        return (cert, key.pemRepresentation)
    }

    private func issue(
        publicKey: Certificate.PublicKey, commonName: String, usage: [ExtendedKeyUsage.Usage], sans: [GeneralName],
        lifetime: TimeInterval = leafLifetime
    ) throws -> Certificate {
        let now = Date()
        return try Certificate(
            version: .v3, serialNumber: .init(), publicKey: publicKey,
            notValidBefore: now.addingTimeInterval(-min(300, lifetime / 10)), notValidAfter: now.addingTimeInterval(lifetime),
            issuer: certificate.subject,
            subject: try DistinguishedName {
                OrganizationName("Keyhold")
                CommonName(commonName)
            },
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true))
                try ExtendedKeyUsage(usage)
                SubjectAlternativeNames(sans)
                AuthorityKeyIdentifier(keyIdentifier: try certificate.extensions.subjectKeyIdentifier?.keyIdentifier)
            },
            issuerPrivateKey: privateKey
        )
    }

    /// `other`'s CA certificate signed by this CA (the cross certificate of a CA rotation): the
    /// same subject, key and CA extensions, this CA as issuer, valid while both are.
    func crossSign(_ other: Certificate) throws -> Certificate {
        try Certificate(
            version: .v3, serialNumber: .init(), publicKey: other.publicKey, notValidBefore: other.notValidBefore,
            notValidAfter: min(other.notValidAfter, certificate.notValidAfter), issuer: certificate.subject, subject: other.subject,
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                Critical(KeyUsage(keyCertSign: true, cRLSign: true))
                if let ski = try other.extensions.subjectKeyIdentifier { ski }
                AuthorityKeyIdentifier(keyIdentifier: try certificate.extensions.subjectKeyIdentifier?.keyIdentifier)
            },
            issuerPrivateKey: privateKey)
    }

    /// A new client certificate for the key and identity of `old` (the local `admin.pem` after a
    /// CA rotation: the private key stays where it is).
    func reissueClientCertificate(_ old: Certificate, identity: CertificateIdentity, name: String) throws -> Certificate {
        try issue(
            publicKey: old.publicKey, commonName: "keyhold \(identity.role) \(name)".prefix(64).description, usage: [.clientAuth],
            sans: [.uniformResourceIdentifier(identity.uri)])
    }

    /// Whether this CA issued `certificate` (its name and signature).
    func issued(_ certificate: Certificate) -> Bool {
        certificate.issuer == self.certificate.subject && self.certificate.publicKey.isValidSignature(certificate.signature, for: certificate)
    }

    /// IPv4 or IPv6 address bytes, or nil for a host name.
    static func ipAddressBytes(_ text: String) -> [UInt8]? {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 { return withUnsafeBytes(of: &v4) { Array($0) } }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 { return withUnsafeBytes(of: &v6) { Array($0) } }
        return nil
    }
}

extension Certificate {
    /// PEM text.
    var pem: String { (try? serializeAsPEM().pemString) ?? "" }
}
