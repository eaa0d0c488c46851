import Foundation
import Hummingbird
import HummingbirdTLS
import KeyholdCore
import KeyholdStore
import KeyholdStorePostgres
import KeyholdStoreSQLite
import Logging
import NIOCore
import NIOSSL
import ServiceLifecycle
import UnixSignals
import X509

/// Creating a data directory (`init`) and running the server (`run`).
enum ServerRuntime {
    struct InitOptions {
        var listen = "127.0.0.1:8443"
        var enrollListen = "127.0.0.1:8444"
        var name = ""
        var database = "sqlite"
        /// Extra host names or addresses for the TLS certificate.
        var hostNames: [String] = []
        /// Initial value of the "use hierarchy" option.
        var useHierarchy = false
    }

    /// Creates a new data directory: master key, CA, TLS and admin certificates, config, schema.
    static func initialize(_ dir: DataDirectory, _ options: InitOptions) async throws -> ServerConfig {
        if dir.isInitialized {
            throw KeyholdError(.configuration, "\(dir.path) already holds a Keyhold server", hint: "use another --data-dir, or run the existing server")
        }
        try FileManager.default.createDirectory(atPath: dir.path, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        try FileManager.default.setAttributes([.posixPermissions: 0o700], ofItemAtPath: dir.path)
        let serverID = ServerID.random()
        let name = options.name.isEmpty ? ProcessInfo.processInfo.hostName : options.name
        let master = SecretKey.generate()
        try dir.write("master.key", master.withUnsafeBytes { Data($0) }, mode: 0o600)

        let (ca, caKeyPEM) = try CertificateAuthority.create(serverID: serverID, name: name)
        try dir.write("ca.key", Data(caKeyPEM.utf8), mode: 0o600)
        try dir.write("ca.pem", Data(ca.certificate.pem.utf8), mode: 0o644)

        var names = ["localhost", "127.0.0.1", "::1"] + options.hostNames
        for address in [options.listen, options.enrollListen] {
            let host = try HostPort.split(address).host
            if !["0.0.0.0", "::"].contains(host) { names.append(host) }
        }
        if !options.name.isEmpty { names.append(options.name) }
        let (tls, tlsKeyPEM) = try ca.issueServerCertificate(serverID: serverID, names: names)
        try dir.write("tls.key", Data(tlsKeyPEM.utf8), mode: 0o600)
        try dir.write("tls.pem", Data(tls.pem.utf8), mode: 0o644)

        let adminID = DeviceID.random()
        let (admin, adminKeyPEM) = try ca.issueClientCertificate(identity: CertificateIdentity(role: "admin", id: adminID), name: "administrator")
        try dir.write("admin.key", Data(adminKeyPEM.utf8), mode: 0o600)
        try dir.write("admin.pem", Data(admin.pem.utf8), mode: 0o644)

        let config = ServerConfig(
            serverID: serverID, name: name, listen: options.listen, enrollListen: options.enrollListen,
            database: options.database, advertiseAPI: "", advertiseEnroll: ""
        )
        let repository = try openRepository(config, dir)
        try await repository.migrate()
        try await repository.insertClient(EnrolledClient(
            id: adminID, role: .admin, name: "administrator", certificateFingerprint: CertificateAuthority.fingerprint(admin)
        ))
        try await repository.setSetting("use_hierarchy", options.useHierarchy ? "true" : "false")
        try await repository.appendAudit(AuditEvent(actor: "admin:\(adminID)", action: "init", route: "local", result: "ok", detail: "server \(serverID)"))
        try await repository.close()
        // The config goes last: a data directory without it is an interrupted init, not a server.
        try dir.write("config.toml", Data(config.render().utf8), mode: 0o600)
        return config
    }

    static func loadConfig(_ dir: DataDirectory) throws -> ServerConfig {
        try dir.requireInitialized()
        return try ServerConfig.parse(String(decoding: try dir.read(dir.config), as: UTF8.self), path: dir.config)
    }

    static func openRepository(_ config: ServerConfig, _ dir: DataDirectory) throws -> any Repository {
        if config.database == "sqlite" || config.database.isEmpty {
            return try SQLiteRepository(path: dir.sqlite)
        }
        if config.database.hasPrefix("postgres://") || config.database.hasPrefix("postgresql://") {
            return try PostgresRepository(url: config.database)
        }
        throw KeyholdError(.configuration, "unknown database '\(config.database)'", hint: "use \"sqlite\" or a postgres:// URL")
    }

    static func describe(_ database: String) -> String {
        guard database.hasPrefix("postgres"), var c = URLComponents(string: database) else { return "sqlite" }
        c.password = nil
        return c.string ?? "postgres"
    }

    /// Runs both listeners until SIGTERM or SIGINT, then stops gracefully.
    static func run(_ dir: DataDirectory, config: ServerConfig, hierarchyHeartbeat: Duration = .seconds(30), logger: Logger) async throws {
        try dir.checkSecretPermissions()
        let master = try SecretKey(bytes: try dir.read(dir.masterKey))
        let authority = try CertificateAuthority(
            certificatePEM: String(decoding: try dir.read(dir.caCertificate), as: UTF8.self),
            keyPEM: String(decoding: try dir.read(dir.caKey), as: UTF8.self)
        )
        let repository = try openRepository(config, dir)
        try await repository.migrate()
        let hierarchy = try Hierarchy(serverID: config.serverID, repository: repository, masterKey: MasterKey(master), dir: dir, logger: logger)
        let core = ServerCore(
            serverID: config.serverID, repository: repository, masterKey: MasterKey(master), authority: authority,
            databaseDescription: describe(config.database), hierarchy: hierarchy, spoolDirectory: dir.path, logger: logger
        )

        let chain = try NIOSSLCertificate.fromPEMFile(dir.tlsCertificate).map { NIOSSLCertificateSource.certificate($0) }
        let key = try NIOSSLPrivateKey(file: dir.tlsKey, format: .pem)
        var apiTLS = TLSConfiguration.makeServerConfiguration(certificateChain: chain, privateKey: .privateKey(key))
        apiTLS.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(dir.caCertificate))
        apiTLS.certificateVerification = .noHostnameVerification
        var enrollTLS = TLSConfiguration.makeServerConfiguration(certificateChain: chain, privateKey: .privateKey(key))
        enrollTLS.certificateVerification = .none

        let addresses = BoundAddresses(config: config)
        let (apiHost, apiPort) = try HostPort.split(config.listen)
        let (enrollHost, enrollPort) = try HostPort.split(config.enrollListen)
        let api = Application(
            router: ServerAPI.apiRouter(core, addresses: addresses, logger: logger),
            server: try .tls(.http1(), tlsConfiguration: apiTLS),
            configuration: .init(address: .hostname(apiHost, port: apiPort), serverName: "keyhold-server"),
            onServerRunning: { channel in await addresses.set(api: Self.describe(channel, host: apiHost)) },
            logger: logger
        )
        let enroll = Application(
            router: ServerAPI.enrollmentRouter(core, logger: logger),
            server: try .tls(.http1(), tlsConfiguration: enrollTLS),
            configuration: .init(address: .hostname(enrollHost, port: enrollPort), serverName: "keyhold-server"),
            onServerRunning: { channel in await addresses.set(enroll: Self.describe(channel, host: enrollHost)) },
            logger: logger
        )
        let announcer = Announcer(dir: dir, addresses: addresses, serverID: config.serverID, logger: logger)
        let group = ServiceGroup(
            configuration: .init(services: [.init(service: api), .init(service: enroll), .init(service: announcer),
                                            .init(service: HierarchyHeartbeat(hierarchy: hierarchy, interval: hierarchyHeartbeat))],
                                 gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        )
        try await group.run()
        await hierarchy.shutdown()
        try? await repository.close()
        try? FileManager.default.removeItem(atPath: dir.runtime)
        logger.info("stopped")
    }

    static func describe(_ channel: any Channel, host: String) -> String {
        let port = channel.localAddress?.port ?? 0
        return host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }
}

/// Writes `runtime.json` (the bound addresses) once both listeners run, and logs them.
struct Announcer: Service {
    let dir: DataDirectory
    let addresses: BoundAddresses
    let serverID: ServerID
    let logger: Logger

    func run() async throws {
        await addresses.waitUntilBound()
        let (api, enroll) = await addresses.current()
        let json = "{\"server_id\":\"\(serverID)\",\"api\":\"\(api)\",\"enroll\":\"\(enroll)\",\"pid\":\(getpid())}\n"
        try dir.write("runtime.json", Data(json.utf8), mode: 0o644)
        logger.info("listening", metadata: ["api": "\(api)", "enroll": "\(enroll)", "server_id": "\(serverID)"])
        try? await gracefulShutdown()
    }
}
