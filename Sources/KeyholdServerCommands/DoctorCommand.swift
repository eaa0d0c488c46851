import ArgumentParser
import Foundation
import KeyholdClient
import KeyholdCore
import KeyholdProtocol
import KeyholdServer
import KeyholdStore
import SwiftASN1
import X509

#if canImport(Glibc)
import Glibc
#endif

/// `keyhold-server doctor`: checks a data directory and says what to fix.
struct DoctorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "doctor",
        abstract: "Check a data directory: permissions, configuration, database and schema, certificates, the running server, the primary.",
        discussion: """
            Changes nothing. Each check prints ok, warn or FAIL with what to do; the command exits 0 when nothing \
            failed, else with the exit status of the first failure (78 for configuration, 75 for something unreachable).
            Run it as the server's user (the unit runs as keyhold-server).
            Example:
              sudo -u keyhold-server keyhold-server doctor --data-dir /var/lib/keyhold-server
            """
    )
    @OptionGroup var data: DataDirOption
    @Flag(help: "Print JSON: one object per check.") var json = false

    func run() async throws {
        var doctor = Doctor(directory: data.directory, now: Date())
        await doctor.examine(data)
        if json {
            try printJSON(doctor.findings)
        } else {
            for f in doctor.findings {
                print("\(f.level.label) \(f.check): \(f.message)")
                if let hint = f.hint { print("     hint: \(hint)") }
            }
        }
        if let failure = doctor.findings.first(where: { $0.level == .fail }) {
            if !json {
                print("\(doctor.findings.filter { $0.level == .fail }.count) check(s) failed")
            }
            throw ExitCode(failure.code.exitStatus.rawValue)
        }
    }
}

/// One check's outcome.
struct Finding: Encodable {
    enum Level: String, Encodable {
        case ok, warn, fail
        var label: String {
            switch self {
            case .ok: "ok  "
            case .warn: "warn"
            case .fail: "FAIL"
            }
        }
    }
    var check: String
    var level: Level
    var message: String
    var hint: String?
    /// The error class a failure exits with.
    var code: KeyholdError.Code = .configuration

    enum CodingKeys: String, CodingKey { case check, level, message, hint }
}

/// The checks, in the order a server starts: the folder, the configuration, the secret files,
/// the certificates, the database, the running server, the primary.
struct Doctor {
    let directory: DataDirectory
    let now: Date
    var findings: [Finding] = []
    /// The data directory's owner, once known.
    var owner: UInt32?

    mutating func ok(_ check: String, _ message: String) { findings.append(Finding(check: check, level: .ok, message: message)) }
    mutating func warn(_ check: String, _ message: String, hint: String) {
        findings.append(Finding(check: check, level: .warn, message: message, hint: hint))
    }
    mutating func fail(_ check: String, _ message: String, hint: String, code: KeyholdError.Code = .configuration) {
        findings.append(Finding(check: check, level: .fail, message: message, hint: hint, code: code))
    }
    mutating func fail(_ check: String, _ error: any Error) {
        if let e = error as? KeyholdError {
            fail(check, e.message, hint: e.hint, code: e.code)
        } else {
            fail(check, "\(error)", hint: "see the message", code: .internalError)
        }
    }

    mutating func examine(_ options: DataDirOption) async {
        let path = directory.path
        // 1. The folder.
        let attributes: [FileAttributeKey: Any]
        do {
            attributes = try FileManager.default.attributesOfItem(atPath: path)
        } catch {
            let missing = !FileManager.default.fileExists(atPath: path) && access((path as NSString).deletingLastPathComponent, X_OK) == 0
            fail(
                "data directory", missing ? "\(path) does not exist" : "\(path) cannot be examined by user \(geteuid())",
                hint: missing ? "create it with 'keyhold-server init --data-dir \(path)'" : "run as its owner or as root")
            return
        }
        guard attributes[.type] as? FileAttributeType == .typeDirectory else {
            fail("data directory", "\(path) is not a directory", hint: "pass the data directory with --data-dir")
            return
        }
        guard access(path, R_OK | X_OK) == 0 else {
            fail(
                "data directory", "\(path) cannot be read by user \(geteuid())", hint: "run as its owner (the unit runs as keyhold-server) or as root"
            )
            return
        }
        let mode = (attributes[.posixPermissions] as? Int) ?? 0
        let owner = (attributes[.ownerAccountID] as? NSNumber)?.uint32Value ?? UInt32.max
        self.owner = owner
        if mode & 0o077 != 0 {
            warn("data directory", "\(path) has mode \(String(mode, radix: 8)): other users may look inside", hint: "chmod 700 \(path)")
        } else if owner != geteuid() {
            warn("data directory", "\(path) belongs to user \(owner), not to this user (\(geteuid()))", hint: "run the server as its owner")
        } else {
            ok("data directory", "\(path), mode \(String(mode, radix: 8)), owned by this user")
        }

        // 2. The configuration.
        let config: ServerConfigFile
        do {
            config = try options.config()
            ok("configuration", "config.toml reads: server \(config.serverID), API \(config.listen), enrollment \(config.enrollListen)")
        } catch {
            fail("configuration", error)
            return
        }

        // 3. The secret files.
        for file in [directory.masterKey, directory.caKey, directory.tlsKey, directory.adminKey] {
            let name = (file as NSString).lastPathComponent
            let fileMode = (try? FileManager.default.attributesOfItem(atPath: file))?[.posixPermissions] as? Int
            if fileMode == nil {
                fail("secret files", "\(name) is missing", hint: "restore \(name) from the backup of this data directory")
            } else if let fileMode, fileMode & 0o077 != 0 {
                fail("secret files", "\(name) has mode \(String(fileMode, radix: 8)): others may read it", hint: "chmod 600 \(file)")
            } else if access(file, R_OK) != 0 {
                fail("secret files", "\(name) cannot be read by this user", hint: "run as the owner of the data directory")
            } else {
                ok("secret files", "\(name) is readable by its owner only")
            }
        }

        // 4. The certificates.
        let ca = certificate("CA", directory.caCertificate)
        for (what, file) in [("TLS certificate", directory.tlsCertificate), ("administrator certificate", directory.adminCertificate)] {
            guard let cert = certificate(what, file) else { continue }
            if let ca, cert.issuer != ca.subject {
                warn(
                    what, "\((file as NSString).lastPathComponent) was not issued by ca.pem (\(cert.issuer))",
                    hint: "after a CA rotation, 'keyhold-server ca status' says what still needs the old CA")
            }
        }

        // 5. The database and its schema.
        await database(config)

        // 6. The running server.
        var running = false
        if let runtime = try? ServerRuntimeInfo.read(from: directory.path) {
            do {
                let status = try await options.adminClient(timeout: .seconds(5)).using {
                    try await $0.get(APIPath.adminStatus, as: StatusResponse.self)
                }
                running = true
                ok(
                    "running server",
                    "answers at \(runtime.api): \(status.keyCount) keys, \(status.devices) devices, \(status.secondaries) secondaries")
            } catch {
                fail("running server", error)
            }
        } else {
            warn(
                "running server", "not running (no runtime.json)",
                hint: "start it: 'systemctl start keyhold-server' or 'keyhold-server run --data-dir \(path)'")
        }

        // 7. The primary.
        await primary(running: running)
    }

    /// Reads a certificate and checks its dates; nil when it does not read.
    mutating func certificate(_ what: String, _ file: String) -> Certificate? {
        let name = (file as NSString).lastPathComponent
        guard let data = FileManager.default.contents(atPath: file), let cert = try? Certificate(pemEncoded: String(decoding: data, as: UTF8.self))
        else {
            fail(what, "\(name) is missing or not a PEM certificate", hint: "restore it from the backup of this data directory")
            return nil
        }
        let days = cert.notValidAfter.timeIntervalSince(now) / 86_400
        let until = ISO8601DateFormatter().string(from: cert.notValidAfter)
        if days < 0 {
            fail(what, "\(name) expired at \(until)", hint: renewHint(what))
        } else if days < 30 {
            warn(what, "\(name) expires in \(Int(days)) day(s), at \(until)", hint: renewHint(what))
        } else {
            ok(what, "\(name) valid until \(until)")
        }
        return cert
    }

    func renewHint(_ what: String) -> String {
        switch what {
        case "CA": "rotate it: 'keyhold-server ca rotate' (docs/operations.md, \"CA rotation\")"
        case "TLS certificate": "renew it: 'keyhold-server tls renew' (the running server also renews it by itself)"
        default: "re-issue it: 'keyhold-server admin recover' on the server machine (docs/operations.md)"
        }
    }

    mutating func database(_ config: ServerConfigFile) async {
        if config.database == "sqlite", !FileManager.default.fileExists(atPath: directory.sqlite) {
            fail("database", "keyhold.sqlite is missing", hint: "restore it from the backup of this data directory (docs/operations.md, \"Backups\")")
            return
        }
        // Opening SQLite may create its -wal and -shm files: as another user than the server's they
        // would be that user's, and the server could not open its database any more.
        if config.database == "sqlite", let owner, owner != geteuid() {
            warn(
                "database",
                "not opened: the data directory belongs to user \(owner), and opening keyhold.sqlite as user \(geteuid()) could leave files the server cannot open",
                hint: "run doctor as the server's user: 'sudo -u keyhold-server keyhold-server doctor'")
            return
        }
        do {
            let latest = Schema.migrations.map(\.version).max() ?? 0
            let applied = try await RepositoryFactory.open(config.database, in: directory).withRunning { repository in
                let applied = try await repository.appliedMigrations()
                try await repository.close()
                return applied
            }
            let missing = Set(Schema.migrations.map(\.version)).subtracting(applied)
            let describe = RepositoryFactory.describe(config.database)
            if applied.isEmpty {
                fail(
                    "database", "\(describe) is reachable but holds no Keyhold schema",
                    hint: "check the database URL in config.toml; 'keyhold-server run' creates the schema in the database it names")
            } else if let newer = applied.max(), newer > latest {
                fail(
                    "database", "\(describe) has schema \(newer), newer than this build knows (\(latest))",
                    hint: "run the newer keyhold-server that migrated it")
            } else if !missing.isEmpty {
                warn(
                    "database", "\(describe): schema migrations \(missing.sorted()) not applied yet",
                    hint: "the next 'keyhold-server run' applies them")
            } else {
                ok("database", "\(describe) is reachable; schema \(latest) (every migration applied)")
            }
        } catch {
            fail("database", error)
        }
    }

    mutating func primary(running: Bool) async {
        guard let data = FileManager.default.contents(atPath: directory.primary) else {
            ok("primary", "none joined (primary.json absent)")
            return
        }
        guard let identity = try? JSONDecoder().decode(EnrolledIdentity.self, from: data) else {
            fail(
                "primary", "primary.json does not read", hint: "join again: 'keyhold-server primary leave', then 'keyhold-server primary join TOKEN'")
            return
        }
        if let cert = try? Certificate(pemEncoded: identity.certificatePEM) {
            let days = cert.notValidAfter.timeIntervalSince(now) / 86_400
            if days < 0 {
                fail(
                    "primary", "this server's certificate at its primary expired",
                    hint: "join again: 'keyhold-server primary leave', then 'keyhold-server primary join NEW-TOKEN'")
                return
            }
            if days < 30, !running {
                warn(
                    "primary", "this server's certificate at its primary expires in \(Int(days)) day(s)",
                    hint: "start the server: it renews the certificate at its heartbeat")
            }
        }
        do {
            // An empty push asks for nothing and stores nothing: it shows reachability, the
            // certificate and the primary's option.
            _ = try await identity.client(timeout: .seconds(10)).using {
                try await $0.post(APIPath.hierarchyPush, PushRequest(keys: []), as: PushResponse.self)
            }
            ok("primary", "\(identity.serverID) at \(identity.apiAddress) answers and accepts this server's pushes")
        } catch let error as KeyholdError where error.code == .hierarchyDisabled {
            warn("primary", "\(identity.serverID) at \(identity.apiAddress) answers but refuses: its 'use hierarchy' option is off", hint: error.hint)
        } catch {
            fail("primary", error)
        }
    }
}
