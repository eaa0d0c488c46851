import KeyholdCommandLine
import KeyholdCore
import KeyholdFormat
import KeyholdSystem

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Reads a file descriptor (a file, a pipe or standard input). Does not own the descriptor.
struct FileDescriptorSource: ByteSource {
    let fd: Int32
    let name: String

    mutating func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        try SystemCall.check("read", path: name) { Glibc.read(fd, buffer.baseAddress, buffer.count) }
    }
}

/// Writes a file descriptor completely. Does not own the descriptor.
struct FileDescriptorSink: ByteSink {
    let fd: Int32
    let name: String

    mutating func write(_ bytes: UnsafeRawBufferPointer) throws {
        var done = 0
        while done < bytes.count {
            done += try SystemCall.check("write", path: name) {
                Glibc.write(fd, bytes.baseAddress! + done, bytes.count - done)
            }
        }
    }
}

/// An open input: a named file or standard input (`-`).
final class InputFile {
    let fd: Int32
    let name: String
    /// The file's status when it is a regular file; `nil` for pipes and terminals.
    let regularFileStatus: stat?
    private let owned: Bool

    /// Opens `path` (`-`: standard input). With `followingLinks: false` a final symbolic link is
    /// refused (`unsafe_path`) rather than opened: what `--in-place` replaces must be the file itself.
    init(path: String, followingLinks: Bool = true) throws {
        if path == "-" {
            fd = STDIN_FILENO
            name = "standard input"
            owned = false
        } else {
            if !followingLinks { try AtomicFileWriter.refuseSymbolicLink(path, role: "the input") }
            let flags = O_RDONLY | O_CLOEXEC | (followingLinks ? 0 : O_NOFOLLOW)
            do {
                fd = try SystemCall.check("open", path: path) { open(path, flags) }
            } catch {
                // A link put there since the check above: the same refusal.
                if errno == ELOOP { try AtomicFileWriter.refuseSymbolicLink(path, role: "the input") }
                throw error
            }
            name = path
            owned = true
        }
        var st = stat()
        if fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG {
            regularFileStatus = st
        } else if fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR {
            if owned { close(fd) }
            throw SystemCall.error("read", path: path, errno: EISDIR)
        } else {
            regularFileStatus = nil
        }
    }

    var size: Int? { regularFileStatus.map { Int($0.st_size) } }
    var source: FileDescriptorSource { FileDescriptorSource(fd: fd, name: name) }

    deinit { if owned { close(fd) } }
}

extension AtomicFileWriter {
    /// Where to write.
    var sink: FileDescriptorSink { FileDescriptorSink(fd: fd, name: destination) }
}
