import ArgumentParser
import Foundation
import KeyholdCommandLine
import KeyholdCore
import KeyholdFormat
import KeyholdProtocol
import KeyholdSystem

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `keyhold file …`: encrypt, decrypt and inspect files in the Keyhold file format.
struct FileCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "file",
        abstract: "Encrypt, decrypt and inspect files.",
        discussion: "The format is specified in docs/spec/file-format.md; its body is Tink's AES-256-GCM-HKDF streaming AEAD.",
        subcommands: [Encrypt.self, Decrypt.self, Rekey.self, Info.self]
    )
}

/// Where a `file` command writes.
struct DestinationOptions: ParsableArguments {
    @Option(name: .shortAndLong, help: ArgumentHelp("Write to OUTPUT ('-' for standard output).", valueName: "output"))
    var output: String?

    @Flag(help: "Replace INPUT itself, crash-safely: the original goes only after the new file is complete and synced.")
    var inPlace = false

    @Flag(help: "Overwrite OUTPUT if it exists.")
    var force = false

    @Flag(name: .shortAndLong, help: "Print nothing on success.")
    var quiet = false

    /// Opens the input: with `--in-place` without following a final symbolic link.
    func open(_ input: String) throws -> InputFile {
        if inPlace, input == "-" {
            throw KeyholdError(.usage, "--in-place needs a regular file, not standard input", hint: "use --output to write elsewhere")
        }
        return try InputFile(path: input, followingLinks: !inPlace)
    }

    /// Where the result goes: standard output, a path, or the input itself (checked by
    /// ``InPlaceReplacement``), after checking the combination is sensible.
    func destination(for input: String, inputFile: InputFile) throws -> Destination {
        if inPlace {
            guard output == nil else {
                throw KeyholdError(.usage, "--in-place and --output cannot be used together", hint: "give one of them")
            }
            return .inPlace(try InPlaceReplacement(path: input, input: inputFile))
        }
        guard let output else {
            throw KeyholdError(.usage, "no destination given", hint: "add '-o OUTPUT' (or '-o -' for standard output), or --in-place")
        }
        guard output != "-" else { return .standardOutput }
        try AtomicFileWriter.refuseSymbolicLink(output, role: "the output")
        var st = stat()
        if stat(output, &st) == 0 {
            if let inStat = inputFile.regularFileStatus, inStat.st_dev == st.st_dev, inStat.st_ino == st.st_ino {
                throw KeyholdError(.usage, "the output \(output) is the input file", hint: "use --in-place to replace a file with its own result")
            }
            guard force else {
                throw KeyholdError(.destinationExists, "\(output) already exists", hint: "choose another name, or add --force to replace it")
            }
        }
        return .file(output)
    }

    func say(_ text: String) {
        if !quiet { FileHandle.standardError.write(Data("keyhold: \(text)\n".utf8)) }
    }
}

/// Where a `file` command writes its result.
enum Destination {
    case standardOutput
    /// A new file (or one replaced with `--force`).
    case file(String)
    /// The input itself, under the rules of ``InPlaceReplacement``.
    case inPlace(InPlaceReplacement)

    /// How messages name it.
    var name: String {
        switch self {
        case .standardOutput: return "standard output"
        case .file(let path): return path
        case .inPlace(let replacement): return replacement.path
        }
    }
}

/// Runs a streaming transform from an input to a destination, atomically unless it is standard output.
enum Transform {
    static func run(
        input inputFile: InputFile,
        destination: Destination,
        newFileMode: mode_t,
        progressLabel: String,
        _ body: (inout FileDescriptorSource, inout FileDescriptorSink, ProgressLine) throws -> StreamSummary
    ) throws -> StreamSummary {
        var source = inputFile.source
        let progress = ProgressLine(progressLabel, total: inputFile.size)
        defer { progress.finish() }
        let path: String
        switch destination {
        case .standardOutput:
            var sink = FileDescriptorSink(fd: STDOUT_FILENO, name: "standard output")
            return try body(&source, &sink, progress)
        case .file(let p): path = p
        case .inPlace(let replacement): path = replacement.path
        }
        let writer = try AtomicFileWriter(destination: path)
        var sink = writer.sink
        let summary: StreamSummary
        do {
            summary = try body(&source, &sink, progress)
        } catch {
            writer.abort()
            throw error
        }
        if case .inPlace(let replacement) = destination {
            let st = replacement.original
            try writer.commit(mode: st.st_mode & 0o7777, owner: (st.st_uid, st.st_gid), beforeRename: replacement.checkUnchanged)
            try replacement.checkOriginalGone(fd: inputFile.fd)
        } else {
            try writer.commit(mode: newFileMode)
        }
        return summary
    }
}

extension FileCommand {
    struct Encrypt: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Encrypt a file.",
            discussion: """
                Examples (the agent's escrowed file key, unless --key-file names an offline key):
                  keyhold file encrypt report.pdf -o report.pdf.khf
                  keyhold file encrypt report.pdf --in-place
                  tar c docs | keyhold file encrypt - -o docs.tar.khf
                  keyhold file encrypt notes.txt -o notes.khf --key-file key.json   (a key from 'keyhold key new')
                """
        )

        @Argument(help: ArgumentHelp("The file to encrypt ('-' for standard input).", valueName: "input"))
        var input: String

        @OptionGroup var destination: DestinationOptions

        @Option(
            help: ArgumentHelp(
                "Use this key file (32 raw bytes, or a JSON key record from 'keyhold key new') instead of the agent's escrowed file key.",
                valueName: "file"))
        var keyFile: String?

        @OptionGroup var agent: AgentOptions

        @Option(help: ArgumentHelp("With a raw key: the key id to record in the header.", valueName: "uuid"))
        var keyID: String?

        @Option(help: ArgumentHelp("With a raw key: the origin server id to record in the header.", valueName: "uuid"))
        var originServer: String?

        @Option(help: ArgumentHelp("Ciphertext segment size in bytes (1024 to 8388608).", valueName: "bytes"))
        var segmentSize: Int = FileHeader.defaultSegmentSize

        func run() throws {
            let inputFile = try destination.open(input)
            let target = try destination.destination(for: input, inputFile: inputFile)
            if case .standardOutput = target, isatty(STDOUT_FILENO) == 1 {
                throw KeyholdError(
                    .usage, "refusing to write encrypted bytes to a terminal", hint: "redirect standard output to a file, or use -o FILE")
            }
            if destination.inPlace, !destination.force, try Self.startsWithMagic(inputFile) {
                throw KeyholdError(
                    .usage, "\(input) is already a Keyhold encrypted file",
                    hint: "to encrypt it a second time anyway, add --force"
                )
            }
            // The agent escrows a new key before handing it out; asked only once the input opened
            // and the destination passed its checks.
            let key = try keyFile.map(KeyFile.load) ?? agent.key(.fileKey)
            let header = try makeHeader(key)
            let summary = try Transform.run(
                input: inputFile, destination: target,
                newFileMode: 0o666 & ~AtomicFileWriter.currentUmask, progressLabel: "encrypting"
            ) { source, sink, progress in
                try KeyholdFile.encrypt(from: &source, to: &sink, key: key.secret, header: header, progress: progress.update)
            }
            destination.say("encrypted \(inputFile.name) to \(target.name) (\(summary.plaintextBytes) bytes, key \(header.keyID))")
        }

        private func makeHeader(_ key: KeyFile) throws -> FileHeader {
            if let record = key.record {
                guard keyID == nil, originServer == nil else {
                    throw KeyholdError(
                        .usage, "--key-id and --origin-server apply only to raw keys; \(keyFile ?? "the agent's key") is a key record",
                        hint: "drop those options: the record's own ids are used"
                    )
                }
                guard record.kind == .file else {
                    throw KeyholdError(
                        .invalidKey, "key \(record.id) is a \(record.kind) key, not a file key",
                        hint: "use a file key ('keyhold key new --kind file')")
                }
                guard record.state == .active else {
                    throw KeyholdError(
                        .invalidKey, "key \(record.id) is revoked; nothing new may be encrypted with it",
                        hint: "create a new key with 'keyhold key new'")
                }
                return try FileHeader(keyID: record.id, originServerID: record.originServerID, segmentSize: segmentSize)
            }
            return try FileHeader(
                keyID: try parseID(keyID, option: "--key-id") ?? .zero,
                originServerID: try parseID(originServer, option: "--origin-server") ?? .zero,
                segmentSize: segmentSize
            )
        }

        static func startsWithMagic(_ file: InputFile) throws -> Bool {
            var head = [UInt8](repeating: 0, count: FileHeader.magic.count)
            let n = try head.withUnsafeMutableBytes { buf in
                try SystemCall.check("read", path: file.name) { pread(file.fd, buf.baseAddress, buf.count, 0) }
            }
            return n == head.count && head == FileHeader.magic
        }
    }

    struct Decrypt: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Decrypt a Keyhold file.",
            discussion: """
                The plaintext reaches OUTPUT only after every segment authenticated: it is written to a
                temporary file beside OUTPUT and renamed at the end. New plaintext files get mode 0600.
                Examples (the key comes from the agent, which asks the server):
                  keyhold file decrypt report.pdf.khf -o report.pdf
                  keyhold file decrypt report.pdf --in-place
                  keyhold file decrypt notes.khf -o notes.txt --key-file key.json   (an offline key)
                  keyhold file decrypt report.pdf.khf --offline        (no server: prints a request code)
                  keyhold file decrypt report.pdf.khf -o report.pdf --response 46DCBP-0VHK54-…
                """
        )

        @Argument(help: ArgumentHelp("The file to decrypt ('-' for standard input).", valueName: "input"))
        var input: String

        @OptionGroup var destination: DestinationOptions

        @Option(help: ArgumentHelp("Use this key file (32 raw bytes, or a JSON key record) instead of asking the agent.", valueName: "file"))
        var keyFile: String?

        @OptionGroup var access: OfflineAccessOptions

        @OptionGroup var agent: AgentOptions

        func run() throws {
            let inputFile = try destination.open(input)
            // The destination's checks come first (with --offline nothing is written).
            let target = access.offline ? nil : try destination.destination(for: input, inputFile: inputFile)
            // Read the header first: it names the key the agent must provide.
            var head = [UInt8](repeating: 0, count: FileHeader.length)
            var peek = inputFile.source
            let n = try head.withUnsafeMutableBytes { try peek.readFully(into: $0) }
            let header = try FileHeader(parsing: head[..<n])
            guard let target else {
                return try access.printRequest(header.keyID, kind: .file, agent: agent)
            }
            let code = try access.responseCode()
            let key = try keyFile.map(KeyFile.load) ?? agent.key(code.map { .offlineKey(code: $0, keyID: header.keyID) } ?? .key(header.keyID))
            let summary = try Transform.run(
                input: inputFile, destination: target,
                newFileMode: 0o600, progressLabel: "decrypting"
            ) { source, sink, progress in
                var replay = PrefixedSource(prefix: Array(head[..<n]), base: source)
                return try KeyholdFile.decrypt(from: &replay, to: &sink, key: key.secret, expecting: key.record?.id, progress: progress.update)
            }
            destination.say("decrypted \(inputFile.name) to \(target.name) (\(summary.plaintextBytes) bytes)")
        }
    }

    struct Info: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show a Keyhold file's header and sizes; needs no key.",
            discussion: """
                The sizes are what the unauthenticated header and the file length claim; only decryption proves them.
                Example:
                  keyhold file info report.pdf.khf --json
                """
        )

        @Argument(help: ArgumentHelp("The file to inspect ('-' for standard input).", valueName: "file"))
        var file: String

        @Flag(help: "Print JSON.")
        var json = false

        func run() throws {
            let input = try InputFile(path: file)
            var source = input.source
            let header = try KeyholdFile.readHeader(from: &source)
            let size: Int
            if let known = input.size {
                size = known
            } else {
                var rest = 0
                var buffer = [UInt8](repeating: 0, count: 1 << 20)
                while case let n = try buffer.withUnsafeMutableBytes({ try source.read(into: $0) }), n > 0 { rest += n }
                size = FileHeader.length + 40 + rest
            }
            let layout = try FileLayout(header: header, fileSize: size)
            let info = FileInfo(
                file: input.name, version: Int(FileHeader.version), keyID: header.keyID,
                originServerID: header.originServerID, segmentSize: header.segmentSize,
                segments: layout.segments, fileSize: layout.fileSize, plaintextLength: layout.plaintextLength
            )
            if json {
                print(try WireFormat.prettyText(info))
            } else {
                print(info.text)
            }
        }
    }
}

/// Gives back bytes already read (the header) before the rest of a source.
struct PrefixedSource<Base: ByteSource>: ByteSource {
    var prefix: [UInt8]
    var base: Base
    private var offset = 0

    init(prefix: [UInt8], base: Base) {
        self.prefix = prefix
        self.base = base
    }

    mutating func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        if offset < prefix.count {
            let n = min(buffer.count, prefix.count - offset)
            prefix.withUnsafeBytes { buffer.baseAddress!.copyMemory(from: $0.baseAddress! + offset, byteCount: n) }
            offset += n
            return n
        }
        return try base.read(into: buffer)
    }
}

/// What `keyhold file info` reports.
struct FileInfo: Codable {
    var file: String
    var version: Int
    var keyID: KeyID
    var originServerID: ServerID
    var segmentSize: Int
    var segments: Int
    var fileSize: Int
    var plaintextLength: Int

    enum CodingKeys: String, CodingKey {
        case file, version, segments
        case keyID = "key_id"
        case originServerID = "origin_server_id"
        case segmentSize = "segment_size"
        case fileSize = "file_size"
        case plaintextLength = "plaintext_length"
    }

    var text: String {
        """
        file:              \(file)
        format:            Keyhold file, version \(version)
        key id:            \(keyID)
        origin server id:  \(originServerID)
        segment size:      \(segmentSize) bytes (\(ProgressLine.bytes(segmentSize)))
        segments:          \(segments)
        file size:         \(fileSize) bytes
        plaintext length:  \(plaintextLength) bytes (claimed by the header; proven only by decryption)
        """
    }
}

/// Parses an optional identifier option, naming the option in the error.
func parseID<Kind>(_ text: String?, option: String) throws -> Identifier<Kind>? {
    guard let text else { return nil }
    guard let id = Identifier<Kind>(text) else {
        throw KeyholdError(
            .usage, "\(option) \(text) is not a valid \(Kind.displayName)", hint: "give a UUID such as 0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0")
    }
    return id
}
