import CCryptsetup
import Foundation
import KeyholdCore

/// A LUKS2 volume (a block device or an image file) through libcryptsetup. Not thread-safe: one
/// owner uses it and lets it go (`crypt_free` on deinit).
public final class LUKSVolume {
    /// The device or image file.
    public let path: String
    private let cd: OpaquePointer

    private init(path: String) throws {
        LUKSCall.installLogCapture()
        var handle: OpaquePointer?
        try LUKSCall.check(crypt_init(&handle, path), "open", path)
        guard let handle else { throw LUKSCall.error(EIO, "open", path) }
        self.path = path
        self.cd = handle
    }

    deinit { crypt_free(cd) }

    /// Opens an existing LUKS2 volume.
    public static func open(_ path: String) throws -> LUKSVolume {
        let volume = try LUKSVolume(path: path)
        try LUKSCall.check(crypt_load(volume.cd, CRYPT_LUKS2, nil), "read the LUKS2 header of", path)
        return volume
    }

    /// Writes a new LUKS2 header: AES-XTS with a random 512-bit volume key (AES-256-XTS), 4 KiB
    /// sectors when the device allows. No keyslot yet. What was on the device is lost.
    public static func format(_ path: String, label: String) throws -> LUKSVolume {
        let volume = try LUKSVolume(path: path)
        try label.withCString { labelPointer in
            var params = crypt_params_luks2(
                pbkdf: nil, integrity: nil, integrity_params: nil, data_alignment: 0, data_device: nil,
                sector_size: 0, label: labelPointer, subsystem: nil
            )
            try LUKSCall.check(crypt_format(volume.cd, CRYPT_LUKS2, "aes", "xts-plain64", nil, nil, 64, &params), "format", path)
        }
        return volume
    }

    /// The LUKS UUID.
    public var uuid: String { crypt_get_uuid(cd).map { String(cString: $0) } ?? "" }
    /// The data cipher, like `aes-xts-plain64`.
    public var cipher: String {
        "\(crypt_get_cipher(cd).map { String(cString: $0) } ?? "?")-\(crypt_get_cipher_mode(cd).map { String(cString: $0) } ?? "?")"
    }
    /// The volume key's size in bits (512 for AES-256-XTS).
    public var volumeKeyBits: Int { Int(crypt_get_volume_key_size(cd)) * 8 }
    /// Where the encrypted data starts (the header and keyslots lie before it).
    public var dataOffsetBytes: UInt64 { crypt_get_data_offset(cd) * 512 }

    /// How a keyslot's passphrase is stretched.
    public enum KDF: Sendable {
        /// For a full-entropy 256-bit key: PBKDF2-SHA256 at the 1000-iteration minimum. Stretching
        /// adds nothing to a key nobody can guess, and keeps unlock fast on slow machines.
        case fullEntropyKey
        /// For a passphrase a person chose: argon2id, benchmarked by libcryptsetup (about 2 s).
        case passphrase
    }

    /// Adds a keyslot opened by `passphrase` (any bytes); returns its number. Only right after
    /// ``format(_:label:)``, while the new volume key is in memory.
    @discardableResult
    public func addKeyslot(passphrase: some Collection<UInt8>, kdf: KDF) throws -> Int {
        // Wiped in place (a copy made to wipe would leave the original alone).
        var bytes = Array(passphrase)
        defer { bytes.withUnsafeMutableBytes { SecretKey.wipe($0) } }
        try setKDF(kdf)
        return Int(
            try bytes.withUnsafeBufferPointer { buffer in
                try buffer.withMemoryRebound(to: CChar.self) { chars in
                    try LUKSCall.check(
                        crypt_keyslot_add_by_volume_key(cd, keyhold_CRYPT_ANY_SLOT, nil, 0, chars.baseAddress, chars.count),
                        "add a keyslot to", path
                    )
                }
            })
    }

    /// Adds a keyslot opened by `passphrase` to an existing volume, authorised by `existing`
    /// (the passphrase of any active keyslot); returns its number. One header write.
    @discardableResult
    public func addKeyslot(passphrase: some Collection<UInt8>, authorisedBy existing: some Collection<UInt8>, kdf: KDF) throws -> Int {
        var new = Array(passphrase)
        var old = Array(existing)
        defer {
            new.withUnsafeMutableBytes { SecretKey.wipe($0) }
            old.withUnsafeMutableBytes { SecretKey.wipe($0) }
        }
        try setKDF(kdf)
        return Int(
            try old.withUnsafeBufferPointer { oldBuffer in
                try oldBuffer.withMemoryRebound(to: CChar.self) { oldChars in
                    try new.withUnsafeBufferPointer { newBuffer in
                        try newBuffer.withMemoryRebound(to: CChar.self) { newChars in
                            try LUKSCall.check(
                                crypt_keyslot_add_by_passphrase(
                                    cd, keyhold_CRYPT_ANY_SLOT, oldChars.baseAddress, oldChars.count, newChars.baseAddress, newChars.count),
                                "add a keyslot to", path)
                        }
                    }
                }
            })
    }

    /// Removes keyslot `keyslot` (one header write; the volume key stays in the others).
    public func destroyKeyslot(_ keyslot: Int) throws {
        try LUKSCall.check(crypt_keyslot_destroy(cd, Int32(keyslot)), "remove keyslot \(keyslot) of", path)
    }

    /// Whether `keyslot` uses PBKDF2 (the KDF of keyslots opened by escrowed keys; a person's
    /// passphrase gets argon2id, which is slow to try).
    public func keyslotUsesPBKDF2(_ keyslot: Int) -> Bool {
        var pbkdf = crypt_pbkdf_type()
        guard crypt_keyslot_get_pbkdf(cd, Int32(keyslot), &pbkdf) == 0, let type = pbkdf.type else { return false }
        return String(cString: type) == CRYPT_KDF_PBKDF2
    }

    /// The PBKDF2 keyslot among `keyslots` that `passphrase` opens, if any (argon2id keyslots
    /// are not tried).
    public func keyslot(openedBy passphrase: some Collection<UInt8>, among keyslots: [Int]) -> Int? {
        keyslots.first { keyslotUsesPBKDF2($0) && (try? verify(passphrase: passphrase, keyslot: $0)) != nil }
    }

    private func setKDF(_ kdf: KDF) throws {
        switch kdf {
        case .fullEntropyKey:
            // The struct holds C strings: they must outlive crypt_set_pbkdf_type, hence the closures.
            try CRYPT_KDF_PBKDF2.withCString { type in
                try "sha256".withCString { hash in
                    var pbkdf = crypt_pbkdf_type(
                        type: type, hash: hash, time_ms: 0, iterations: 1000, max_memory_kb: 0, parallel_threads: 0,
                        flags: keyhold_CRYPT_PBKDF_NO_BENCHMARK
                    )
                    try LUKSCall.check(crypt_set_pbkdf_type(cd, &pbkdf), "set the keyslot KDF of", path)
                }
            }
        case .passphrase:
            try LUKSCall.check(crypt_set_pbkdf_type(cd, crypt_get_pbkdf_default(CRYPT_LUKS2)), "set the keyslot KDF of", path)
        }
    }

    /// The keyslots in use.
    public var activeKeyslots: [Int] {
        (0..<32).filter {
            let s = crypt_keyslot_status(cd, Int32($0))
            return s == CRYPT_SLOT_ACTIVE || s == CRYPT_SLOT_ACTIVE_LAST
        }
    }

    /// Writes `token` into a free token slot; returns its number.
    @discardableResult
    public func addToken(_ token: KeyholdToken) throws -> Int {
        Int(try LUKSCall.check(crypt_token_json_set(cd, keyhold_CRYPT_ANY_TOKEN, try token.json()), "write the keyhold token to", path))
    }

    /// Replaces token `id` with `token`: one header write, so a crash leaves the old token or the
    /// new one, never neither.
    public func replaceToken(_ id: Int, with token: KeyholdToken) throws {
        try LUKSCall.check(crypt_token_json_set(cd, Int32(id), try token.json()), "rewrite the keyhold token of", path)
    }

    /// Every token's type and JSON (copied out: libcryptsetup owns its strings).
    public func tokens() -> [(id: Int, type: String, json: String)] {
        var out: [(Int, String, String)] = []
        for id in 0..<32 {
            var type: UnsafePointer<CChar>?
            let status = crypt_token_status(cd, Int32(id), &type)
            guard status != CRYPT_TOKEN_INVALID, status != CRYPT_TOKEN_INACTIVE else { continue }
            var json: UnsafePointer<CChar>?
            guard crypt_token_json_get(cd, Int32(id), &json) >= 0, let json else { continue }
            out.append((id, type.map { String(cString: $0) } ?? "", String(cString: json)))
        }
        return out
    }

    /// The `keyhold` token, if any; a malformed one is an error.
    public func keyholdToken() throws -> (id: Int, token: KeyholdToken)? {
        guard let found = tokens().first(where: { $0.type == KeyholdToken.type }) else { return nil }
        return (found.id, try KeyholdToken.parse(found.json, device: path))
    }

    /// Checks `passphrase` against `keyslot` without activating anything (no device-mapper needed).
    public func verify(passphrase: some Collection<UInt8>, keyslot: Int) throws {
        try activate(name: nil, passphrase: passphrase, keyslot: keyslot)
    }

    /// Activates `/dev/mapper/NAME` with `passphrase` (or only checks it when `name` is nil).
    public func activate(name: String?, passphrase: some Collection<UInt8>, keyslot: Int) throws {
        // Wiped in place (a copy made to wipe would leave the original alone).
        var bytes = Array(passphrase)
        defer { bytes.withUnsafeMutableBytes { SecretKey.wipe($0) } }
        _ = try bytes.withUnsafeBufferPointer { buffer in
            try buffer.withMemoryRebound(to: CChar.self) { chars in
                try LUKSCall.check(
                    crypt_activate_by_passphrase(cd, name, Int32(keyslot), chars.baseAddress, chars.count, 0),
                    name == nil ? "check the key against" : "activate", path
                )
            }
        }
    }

    /// Overwrites the header area (everything before the data) with zeros: the device no longer
    /// looks like LUKS. Used to roll back a format whose later steps failed.
    public func eraseHeader() throws {
        let length = dataOffsetBytes > 0 ? dataOffsetBytes : 16 << 20
        try LUKSCall.check(crypt_wipe(cd, path, CRYPT_WIPE_ZERO, 0, length, 1 << 20, 0, nil, nil), "erase the header of", path)
    }

    // MARK: Mappings

    /// Whether `/dev/mapper/NAME` exists.
    public static func isActive(_ name: String) -> Bool {
        let status = crypt_status(nil, name)
        return status == CRYPT_ACTIVE || status == CRYPT_BUSY
    }

    /// Removes the mapping `/dev/mapper/NAME`.
    public static func deactivate(_ name: String) throws {
        LUKSCall.installLogCapture()
        try LUKSCall.check(crypt_deactivate(nil, name), "deactivate", "/dev/mapper/\(name)")
    }

    /// The mapping name Keyhold uses for a volume.
    public static func mappingName(uuid: String) -> String { "keyhold-\(uuid.lowercased())" }
}
