public import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Raw exchanges with a Unix socket, for tests that send what a well-behaved client would not
/// (malformed lines, idle connections). Blocking work runs on Dispatch threads.
public enum RawSocket {
    /// Connects to `path`; returns the descriptor (the caller closes it).
    public static func connect(_ path: String) throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw TestFailure("socket: errno \(errno)") }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            let bytes = Array(path.utf8)
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard connected == 0 else {
            close(fd)
            throw TestFailure("connect to \(path): errno \(errno)")
        }
        return fd
    }

    /// Sends `bytes` and reads until the other side closes.
    public static func exchange(_ path: String, _ bytes: Data) async throws -> Data {
        try await withCheckedThrowingContinuation { continuation in
            DispatchQueue.global().async {
                continuation.resume(
                    with: Result {
                        let fd = try connect(path)
                        defer { close(fd) }
                        _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                        return readToEnd(fd)
                    })
            }
        }
    }

    /// Everything `fd` delivers until the other side closes.
    public static func readToEnd(_ fd: Int32) -> Data {
        var answer = Data()
        var buffer = [UInt8](repeating: 0, count: 16_384)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0, errno == EINTR { continue }
            if n <= 0 { break }
            answer.append(contentsOf: buffer[..<n])
        }
        return answer
    }
}
