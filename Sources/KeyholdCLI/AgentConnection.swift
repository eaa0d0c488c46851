#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Foundation
import KeyholdCommandLine
import KeyholdCore
import KeyholdProtocol

/// `--socket`, shared by the commands that talk to the agent.
struct AgentOptions: ParsableArguments {
    @Option(help: ArgumentHelp("The agent's socket (default: $KEYHOLD_SOCKET or /run/keyhold/agent.sock).", valueName: "path"))
    var socket: String?

    var path: String { socket ?? ProcessInfo.processInfo.environment["KEYHOLD_SOCKET"] ?? "/run/keyhold/agent.sock" }

    func connection() -> AgentConnection { AgentConnection(path: path) }
}

/// One request to the local `keyhold-agent` over its Unix socket (docs/spec/agent-socket.md).
struct AgentConnection {
    let path: String

    /// Sends one request; waits up to `timeout` seconds for the answer.
    func send(_ request: AgentRequest, timeout seconds: Int = 60) throws -> AgentResponse {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw SystemCall.error("create a socket for", path: path, errno: errno) }
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            throw KeyholdError(.usage, "the socket path \(path) is too long", hint: "use a shorter --socket path")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard connected == 0 else {
            let reason = String(cString: strerror(errno))
            throw KeyholdError(
                .unreachable, "cannot reach the Keyhold agent at \(path): \(reason)",
                hint: "start it ('systemctl start keyhold-agent'), or point to it with --socket or KEYHOLD_SOCKET"
            )
        }
        var timeout = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var line = try WireFormat.encoder().encode(request)
        line.append(0x0A)
        var sink = FileDescriptorSink(fd: fd, name: path)
        try line.withUnsafeBytes { try sink.write($0) }
        var response = Data()
        defer { response.withUnsafeMutableBytes { SecretKey.wipe($0) } }
        var buffer = [UInt8](repeating: 0, count: 16 * 1024)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { break }
            response.append(contentsOf: buffer[..<n])
        }
        buffer.withUnsafeMutableBytes { SecretKey.wipe($0) }
        guard let decoded = try? WireFormat.decoder().decode(AgentResponse.self, from: response) else {
            throw KeyholdError(.unreachable, "the agent at \(path) gave no valid answer", hint: "check the agent's log ('journalctl -u keyhold-agent')")
        }
        if let e = decoded.error { throw KeyholdError(.init(rawValue: e.code), e.message, hint: e.hint) }
        return decoded
    }

    /// A key from the agent (`file-key` for encryption, `key` for decryption).
    func key(_ request: AgentRequest) throws -> KeyFile {
        guard let key = try send(request).key, var bytes = Data(base64Encoded: key.secret) else {
            throw KeyholdError(.unreachable, "the agent answered without a key", hint: "check the agent's log")
        }
        defer { bytes.withUnsafeMutableBytes { SecretKey.wipe($0) } }
        return KeyFile(secret: try SecretKey(bytes: bytes), record: key.record)
    }
}

/// `keyhold enroll TOKEN`.
struct EnrollCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "enroll",
        abstract: "Enroll this device with a Keyhold server (root).",
        discussion: "The token comes from the administrator ('keyhold-server token create'). The agent checks the server's CA against the token, makes the device key here and keeps it in its state directory."
    )
    @Argument(help: "The enrollment token (kh1.…).") var token: String
    @OptionGroup var agent: AgentOptions

    func run() throws {
        let status = try agent.connection().send(AgentRequest(op: "enroll", token: token)).status
        print("enrolled: device \(status?.deviceID?.description ?? "?") with server \(status?.serverID?.description ?? "?") at \(status?.serverAddress ?? "?")")
    }
}

/// `keyhold reassign`.
struct ReassignCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reassign",
        abstract: "Move this device to another Keyhold server without losing access to its data (root).",
        discussion: """
        The token comes from the new server's administrator ('keyhold-server token create'). The agent checks the new \
        server's CA against the token, enrolls with it, re-escrows every key it holds and waits for each acknowledgement, \
        and only then switches to the new server; it then tells the old server that the device left. If anything fails \
        before the switch, the device stays with its old server; run the command again with the same token to resume.
        """
    )
    @Argument(help: "The enrollment token of the new server (kh1.…).") var token: String
    @Flag(help: "Check the new server and list the keys that would move; change nothing.") var dryRun = false
    @Flag(help: "Print JSON.") var json = false
    @OptionGroup var agent: AgentOptions

    func run() throws {
        guard let report = try agent.connection().send(AgentRequest(op: "reassign", token: token, dryRun: dryRun), timeout: 3600).reassign else {
            throw KeyholdError(.unreachable, "the agent answered without a report", hint: "check the agent's log")
        }
        if json {
            print(try WireFormat.prettyText(report))
            return
        }
        if report.dryRun {
            print("Dry run: nothing changed.")
            print("The server at \(report.toAddress) presents the CA the token names.")
            print("This device would move from server \(report.fromServerID) (\(report.fromAddress)) to it, re-escrowing \(report.keys.count) key\(report.keys.count == 1 ? "" : "s"):")
            for id in report.keys { print("  \(id)") }
            return
        }
        print("Reassigned: this device is now \(report.deviceID?.description ?? "?") at server \(report.toServerID?.description ?? "?") (\(report.toAddress)).")
        print("Re-escrowed \(report.keys.count) key\(report.keys.count == 1 ? "" : "s") (\(report.reescrowed) new to that server, \(report.alreadyPresent) already there), each acknowledged before the switch.")
        if report.oldServerNotified {
            print("The old server \(report.fromServerID) marked this device as moved; it keeps its keys.")
        } else {
            print("The old server \(report.fromServerID) could not be told (\(report.oldServerNote ?? "no answer")); its administrator may revoke this device there.")
        }
    }
}

/// `keyhold status`.
struct StatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "status", abstract: "Show the agent's state.")
    @OptionGroup var agent: AgentOptions
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        guard let status = try agent.connection().send(AgentRequest(op: "status")).status else {
            throw KeyholdError(.unreachable, "the agent answered without a status", hint: "check the agent's log")
        }
        if json {
            print(try WireFormat.prettyText(status))
            return
        }
        let date = { (d: Date?) in d.map { ISO8601DateFormatter().string(from: $0) } ?? "never" }
        print("""
        enrolled:        \(status.enrolled ? "yes" : "no")
        server:          \(status.serverID?.description ?? "-") at \(status.serverAddress ?? "-")
        device:          \(status.deviceID?.description ?? "-")
        last heartbeat:  \(date(status.lastHeartbeat))\(status.lastHeartbeatError.map { " (last attempt failed: \($0))" } ?? "")
        cached keys:     \(status.cachedKeys)
        active file key: \(status.activeFileKey?.description ?? "none yet")
        outbox:          \(status.outbox) key(s) awaiting escrow
        agent version:   \(status.version)
        """)
    }
}
