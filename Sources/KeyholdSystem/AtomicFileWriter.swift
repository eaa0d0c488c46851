public import Foundation
import KeyholdCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Writes a file so that its destination shows either its old content or the complete new one,
/// never a part: bytes go to a temporary file in the destination's folder, which ``commit()``
/// syncs, renames over the destination, and follows with a sync of the folder. Anything not
/// committed (an error, a thrown segment) is removed by ``abort()`` or on deinit.
public final class AtomicFileWriter {
    /// The file the writer replaces on ``commit(mode:owner:beforeRename:)``.
    public let destination: String
    private let temporaryPath: String
    /// The temporary file, open for writing.
    public let fd: Int32
    private var finished = false

    /// Creates the temporary file (mode 0600 until ``commit(mode:owner:)``).
    /// - Throws: `unsafe_path` when `destination` is a symbolic link: the rename would replace the
    ///   link itself and leave the file it points to as it was, which is never what the caller means.
    public init(destination: String) throws {
        try Self.refuseSymbolicLink(destination, role: "the destination")
        self.destination = destination
        let (folder, base) = Self.split(destination)
        var template = Array("\(folder)/.\(base).keyhold-XXXXXX".utf8CString)
        let fd = try SystemCall.check("create a temporary file next to", path: destination) {
            template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        }
        self.fd = fd
        self.temporaryPath = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Replaces `destination` with `data`, atomically and durably, with permissions `mode`. The
    /// bytes go straight from `data` to the file (no copy: callers write secrets through this).
    public static func replace(_ destination: String, with data: Data, mode: mode_t) throws {
        let writer = try AtomicFileWriter(destination: destination)
        try data.withUnsafeBytes { try writer.append($0) }
        try writer.commit(mode: mode)
    }

    /// Appends all of `bytes` to the temporary file.
    public func append(_ bytes: UnsafeRawBufferPointer) throws {
        var done = 0
        while done < bytes.count {
            done += try SystemCall.check("write", path: destination) { write(fd, bytes.baseAddress! + done, bytes.count - done) }
        }
    }

    /// Makes the new content durable and visible under ``destination``.
    /// - Parameters:
    ///   - mode: permission bits of the finished file.
    ///   - owner: user and group to give it (used when replacing a file in place as root).
    ///   - beforeRename: a last check once the new content is durable; if it throws, the
    ///     temporary file is removed and the destination is untouched.
    public func commit(mode: mode_t, owner: (uid_t, gid_t)? = nil, beforeRename: () throws -> Void = {}) throws {
        precondition(!finished)
        defer { if !finished { abort() } }
        if let (uid, gid) = owner, geteuid() == 0 {
            try SystemCall.check("set the owner of", path: destination) { fchown(fd, uid, gid) }
        }
        try SystemCall.check("set the permissions of", path: destination) { fchmod(fd, mode) }
        try SystemCall.check("sync", path: destination) { fsync(fd) }
        try beforeRename()
        close(fd)
        finished = true
        do {
            try SystemCall.check("rename a temporary file onto", path: destination) { rename(temporaryPath, destination) }
        } catch {
            unlink(temporaryPath)
            throw error
        }
        try Self.syncFolder(of: destination)
    }

    /// Removes the temporary file; the destination is untouched.
    public func abort() {
        guard !finished else { return }
        finished = true
        close(fd)
        unlink(temporaryPath)
    }

    deinit { abort() }

    /// Syncs the folder holding `path`, so a rename in it survives a crash.
    public static func syncFolder(of path: String) throws {
        let folder = split(path).folder
        let dfd = try SystemCall.check("open folder", path: folder) { open(folder, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
        defer { close(dfd) }
        try SystemCall.check("sync folder", path: folder) { fsync(dfd) }
    }

    /// The folder (`.` when none) and the last component of `path`.
    public static func split(_ path: String) -> (folder: String, base: String) {
        guard let slash = path.lastIndex(of: "/") else { return (".", path) }
        let folder = String(path[..<slash])
        return (folder.isEmpty ? "/" : folder, String(path[path.index(after: slash)...]))
    }

    /// Throws `unsafe_path` if `path` itself is a symbolic link (links in the folders above it are
    /// followed as usual). `role` names the path in the message ("the destination", "the input").
    public static func refuseSymbolicLink(_ path: String, role: String) throws {
        var st = stat()
        guard lstat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFLNK else { return }
        let target = realpath(path, nil).map { p in
            defer { free(p) }
            return String(cString: p)
        }
        throw KeyholdError(
            .unsafePath,
            "\(role) \(path) is a symbolic link\(target.map { " to \($0)" } ?? ""); Keyhold replaces files by name, so it would replace the link and leave \(target ?? "its target") as it was",
            hint: target.map { "give the file itself: \($0)" } ?? "give the path of a regular file, not a link"
        )
    }

    /// Whether anything exists at `path` (a file, a folder, a dangling link).
    public static func exists(_ path: String) -> Bool {
        var st = stat()
        return lstat(path, &st) == 0
    }

    /// The process's umask, without changing it for more than an instant.
    public static var currentUmask: mode_t {
        let m = umask(0o022)
        umask(m)
        return m
    }
}
