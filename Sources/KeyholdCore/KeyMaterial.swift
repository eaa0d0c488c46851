public import Foundation

/// A key record together with its secret: what an agent holds and what a key file contains.
///
/// Its JSON form (a *key file*) is the record's fields plus `"secret"`, the 32 bytes in standard
/// base64. `description` shows the record and never the secret.
public struct KeyMaterial: Sendable, CustomStringConvertible {
    /// The key's record.
    public var record: KeyRecord
    /// The key's 32 bytes.
    public var secret: SecretKey

    /// A key with its secret.
    public init(record: KeyRecord, secret: SecretKey) {
        self.record = record
        self.secret = secret
    }

    /// The record's id and kind, never the secret.
    public var description: String { "KeyMaterial(\(record.id), \(record.kind), secret redacted)" }

    /// The key file's fields; the secret is base64 bytes on disk and never a string here.
    private struct JSONForm: Codable {
        var id: KeyID
        var kind: KeyKind
        var originServerID: ServerID
        var originDeviceID: DeviceID
        var created: Date
        var label: String
        var state: KeyState
        var secret: Data

        enum CodingKeys: String, CodingKey {
            case id, kind, created, label, state, secret
            case originServerID = "origin_server_id"
            case originDeviceID = "origin_device_id"
        }
    }

    /// The key-file JSON, pretty-printed with sorted keys, ending in a newline.
    ///
    /// The returned bytes hold the secret; callers write them to a 0600 file and drop them.
    public func keyFileJSON() throws -> Data {
        var form = JSONForm(
            id: record.id, kind: record.kind, originServerID: record.originServerID,
            originDeviceID: record.originDeviceID, created: record.created, label: record.label,
            state: record.state, secret: secret.withUnsafeBytes { Data($0) }
        )
        defer { form.secret.withUnsafeMutableBytes { SecretKey.wipe($0) } }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .iso8601
        var data = try encoder.encode(form)
        data.append(0x0A)
        return data
    }

    /// Parses a key file's JSON.
    /// - Throws: ``KeyholdError/Code/invalidKey`` naming what is wrong (never the secret).
    public init(keyFileJSON data: Data) throws {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        var form: JSONForm
        do {
            form = try decoder.decode(JSONForm.self, from: data)
        } catch let error as DecodingError {
            throw KeyholdError(
                .invalidKey,
                "the key file is not a valid key record: \(Self.describe(error))",
                hint: "a key file is 32 raw bytes or the JSON written by 'keyhold key new'"
            )
        }
        defer { form.secret.withUnsafeMutableBytes { SecretKey.wipe($0) } }
        self.secret = try SecretKey(bytes: form.secret)
        self.record = KeyRecord(
            id: form.id, kind: form.kind, originServerID: form.originServerID,
            originDeviceID: form.originDeviceID, created: form.created, label: form.label, state: form.state
        )
    }

    private static func describe(_ error: DecodingError) -> String {
        switch error {
        case .keyNotFound(let key, _): return "missing field \"\(key.stringValue)\""
        case .typeMismatch(_, let ctx), .valueNotFound(_, let ctx), .dataCorrupted(let ctx):
            let path = ctx.codingPath.map(\.stringValue).joined(separator: ".")
            return path.isEmpty ? ctx.debugDescription : "field \"\(path)\": \(ctx.debugDescription)"
        @unknown default: return "malformed JSON"
        }
    }
}

/// The wire form, `{"record": {…}, "secret": "<base64>"}`: the one way a key and its secret cross
/// a connection (a release, an escrow, a push, the agent's socket). The secret goes from the
/// decoded bytes straight into a ``SecretKey`` and from the key straight into the encoder; every
/// intermediate buffer of Keyhold's own is wiped.
extension KeyMaterial: Codable {
    private enum WireKeys: String, CodingKey { case record, secret }

    /// Decodes the wire form; a secret that is not 32 bytes of standard base64 is an error.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: WireKeys.self)
        let record = try c.decode(KeyRecord.self, forKey: .record)
        var bytes = try c.decode(Data.self, forKey: .secret)
        defer { bytes.withUnsafeMutableBytes { SecretKey.wipe($0) } }
        guard bytes.count == SecretKey.byteCount else {
            throw DecodingError.dataCorruptedError(
                forKey: .secret, in: c, debugDescription: "a key's secret is \(SecretKey.byteCount) bytes, not \(bytes.count)"
            )
        }
        self.init(record: record, secret: try SecretKey(bytes: bytes))
    }

    /// Encodes the wire form.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: WireKeys.self)
        try c.encode(record, forKey: .record)
        var bytes = secret.withUnsafeBytes { Data($0) }
        defer { bytes.withUnsafeMutableBytes { SecretKey.wipe($0) } }
        try c.encode(bytes, forKey: .secret)
    }
}
