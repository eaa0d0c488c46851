public import KeyholdCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The one gate between Keyhold and failing system calls: every `-1` result becomes a
/// ``KeyholdError`` with the operation, the path and an actionable hint.
public enum SystemCall {
    /// Returns `result` unless it is `-1`; retries on `EINTR`.
    @discardableResult
    public static func check<T: BinaryInteger>(_ what: String, path: String? = nil, _ call: () -> T) throws -> T {
        while true {
            let result = call()
            if result != -1 { return result }
            let code = errno
            if code == EINTR { continue }
            throw error(what, path: path, errno: code)
        }
    }

    /// The ``KeyholdError`` for a failed operation.
    public static func error(_ what: String, path: String?, errno code: Int32) -> KeyholdError {
        let reason = String(cString: strerror(code))
        let target = path.map { " \($0)" } ?? ""
        let hint: String
        switch code {
        case ENOENT: hint = "check the path; the file or its folder does not exist"
        case EACCES, EPERM: hint = "check the file's permissions, or run as a user who may access it"
        case ENOSPC, EDQUOT: hint = "free some space on the destination file system and try again"
        case EROFS: hint = "the file system is read-only; choose another destination"
        case EISDIR: hint = "give a file, not a folder"
        case EXDEV: hint = "keep the destination on the same file system as its folder"
        default: hint = "check the path and the file system, then try again"
        }
        return KeyholdError(.ioFailed, "cannot \(what)\(target): \(reason)", hint: hint)
    }
}

/// The process's limit on open files (`RLIMIT_NOFILE`).
public enum OpenFileLimit {
    /// Raises the soft limit to the hard one when it is lower, and returns the soft limit in
    /// force. The call is made only when it changes something (a systemd unit that sets
    /// `LimitNOFILE=` sets both, and its system-call filter may forbid `setrlimit`).
    @discardableResult
    public static func raiseToHardLimit() -> Int {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 1024 }
        if limit.rlim_cur < limit.rlim_max {
            var raised = limit
            raised.rlim_cur = limit.rlim_max
            if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 { limit = raised }
        }
        return limit.rlim_cur > rlim_t(Int.max) ? Int.max : Int(limit.rlim_cur)
    }
}
