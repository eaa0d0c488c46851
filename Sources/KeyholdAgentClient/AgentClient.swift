import Foundation
import KeyholdCore
public import KeyholdProtocol
import KeyholdSystem

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One request to the local `keyhold-agent` over its Unix socket (docs/spec/agent-socket.md): the
/// client of the `keyhold` command, the unlock unit, the tests and the demo.
///
/// It blocks while it waits (at most `timeout`): use it from a command's synchronous code or a
/// thread of its own, not from a Swift concurrency task that others wait for.
public struct AgentClient: Sendable {
    /// The socket.
    public let path: String
    /// Seconds to wait for the answer.
    public let timeout: Int

    /// The default socket path: `$KEYHOLD_SOCKET`, else `/run/keyhold/agent.sock`.
    public static var defaultPath: String { ProcessInfo.processInfo.environment["KEYHOLD_SOCKET"] ?? "/run/keyhold/agent.sock" }

    /// A client for the agent at `path`.
    public init(path: String = AgentClient.defaultPath, timeout: Int = 60) {
        self.path = path
        self.timeout = timeout
    }

    /// Whether a process listens on the socket at `path` (a connection is accepted by the kernel;
    /// nothing is sent). A socket file nobody listens on is what a killed agent leaves behind.
    public static func someoneListens(at path: String) -> Bool {
        guard let fd = try? connected(path, timeout: 2) else { return false }
        close(fd)
        return true
    }

    /// Sends `request` and returns the agent's answer; an error answer is thrown as the error it carries.
    public func send(_ request: AgentRequest) throws -> AgentResponse {
        let fd = try Self.connected(path, timeout: timeout)
        defer { close(fd) }
        var line = try WireFormat.encoder().encode(request)
        line.append(0x0A)
        let failure: Int32? = line.withUnsafeBytes { raw in
            var done = 0
            while done < raw.count {
                let n = Glibc.send(fd, raw.baseAddress! + done, raw.count - done, Int32(MSG_NOSIGNAL))
                if n >= 0 {
                    done += n
                } else if errno != EINTR {
                    return errno
                }
            }
            return nil
        }
        if let failure {
            // The agent answers a caller it refuses at once and closes, perhaps before the request
            // is written: that answer, already waiting, says why. Only without one is the failed
            // write the error.
            if failure == EPIPE || failure == ECONNRESET, let refusal = try? Self.readAnswer(fd, path: path, timeout: timeout),
                case .failure(let body) = refusal
            {
                throw body.error
            }
            throw SystemCall.error("write to the agent at", path: path, errno: failure)
        }
        let response = try Self.readAnswer(fd, path: path, timeout: timeout)
        if case .failure(let body) = response { throw body.error }
        return response
    }

    /// Reads the agent's one-line answer until it closes the connection.
    private static func readAnswer(_ fd: Int32, path: String, timeout: Int) throws -> AgentResponse {
        var answer = Data()
        defer { answer.withUnsafeMutableBytes { SecretKey.wipe($0) } }
        var buffer = [UInt8](repeating: 0, count: 16 * 1024)
        defer { buffer.withUnsafeMutableBytes { SecretKey.wipe($0) } }
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0, errno == EINTR { continue }
            if n < 0, errno == EAGAIN || errno == EWOULDBLOCK {
                throw KeyholdError(
                    .unreachable, "the agent at \(path) did not answer within \(timeout) seconds",
                    hint: "check the agent's log ('journalctl -u keyhold-agent')")
            }
            guard n > 0 else { break }
            answer.append(contentsOf: buffer[..<n])
        }
        do {
            return try WireFormat.decoder().decode(AgentResponse.self, from: answer)
        } catch {
            throw KeyholdError(
                .unreachable, "the agent at \(path) gave no valid answer", hint: "check the agent's log ('journalctl -u keyhold-agent')")
        }
    }

    /// A socket connected to `path`, with send and receive timeouts of `timeout` seconds.
    private static func connected(_ path: String, timeout: Int) throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemCall.error("create a socket for", path: path, errno: errno) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            close(fd)
            throw KeyholdError(.usage, "the socket path \(path) is too long", hint: "use a shorter --socket path")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        var wait = timeval(tv_sec: timeout, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wait, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &wait, socklen_t(MemoryLayout<timeval>.size))
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard result == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw KeyholdError(
                .unreachable, "cannot reach the Keyhold agent at \(path): \(reason)",
                hint: "start it ('systemctl start keyhold-agent'), or point to it with --socket or KEYHOLD_SOCKET"
            )
        }
        return fd
    }
}
