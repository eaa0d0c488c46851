import Foundation
import KeyholdCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An exclusive lock on a file, held for the life of this object (in practice, of the process):
/// one `keyhold-server run` per data directory, one `keyhold-agent run` per state directory.
///
/// It is a `flock(2)` on `path`, so the kernel releases it when the process ends however it ends
/// (a crash or `kill -9` leaves no stale lock). The holder's pid is written into the file, so a
/// refusal can name it.
public final class ProcessLock: Sendable {
    /// The locked file.
    public let path: String
    private let fd: Int32

    /// Takes the lock or throws `configuration`, naming the process that holds it.
    /// - Parameters:
    ///   - path: the lock file (created, mode 0600, if missing).
    ///   - what: what the lock protects, for the message ("the data directory /var/lib/…").
    ///   - holder: who would hold it, for the message ("keyhold-server").
    public init(path: String, protecting what: String, holder: String) throws {
        let fd = try SystemCall.check("open the lock file", path: path) { open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600) }
        if flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let code = errno
            let other = Self.readPID(fd)
            close(fd)
            guard code == EWOULDBLOCK else { throw SystemCall.error("lock", path: path, errno: code) }
            let who = other.map { "\(holder) (pid \($0))" } ?? "another \(holder)"
            throw KeyholdError(
                .configuration, "\(who) is already running on \(what)",
                hint: "stop it first\(other.map { " (kill \($0), or systemctl stop)" } ?? ""), or use another directory"
            )
        }
        ftruncate(fd, 0)
        let text = Array("\(getpid())\n".utf8)
        _ = text.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
        self.path = path
        self.fd = fd
    }

    private static func readPID(_ fd: Int32) -> Int32? {
        var buffer = [UInt8](repeating: 0, count: 16)
        let n = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
        guard n > 0 else { return nil }
        return Int32(String(decoding: buffer[..<n], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
    }

    deinit {
        // The lock goes with the descriptor; the file stays (removing it would race a new holder).
        close(fd)
    }
}
