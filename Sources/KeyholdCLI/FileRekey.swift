import ArgumentParser
import Foundation
import KeyholdCommandLine
import KeyholdCore
import KeyholdFormat
import KeyholdProtocol
import KeyholdSystem
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

extension FileCommand {
    /// `keyhold file rekey FILE`: the file re-encrypted in place under another escrowed key,
    /// after its key was revealed (docs/operations.md, "The help desk").
    struct Rekey: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Re-encrypt a Keyhold file in place under a new escrowed key (after its key was revealed).",
            discussion: """
                The file is decrypted and encrypted again in one pass, the plaintext going only through memory; the new \
                file replaces the old one crash-safely, as with --in-place: after a crash the old file or the complete new \
                one is there, never a half. The new key is the agent's file key, made anew (and escrowed first) when the \
                current one is the file's key or was revealed. The old key is not retired: other files may still use it.
                Example: keyhold file rekey report.pdf.khf
                """)

        @Argument(help: ArgumentHelp("The Keyhold file to re-encrypt.", valueName: "file"))
        var input: String

        @Flag(name: .shortAndLong, help: "Print nothing on success.")
        var quiet = false

        @OptionGroup var agent: AgentOptions

        func run() throws {
            let inputFile = try InputFile(path: input, followingLinks: false)
            let replacement = try InPlaceReplacement(path: input, input: inputFile)
            var head = [UInt8](repeating: 0, count: FileHeader.length)
            let n = try head.withUnsafeMutableBytes { buf in
                try SystemCall.check("read", path: input) { pread(inputFile.fd, buf.baseAddress, buf.count, 0) }
            }
            let header = try FileHeader(parsing: head[..<n])
            let old = try agent.key(.key(header.keyID))
            let new = try agent.key(.rotateFileKey(replacing: header.keyID))
            guard let record = new.record, record.id != header.keyID, record.kind == .file, record.state == .active else {
                throw KeyholdError(
                    .internalError, "the agent offered no new file key to replace \(header.keyID)", hint: "check that keyhold and keyhold-agent match"
                )
            }
            let newHeader = try FileHeader(keyID: record.id, originServerID: record.originServerID, segmentSize: header.segmentSize)
            let summary = try Transform.run(
                input: inputFile, destination: .inPlace(replacement), newFileMode: 0o600, progressLabel: "re-encrypting"
            ) { _, sink, progress in
                try Self.reencrypt(inputFile, oldKey: old, header: newHeader, newKey: new.secret, to: &sink, progress: progress.update)
            }
            if !quiet {
                FileHandle.standardError.write(
                    Data("keyhold: re-encrypted \(input) (\(summary.plaintextBytes) bytes): key \(header.keyID) -> \(record.id)\n".utf8))
            }
        }

        /// Decrypts `input` on a second thread into a pipe that this thread encrypts from, so both
        /// cores work and memory stays at a few segments. A decryption failure (a damaged file, the
        /// wrong key) is thrown after the encryption stops, before anything is committed.
        static func reencrypt(
            _ input: InputFile, oldKey: KeyFile, header: FileHeader, newKey: SecretKey, to sink: inout FileDescriptorSink,
            progress: @escaping (Int) -> Void
        ) throws -> StreamSummary {
            var ends: [Int32] = [0, 0]
            try SystemCall.check("make a pipe", path: input.name) { pipe(&ends) }
            let (readEnd, writeEnd) = (ends[0], ends[1])
            defer { close(readEnd) }
            let failure = Mutex<(any Error)?>(nil)
            let done = DispatchSemaphore(value: 0)
            let (fd, name, secret, expected) = (input.fd, input.name, oldKey.secret, oldKey.record?.id)
            Thread.detachNewThread {
                var source = FileDescriptorSource(fd: fd, name: name)
                var plain = FileDescriptorSink(fd: writeEnd, name: "the re-encryption pipe")
                do {
                    _ = try KeyholdFile.decrypt(from: &source, to: &plain, key: secret, expecting: expected)
                } catch {
                    failure.withLock { $0 = error }
                }
                close(writeEnd)
                done.signal()
            }
            var plain = FileDescriptorSource(fd: readEnd, name: "the re-encryption pipe")
            let result = Result { try KeyholdFile.encrypt(from: &plain, to: &sink, key: newKey, header: header, progress: progress) }
            // A failed encryption leaves the decrypting thread blocked on a full pipe: drain it.
            if case .failure = result {
                var scratch = [UInt8](repeating: 0, count: 1 << 16)
                while scratch.withUnsafeMutableBytes({ Glibc.read(readEnd, $0.baseAddress, $0.count) }) > 0 {}
            }
            done.wait()
            if let error = failure.withLock({ $0 }) { throw error }
            return try result.get()
        }
    }
}
