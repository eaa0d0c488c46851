import CKeyholdPeer
import Foundation
import KeyholdCore
import KeyholdProtocol
import Logging
import ServiceLifecycle

/// Who may do what on the local socket: root everything; members of `group` may encrypt and
/// decrypt files and read the status; anyone else nothing.
struct SocketPolicy: Sendable {
    var group: String

    func allows(op: String, uid: UInt32, gid: UInt32) -> Bool {
        if uid == 0 { return true }
        guard ["status", "file-key", "key"].contains(op) else { return false }
        return keyhold_user_in_group(uid, gid, group) == 1
    }
}

/// The local API: a Unix socket (mode 0666; callers are told apart by SO_PEERCRED), one JSON
/// request line and one JSON response line per connection. Accepting runs on its own thread;
/// each connection is served by a task with a 5-second read timeout.
final class SocketServer: Service, Sendable {
    let path: String
    let agent: Agent
    let policy: SocketPolicy
    let logger: Logger

    init(path: String, agent: Agent, policy: SocketPolicy, logger: Logger) {
        self.path = path
        self.agent = agent
        self.policy = policy
        self.logger = logger
    }

    /// Binds the socket; throws a clear error when that is impossible.
    func bind() throws -> Int32 {
        let folder = (path as NSString).deletingLastPathComponent
        try? FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard fd >= 0, bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            throw KeyholdError(.configuration, "cannot use \(path) as the agent socket", hint: "give a shorter --socket path")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        unlink(path)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0, chmod(path, 0o666) == 0, listen(fd, 64) == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw KeyholdError(.configuration, "cannot listen on \(path): \(reason)", hint: "check that the folder exists and is writable, or pass --socket")
        }
        return fd
    }

    func run() async throws {
        let fd = try bind()
        logger.info("listening", metadata: ["socket": "\(path)"])
        let accepting = Thread { [self] in
            while true {
                let conn = accept(fd, nil, nil)
                if conn < 0 {
                    if errno == EINTR { continue }
                    return  // the listening socket was shut down
                }
                _ = fcntl(conn, F_SETFD, FD_CLOEXEC)
                Task { await self.serve(conn) }
            }
        }
        accepting.start()
        try? await gracefulShutdown()
        shutdown(fd, Int32(SHUT_RDWR))
        close(fd)
        unlink(path)
    }

    private func serve(_ conn: Int32) async {
        defer { close(conn) }
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(conn, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(conn, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var uid: UInt32 = 0, gid: UInt32 = 0, pid: Int32 = 0
        guard keyhold_peer_credentials(conn, &uid, &gid, &pid) == 0 else { return }
        let response: AgentResponse
        do {
            let line = try readLine(conn)
            let request: AgentRequest
            do {
                request = try WireFormat.decoder().decode(AgentRequest.self, from: line)
            } catch {
                throw KeyholdError(.invalidRequest, "the request is not valid JSON for the agent", hint: "see docs/spec/agent-socket.md")
            }
            guard policy.allows(op: request.op, uid: uid, gid: gid) else {
                logger.notice("refused", metadata: ["op": "\(request.op)", "uid": "\(uid)", "pid": "\(pid)"])
                throw KeyholdError(
                    .forbidden, "user \(uid) may not '\(request.op)' through the Keyhold agent",
                    hint: uid == 0 ? "" : "ask an administrator to add you to the '\(policy.group)' group (or run as root)"
                )
            }
            response = try await handle(request)
        } catch let error as KeyholdError {
            response = AgentResponse(error: ErrorBody(code: error.code.rawValue, message: error.message, hint: error.hint))
        } catch {
            response = AgentResponse(error: ErrorBody(code: "internal", message: "the agent failed: \(error)", hint: "see the agent's log"))
        }
        var data = (try? WireFormat.encoder().encode(response)) ?? Data()
        data.append(0x0A)
        defer { data.withUnsafeMutableBytes { SecretKey.wipe($0) } }
        data.withUnsafeBytes { raw in
            var sent = 0
            while sent < raw.count {
                let n = send(conn, raw.baseAddress! + sent, raw.count - sent, Int32(MSG_NOSIGNAL))
                if n <= 0 { return }
                sent += n
            }
        }
    }

    private func handle(_ request: AgentRequest) async throws -> AgentResponse {
        switch request.op {
        case "status":
            return AgentResponse(status: await agent.status())
        case "enroll":
            guard let token = request.token else { throw KeyholdError(.invalidRequest, "enroll needs a token", hint: "keyhold enroll TOKEN") }
            return AgentResponse(status: try await agent.enroll(tokenText: token))
        case "reassign":
            guard let token = request.token else { throw KeyholdError(.invalidRequest, "reassign needs a token", hint: "keyhold reassign TOKEN") }
            return AgentResponse(reassign: try await agent.reassign(tokenText: token, dryRun: request.dryRun ?? false))
        case "drive-key":
            return AgentResponse(key: Self.wire(try await agent.driveKey(label: request.label ?? "drive key")))
        case "file-key":
            return AgentResponse(key: Self.wire(try await agent.fileKey()))
        case "key":
            guard let id = request.keyID else { throw KeyholdError(.invalidRequest, "key needs a key_id", hint: "see docs/spec/agent-socket.md") }
            return AgentResponse(key: Self.wire(try await agent.key(id)))
        default:
            throw KeyholdError(.invalidRequest, "unknown operation '\(request.op)'", hint: "use status, enroll, reassign, file-key, drive-key or key")
        }
    }

    private static func wire(_ m: KeyMaterial) -> AgentKey {
        AgentKey(record: m.record, secret: m.secret.withUnsafeBytes { Data($0).base64EncodedString() })
    }

    private func readLine(_ conn: Int32) throws -> Data {
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        var count = 0
        while count < buffer.count {
            let n = buffer.withUnsafeMutableBytes { recv(conn, $0.baseAddress! + count, $0.count - count, 0) }
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { break }
            if let newline = buffer[count..<(count + n)].firstIndex(of: 0x0A) { return Data(buffer[..<newline]) }
            count += n
        }
        if count > 0, count < buffer.count { return Data(buffer[..<count]) }
        throw KeyholdError(.invalidRequest, "no complete request line within 5 seconds or 64 KiB", hint: "send one JSON object followed by a newline")
    }
}

/// Heartbeats to the server at a fixed interval (nothing while not enrolled).
struct HeartbeatService: Service {
    let agent: Agent
    let interval: Duration

    func run() async throws {
        while !Task.isShuttingDownGracefully {
            await agent.heartbeat()
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) }
        }
    }
}
