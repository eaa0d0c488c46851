import Foundation
import KeyholdCore
import KeyholdFormat

/// A key read from `--key-file`: 32 raw bytes, or the JSON key record written by `keyhold key new`.
struct KeyFile {
    let secret: SecretKey
    /// The record, when the file was JSON; raw keys have none.
    let record: KeyRecord?

    static func load(path: String) throws -> KeyFile {
        let input = try InputFile(path: path)
        var source = input.source
        // A key file is small; refuse to slurp anything large by mistake.
        var bytes = [UInt8](repeating: 0, count: 64 * 1024 + 1)
        defer { bytes.withUnsafeMutableBytes { SecretKey.wipe($0) } }
        let count = try bytes.withUnsafeMutableBytes { try source.readFully(into: $0) }
        guard count <= 64 * 1024 else {
            throw KeyholdError(.invalidKey, "\(path) is too large to be a key file", hint: Self.hint)
        }
        if count == SecretKey.byteCount {
            return KeyFile(secret: try SecretKey(bytes: bytes[..<count]), record: nil)
        }
        var json = Data(bytes[..<count])
        defer { json.withUnsafeMutableBytes { SecretKey.wipe($0) } }
        do {
            let material = try KeyMaterial(keyFileJSON: json)
            return KeyFile(secret: material.secret, record: material.record)
        } catch var error as KeyholdError {
            if count > 0, bytes[0] != UInt8(ascii: "{") {
                error.message = "\(path) is neither a 32-byte raw key (it has \(count) bytes) nor a JSON key record"
            }
            throw error
        }
    }

    static let hint = "a key file is 32 raw bytes or the JSON written by 'keyhold key new'"
}
