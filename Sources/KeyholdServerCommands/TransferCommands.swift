import ArgumentParser
import Foundation
import KeyholdClient
import KeyholdCommandLine
import KeyholdCore
import KeyholdExport
import KeyholdProtocol
import KeyholdSystem

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `keyhold-server key export` and `key import` (docs/spec/export.md).
extension KeyAdminCommand {
    /// Transfers of a million keys take a while: the admin client waits up to an hour for them.
    static let transferTimeout = Duration.seconds(3600)

    struct Export: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Export keys into a password-protected file (age format) for 'key import' on another server.",
            discussion:
                """
                Give exactly one of --all, --key, --device or --since. The password is asked twice on the terminal, or read from --password-file.
                Examples:
                  keyhold-server key export --all --output keys.age
                  keyhold-server key export --since 2026-12-01T00:00:00Z --output december.age
                """
        )
        @OptionGroup var data: DataDirOption
        @Option(name: .shortAndLong, help: ArgumentHelp("The file to write (mode 0600).", valueName: "file")) var output: String
        @Flag(help: "Every key of this server.") var all = false
        @Option(name: .customLong("key"), parsing: .upToNextOption, help: ArgumentHelp("These keys (ids).", valueName: "id")) var keys: [String] = []
        @Option(help: ArgumentHelp("The keys a device created.", valueName: "device-id")) var device: String?
        @Option(help: ArgumentHelp("Keys created at or after this time (ISO 8601, e.g. 2026-11-01T00:00:00Z).", valueName: "time")) var since: String?
        @Option(help: ArgumentHelp("Read the password from this file instead of the terminal.", valueName: "file")) var passwordFile: String?
        @Flag(help: "Replace the output file if it exists.") var force = false

        func request(password: String) throws -> ExportRequest {
            var r = ExportRequest(password: password, all: all)
            if !keys.isEmpty {
                r.keys = try keys.map { text in
                    guard let id = KeyID(text) else {
                        throw KeyholdError(.usage, "'\(text)' is not a key id", hint: "key ids are UUIDs; see 'keyhold-server key list'")
                    }
                    return id
                }
            }
            if let device {
                guard let id = ClientID(device).map(DeviceID.init(enrollment:)) else {
                    throw KeyholdError(.usage, "'\(device)' is not a device id", hint: "see 'keyhold-server device list'")
                }
                r.device = id
            }
            if let since {
                guard let time = ISO8601DateFormatter().date(from: since) else {
                    throw KeyholdError(.usage, "'\(since)' is not an ISO 8601 time", hint: "write it like 2026-11-01T00:00:00Z")
                }
                r.since = time
            }
            guard r.selectionCount == 1 else {
                throw KeyholdError(.usage, "say which keys to export", hint: "give exactly one of --all, --key ID…, --device ID or --since TIME")
            }
            return r
        }

        func run() async throws {
            if AtomicFileWriter.exists(output), !force {
                throw KeyholdError(.destinationExists, "\(output) already exists", hint: "choose another file or add --force to replace it")
            }
            _ = try request(password: "checked-before-asking")
            let password = try PasswordInput.read(prompt: "Password for the export file: ", confirm: true, file: passwordFile)
            try TransferPassword.checkNew(password)
            let body = try request(password: password)

            let writer = try AtomicFileWriter(destination: output)
            let progress = ProgressLine("exporting", total: nil)
            var written = 0
            do {
                try await data.adminClient(timeout: KeyAdminCommand.transferTimeout).using { client in
                    try await client.download(APIPath.adminKeysExport, body) { bytes in
                        try bytes.withUnsafeBytes { try writer.append($0) }
                        written += bytes.count
                        progress.update(written)
                    }
                }
                progress.finish()
                // Check the file before calling it done: it opens with the password and is complete.
                let count = try Self.verify(fd: writer.fd, name: output, password: password)
                try writer.commit(mode: 0o600)
                print(
                    "Exported \(count) key\(count == 1 ? "" : "s") (\(body.selectionDescription)) to \(output) (\(ProgressLine.bytes(written)), age format, scrypt work factor \(Age.defaultWorkFactor))."
                )
                print("Keep the file and its password apart. Import it with: keyhold-server key import \(output)")
            } catch {
                progress.finish()
                writer.abort()
                throw error
            }
        }

        /// Reads the written file back: it decrypts with `password` to a complete document; returns its key count.
        static func verify(fd: Int32, name: String, password: String) throws -> Int {
            var decryptor = AgeDecryptor(password: Array(password.utf8))
            var reader = ExportDocumentReader(decodeKeys: false)
            var buffer = [UInt8](repeating: 0, count: 1 << 20)
            var offset: off_t = 0
            while true {
                let n = try buffer.withUnsafeMutableBytes { raw in
                    try SystemCall.check("read back", path: name) { pread(fd, raw.baseAddress, raw.count, offset) }
                }
                if n == 0 { break }
                offset += off_t(n)
                _ = try reader.feed(try decryptor.feed(buffer[..<n]))
            }
            _ = try reader.feed(try decryptor.finish())
            try reader.finish()
            return reader.keysRead
        }
    }

    struct Import: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Import keys from an export file: all of them in one transaction, or none.",
            discussion:
                """
                Keys already here with the same secret are counted as present. If any key id exists here with another secret, nothing is imported and the ids are listed.
                Example:
                  keyhold-server key import keys.age
                """
        )
        @OptionGroup var data: DataDirOption
        @Argument(help: ArgumentHelp("The export file (age format, password-protected).", valueName: "file")) var file: String
        @Option(help: ArgumentHelp("Read the password from this file instead of the terminal.", valueName: "file")) var passwordFile: String?

        func run() async throws {
            guard FileManager.default.isReadableFile(atPath: file) else {
                throw KeyholdError(.ioFailed, "cannot read \(file)", hint: "check the path and its permissions")
            }
            let size = (try? FileManager.default.attributesOfItem(atPath: file)[.size] as? Int) ?? nil
            let password = try PasswordInput.read(prompt: "Password of the export file: ", confirm: false, file: passwordFile)
            try TransferPassword.checkExisting(password)
            let progress = ProgressLine("importing:", total: size)
            // Once the file is sent the server decrypts and stores it in one transaction: say so.
            let waiting = Task {
                let start = ContinuousClock.now
                while !Task.isCancelled {
                    try await Task.sleep(for: .seconds(1))
                    if progress.isComplete {
                        progress.note(
                            "sent; the server is storing the keys in one transaction (\(Int((ContinuousClock.now - start).components.seconds)) s)")
                    }
                }
            }
            let result: ImportResponse
            do {
                result = try await data.adminClient(timeout: KeyAdminCommand.transferTimeout).using { client in
                    try await client.upload(
                        APIPath.adminKeysImport, file: file,
                        headers: [(TransferPassword.header, Data(password.utf8).base64EncodedString())],
                        as: ImportResponse.self, progress: { progress.update($0) }
                    )
                }
                waiting.cancel()
                progress.finish()
            } catch {
                waiting.cancel()
                progress.finish()
                throw error
            }
            let total = result.inserted + result.alreadyPresent
            print(
                "Imported \(total) key\(total == 1 ? "" : "s") from \(file): \(result.inserted) new, \(result.alreadyPresent) already present"
                    + (result.sourceServer.map { " (exported by server \($0))" } ?? "") + ".")
            if result.destroyed > 0 {
                print(
                    "\(result.destroyed) key\(result.destroyed == 1 ? " was" : "s were") destroyed on this server and stay destroyed (not brought back)."
                )
            }
        }
    }
}
