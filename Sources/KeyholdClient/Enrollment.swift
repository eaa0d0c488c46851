import Crypto
import Foundation
public import KeyholdCore
public import KeyholdProtocol
import SwiftASN1
import X509

/// What a client keeps after enrolling: its certificate and private key, the server's CA, and
/// where to reach the server. Written to a root-only state directory by the agent.
public struct EnrolledIdentity: Codable, Sendable {
    /// The client id the certificate names.
    public var clientID: ClientID
    /// What this client is at the server.
    public var role: ClientRole
    /// The server.
    public var serverID: ServerID
    /// The server's mutual-TLS API.
    public var apiAddress: String
    /// The server's CA (the only trust anchor).
    public var caPEM: String
    /// This client's certificate.
    public var certificatePEM: String
    /// This client's private key (made here, never sent).
    public var keyPEM: String
    /// The certificate and key this one renewed, kept until the new one has been used once (nil
    /// otherwise): if the server refuses the new one, the client goes back to them.
    public var previousCertificatePEM: String?
    /// The private key of ``previousCertificatePEM``.
    public var previousKeyPEM: String?
    /// The name this client enrolled under (nil in identities written before it was kept).
    public var name: String?

    enum CodingKeys: String, CodingKey {
        case clientID = "client_id"
        case role
        case serverID = "server_id"
        case apiAddress = "api_address"
        case caPEM = "ca_pem"
        case certificatePEM = "certificate_pem"
        case keyPEM = "key_pem"
        case previousCertificatePEM = "previous_certificate_pem"
        case previousKeyPEM = "previous_key_pem"
        case name
    }

    /// A mutual-TLS client for the enrolled server.
    public func client(timeout: Duration = .seconds(15)) throws -> APIClient {
        try APIClient(
            address: apiAddress, caPEM: caPEM, certificatePEM: certificatePEM, keyPEM: keyPEM, timeout: timeout,
            expiredHint: role == .server
                ? "join the primary again: 'keyhold-server primary leave', then 'keyhold-server primary join NEW-TOKEN' (pushes are idempotent)"
                : "enroll this device again (docs/operations.md, \"Certificate renewal\"): stop the agent, move identity.json out of its state directory, start it, 'keyhold enroll NEW-TOKEN'; its cached keys stay"
        )
    }
}

/// Enrolling with a server from a token: the private key is made here and never leaves.
public enum Enrollment {
    /// 1. fetch the CA from the enrollment listener and compare its SHA-256 with the token's;
    /// 2. make a P-256 key and a CSR; 3. send token and CSR over TLS pinned to that CA;
    /// 4. check the returned certificate chains to the CA and carries our public key.
    public static func enroll(token: EnrollmentToken, name: String) async throws -> EnrolledIdentity {
        let (caPEM, _) = try await verifiedCA(token)
        let key = try ClientKey(name: name)
        let enrollClient = try APIClient(address: token.enrollAddress, caPEM: caPEM, verifyHostname: false)
        let response: EnrollResponse
        do {
            response = try await enrollClient.post(
                APIPath.enroll, EnrollRequest(tokenID: token.id, secret: token.secret, csrPEM: key.csrPEM, name: name),
                as: EnrollResponse.self
            )
            await enrollClient.shutdown()
        } catch {
            await enrollClient.shutdown()
            throw error
        }
        try key.checkIssued(response.certificatePEM, caPEM: caPEM)
        return EnrolledIdentity(
            clientID: response.clientID, role: response.role, serverID: response.serverID, apiAddress: token.apiAddress,
            caPEM: caPEM, certificatePEM: response.certificatePEM, keyPEM: key.privateKeyPEM, name: name
        )
    }

    /// Fetches the CA the token's server presents and checks it is the one the token names
    /// (SHA-256 of its DER). Uses nothing secret of the token, so it checks a token without using it.
    public static func verifyServer(_ token: EnrollmentToken) async throws {
        _ = try await verifiedCA(token)
    }

    static func verifiedCA(_ token: EnrollmentToken) async throws -> (pem: String, certificate: Certificate) {
        let caPEM = try await APIClient.fetchCA(address: token.enrollAddress)
        let ca: Certificate
        do {
            ca = try Certificate(pemEncoded: caPEM)
        } catch {
            throw KeyholdError(
                .tokenInvalid, "the server at \(token.enrollAddress) sent no valid CA certificate", hint: "check the address in the token")
        }
        var der = DER.Serializer()
        try der.serialize(ca)
        let fingerprint = Hex.lowercase(SHA256.hash(data: der.serializedBytes))
        guard fingerprint == token.caFingerprint.lowercased() else {
            throw KeyholdError(
                .tokenInvalid,
                "the server at \(token.enrollAddress) is not the one the token names (CA fingerprint \(fingerprint.prefix(16))… ≠ \(token.caFingerprint.prefix(16))…)",
                hint: "do not enroll: the address may be wrong or intercepted; ask the administrator for a fresh token"
            )
        }
        return (caPEM, ca)
    }
}
