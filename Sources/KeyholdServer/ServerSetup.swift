import Foundation
public import KeyholdCore
public import KeyholdProtocol
public import KeyholdStore
import X509

/// Creating a server: what `keyhold-server init` makes in a data directory and its repository.
public enum ServerSetup {
    /// What `init` is asked for.
    public struct Options: Sendable {
        /// Addresses the listeners will bind (their hosts go into the TLS certificate).
        public var listen: HostPort
        /// The enrollment listener's address.
        public var enrollListen: HostPort
        /// The server's name (also a TLS host name).
        public var name: String
        /// Extra host names or addresses for the TLS certificate.
        public var hostNames: [String]
        /// The initial value of "use hierarchy to obtain encryption keys".
        public var useHierarchy: Bool

        /// Options for a new server.
        public init(listen: HostPort, enrollListen: HostPort, name: String, hostNames: [String] = [], useHierarchy: Bool = false) {
            self.listen = listen
            self.enrollListen = enrollListen
            self.name = name
            self.hostNames = hostNames
            self.useHierarchy = useHierarchy
        }
    }

    /// Creates the data directory (mode 0700) with a new master key, CA, TLS certificate and
    /// administrator certificate, then migrates `repository` and records the administrator, the
    /// option and an `init` audit record in it. The caller writes `config.toml` afterwards: a
    /// directory without it is an interrupted `init`, not a server.
    public static func initialize(_ dir: DataDirectory, serverID: ServerID, options: Options, repository: any Repository) async throws {
        if dir.isInitialized {
            throw KeyholdError(
                .configuration, "\(dir.path) already holds a Keyhold server", hint: "use another --data-dir, or run the existing server")
        }
        try FileManager.default.createDirectory(atPath: dir.path, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        try FileManager.default.setAttributes([.posixPermissions: 0o700], ofItemAtPath: dir.path)
        let master = SecretKey.generate()
        try dir.write("master.key", master.withUnsafeBytes { Data($0) }, mode: 0o600)

        let (ca, caKeyPEM) = try CertificateAuthority.create(serverID: serverID, name: options.name)
        try dir.write("ca.key", Data(caKeyPEM.utf8), mode: 0o600)
        try dir.write("ca.pem", Data(ca.certificate.pem.utf8), mode: 0o644)

        var names = ["localhost", "127.0.0.1", "::1", options.name] + options.hostNames
        for address in [options.listen, options.enrollListen] where !["0.0.0.0", "::"].contains(address.host) {
            names.append(address.host)
        }
        let (tls, tlsKeyPEM) = try ca.issueServerCertificate(serverID: serverID, names: names, lifetime: CertificateLifetimes.standard)
        try dir.write("tls.key", Data(tlsKeyPEM.utf8), mode: 0o600)
        try dir.write("tls.pem", Data(tls.pem.utf8), mode: 0o644)

        let adminID = ClientID.random()
        let (admin, adminKeyPEM) = try ca.issueClientCertificate(identity: CertificateIdentity(role: .admin, id: adminID), name: "administrator")
        try dir.write("admin.key", Data(adminKeyPEM.utf8), mode: 0o600)
        try dir.write("admin.pem", Data(admin.pem.utf8), mode: 0o644)

        try await repository.migrate()
        try await repository.insertClient(
            EnrolledClient(
                id: adminID, role: .admin, name: "administrator", certificateFingerprint: CertificateAuthority.fingerprint(admin),
                certificateExpires: admin.notValidAfter, certificateIssuer: ca.fingerprint
            ))
        try await repository.setSetting(Hierarchy.optionSetting, options.useHierarchy ? "true" : "false")
        try await repository.appendAudit(
            AuditEvent(
                actor: .administrator(adminID), action: .initialize, route: .local, result: .ok, detail: "server \(serverID)"
            ))
    }

    /// A new administrator certificate, made on the server machine from the data directory's CA
    /// (`keyhold-server admin recover`): the way back when no administrator certificate works any
    /// more. The new certificate replaces `admin.pem`/`admin.key` (written atomically, the key 0600)
    /// and is recorded as an active administrator with an `admin_recover` audit record; the other
    /// administrators stay as they are.
    /// - Returns: the new administrator's client id.
    public static func recoverAdministrator(_ dir: DataDirectory, repository: any Repository, by uid: UInt32) async throws -> ClientID {
        try dir.requireInitialized()
        try CertificateAuthorities.finishRotation(dir)
        let authority = try CertificateAuthority(
            certificatePEM: String(decoding: try dir.read(dir.caCertificate), as: UTF8.self),
            keyPEM: String(decoding: try dir.read(dir.caKey), as: UTF8.self)
        )
        let id = ClientID.random()
        let (admin, keyPEM) = try authority.issueClientCertificate(identity: CertificateIdentity(role: .admin, id: id), name: "administrator")
        try await repository.migrate()
        try await repository.insertClient(
            EnrolledClient(
                id: id, role: .admin, name: "administrator (recovered)", certificateFingerprint: CertificateAuthority.fingerprint(admin),
                certificateExpires: admin.notValidAfter, certificateIssuer: authority.fingerprint)
        )
        try await repository.appendAudit(
            AuditEvent(actor: .administrator(id), action: .adminRecover, route: .local, result: .ok, detail: "by uid \(uid) on the server machine")
        )
        try dir.write("admin.key", Data(keyPEM.utf8), mode: 0o600)
        try dir.write("admin.pem", Data(admin.pem.utf8), mode: 0o644)
        return id
    }
}
