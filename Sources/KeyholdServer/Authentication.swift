import KeyholdCore
import KeyholdProtocol
import KeyholdStore
import NIOCore
import NIOSSL
import SwiftASN1
import Synchronization
import X509

/// What a connection's verified client certificate says, before the repository is asked: the role
/// and client id its identity URI names and the certificate's fingerprint. The TLS handshake
/// already proved the certificate was issued by this server's CA.
struct Peer: Sendable {
    /// The role the certificate names.
    let role: ClientRole
    /// The client id the certificate names.
    let id: ClientID
    /// SHA-256 of the certificate, compared with the one recorded at enrollment.
    let fingerprint: String

    /// Who this peer is in an audit record.
    var actor: AuditActor { AuditActor(role, id) }

    /// The check a release statement makes for this peer (its enrollment, in the same statement).
    var releaseCheck: ReleaseCaller { ReleaseCaller(id: id, role: role, certificateFingerprint: fingerprint) }
}

/// An authenticated caller: an active enrollment of this server, with the certificate it presented.
struct Caller: Sendable {
    /// The enrollment.
    let client: EnrolledClient

    /// Who this caller is in an audit record.
    var actor: AuditActor { AuditActor(client.role, client.id) }
}

/// Reads, parses and hashes each connection's client certificate once, not at every request on a
/// keep-alive connection. A connection's peer certificate cannot change (TLS 1.3 has no
/// renegotiation and swift-nio-ssl refuses it for older versions by default). Entries leave when
/// their connection closes; the close callback holds the channel until then, so no new channel can
/// reuse a cached channel's identity while it is cached. Enrollment state is never cached: it is
/// checked at every request.
final class PeerCache: Sendable {
    private let entries = Mutex<[ObjectIdentifier: Peer]>([:])

    /// The peer of `channel`, or nil when its certificate names no Keyhold identity.
    func peer(of channel: any Channel) async -> Peer? {
        let key = ObjectIdentifier(channel)
        if let known = entries.withLock({ $0[key] }) { return known }
        guard let cert = try? await channel.nioSSL_peerCertificate().get(), let der = try? cert.toDERBytes(),
            let certificate = try? Certificate(derEncoded: der), let identity = CertificateIdentity(certificate: certificate)
        else { return nil }
        let peer = Peer(role: identity.role, id: identity.id, fingerprint: CertificateAuthority.fingerprint(certificate))
        let added = entries.withLock { entries -> Bool in
            guard entries[key] == nil else { return false }
            entries[key] = peer
            return true
        }
        if added {
            channel.closeFuture.whenComplete { [channel] _ in
                withExtendedLifetime(channel) { _ = self.entries.withLock { $0.removeValue(forKey: key) } }
            }
        }
        return peer
    }
}
