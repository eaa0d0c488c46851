import KeyholdCommandLine
import KeyholdCore
import KeyholdSystem

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The rules for `--in-place`, which replaces a file by writing its result beside it and renaming
/// the result over its name. A rename replaces one *name*; it only removes the original content
/// when that name was the content's only way in. So Keyhold refuses, before reading anything:
///
/// - a symbolic link (the link would be replaced and its target left as it was);
/// - a file with other hard links (the original would live on under the other names);
/// - a file in a folder that users other than the folder's owner may write, unless the folder is
///   sticky (they could rename the original away while it is read, and it would survive).
///
/// and checks, around the rename, that the name still leads to the file that was read and that the
/// original has no name left afterwards.
struct InPlaceReplacement {
    let path: String
    /// The input's status when it was opened.
    let original: stat

    /// Checks the rules for `input` (opened from `path` without following a final link).
    init(path: String, input: InputFile) throws {
        guard let st = input.regularFileStatus else {
            throw KeyholdError(.usage, "--in-place needs a regular file, not \(input.name)", hint: "use --output to write elsewhere")
        }
        if st.st_nlink > 1 {
            throw KeyholdError(
                .unsafePath,
                "\(path) has \(st.st_nlink) names (hard links); replacing it in place would leave its original content under the other \(st.st_nlink - 1)",
                hint: "find them with 'find / -xdev -samefile \(path)' and remove them first, or write to a new file with -o"
            )
        }
        let folder = AtomicFileWriter.split(path).folder
        var dir = stat()
        try SystemCall.check("inspect the folder", path: folder) { lstat(folder, &dir) }
        if (dir.st_mode & S_IFMT) == S_IFDIR, dir.st_mode & (S_IWGRP | S_IWOTH) != 0, dir.st_mode & S_ISVTX == 0 {
            throw KeyholdError(
                .unsafePath,
                "\(folder) can be written by users other than its owner (mode \(String(dir.st_mode & 0o7777, radix: 8))), so one of them could move \(path) aside while it is replaced and keep the original",
                hint: "move the file into a folder only you can write (or one with the sticky bit, like /tmp), or write to a new file with -o"
            )
        }
        self.path = path
        self.original = st
    }

    /// Just before the rename: the name must still lead to the file that was read.
    func checkUnchanged() throws {
        var now = stat()
        guard lstat(path, &now) == 0, now.st_dev == original.st_dev, now.st_ino == original.st_ino else {
            throw KeyholdError(
                .unsafePath, "\(path) was replaced by another file while Keyhold read it; nothing was changed",
                hint: "find out what else is writing to that folder, then run the command again"
            )
        }
    }

    /// Just after the rename: the original content must have no name left (`fd` still holds it open).
    func checkOriginalGone(fd: Int32) throws {
        var after = stat()
        guard fstat(fd, &after) == 0, after.st_nlink > 0 else { return }
        throw KeyholdError(
            .unsafePath,
            "\(path) was replaced, but its original content is still on disk under \(after.st_nlink) other name(s) made while it was read",
            hint: "find them with 'find / -xdev -inum \(after.st_ino)' on that file system and remove them"
        )
    }
}
