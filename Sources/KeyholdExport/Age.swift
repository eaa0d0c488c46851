import Crypto
import CryptoExtras
import Foundation
import KeyholdCore

/// The age v1 file format (https://age-encryption.org/v1) with a single scrypt (passphrase)
/// recipient, as an incremental encoder and decoder: bytes in, bytes out, memory bounded by one
/// 64 KiB chunk. Every primitive comes from swift-crypto: scrypt (BoringSSL, `CryptoExtras`),
/// ChaCha20-Poly1305, HKDF-SHA-256 and HMAC-SHA-256. See docs/spec/export.md.
public enum Age {
    static let versionLine = "age-encryption.org/v1"
    static let scryptLabel = Array("age-encryption.org/v1/scrypt".utf8)
    static let chunkSize = 64 * 1024
    static let tagSize = 16
    static let nonceSize = 16
    /// What Keyhold writes (age's own default): 2^18 × 1 KiB = 256 MiB of scrypt memory, ~1 s here.
    public static let defaultWorkFactor = 18
    /// The most a reader accepts: 2^20 needs 1 GiB. age itself stops at 22 (4 GiB); an attacker-made
    /// file must not make the server allocate that much.
    public static let maximumWorkFactor = 20

    /// Derives the key that wraps the file key: scrypt(password, label || salt, N = 2^logN, r = 8, p = 1).
    static func wrappingKey(password: [UInt8], salt: [UInt8], workFactor: Int) throws -> SymmetricKey {
        do {
            return try KDF.Scrypt.deriveKey(
                from: password, salt: scryptLabel + salt, outputByteCount: 32,
                rounds: 1 << workFactor, blockSize: 8, parallelism: 1
            )
        } catch {
            throw KeyholdError(
                .internalError, "scrypt failed for work factor \(workFactor): \(error)",
                hint: "the machine may lack the memory scrypt needs (\(1 << (workFactor - 3)) KiB)")
        }
    }

    static func headerMACKey(fileKey: SymmetricKey) -> SymmetricKey {
        HKDF<SHA256>.deriveKey(inputKeyMaterial: fileKey, salt: [UInt8](), info: Array("header".utf8), outputByteCount: 32)
    }

    static func payloadKey(fileKey: SymmetricKey, nonce: [UInt8]) -> SymmetricKey {
        HKDF<SHA256>.deriveKey(inputKeyMaterial: fileKey, salt: nonce, info: Array("payload".utf8), outputByteCount: 32)
    }

    /// STREAM nonce: 11-byte big-endian chunk counter, then 1 for the last chunk, else 0.
    static func chunkNonce(_ counter: UInt64, last: Bool) throws -> ChaChaPoly.Nonce {
        var bytes = [UInt8](repeating: 0, count: 12)
        for i in 0..<8 { bytes[10 - i] = UInt8(truncatingIfNeeded: counter >> (8 * UInt64(i))) }
        bytes[11] = last ? 1 : 0
        return try ChaChaPoly.Nonce(data: bytes)
    }

    // MARK: base64 as age writes it: standard alphabet, no padding, canonical

    static func base64(_ bytes: some Collection<UInt8>) -> String {
        var text = Data(bytes).base64EncodedString()
        while text.hasSuffix("=") { text.removeLast() }
        return text
    }

    static func unbase64(_ text: Substring) -> [UInt8]? {
        guard !text.contains("="), text.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "+" || $0 == "/") }) else { return nil }
        let padded = String(text) + String(repeating: "=", count: (4 - text.count % 4) % 4)
        guard let data = Data(base64Encoded: padded) else { return nil }
        let bytes = [UInt8](data)
        // Canonical only: the unused low bits must be zero (re-encoding gives the same text).
        guard base64(bytes) == text else { return nil }
        return bytes
    }
}

/// Encrypts a stream to a password: `start()` once, `append` any number of times, `finish()` once.
/// Each call returns the bytes to write next.
public struct AgeEncryptor: ~Copyable {
    private let header: [UInt8]
    private let key: SymmetricKey
    private var buffer: [UInt8] = []
    private var counter: UInt64 = 0
    private var started = false

    /// An encryptor for `password` with scrypt work factor `workFactor` (log2 N).
    public init(password: [UInt8], workFactor: Int = Age.defaultWorkFactor) throws {
        let fileKey = SymmetricKey(data: SecureRandom.bytes(count: 16))
        let salt = SecureRandom.bytes(count: 16)
        let wrapping = try Age.wrappingKey(password: password, salt: salt, workFactor: workFactor)
        let body = try fileKey.withUnsafeBytes { raw in
            try ChaChaPoly.seal(Array(raw), using: wrapping, nonce: ChaChaPoly.Nonce(data: [UInt8](repeating: 0, count: 12))).combined.dropFirst(12)
        }
        var text = "\(Age.versionLine)\n-> scrypt \(Age.base64(salt)) \(workFactor)\n"
        text += Age.base64(body) + "\n"  // 32 bytes: 43 characters, one (final) body line
        text += "---"
        let mac = HMAC<SHA256>.authenticationCode(for: Array(text.utf8), using: Age.headerMACKey(fileKey: fileKey))
        text += " " + Age.base64(Array(mac)) + "\n"
        let nonce = SecureRandom.bytes(count: Age.nonceSize)
        header = Array(text.utf8) + nonce
        key = Age.payloadKey(fileKey: fileKey, nonce: nonce)
    }

    /// The header and payload nonce.
    public mutating func start() -> [UInt8] {
        started = true
        return header
    }

    /// Buffers `plaintext` and returns the ciphertext of every chunk known not to be the last.
    public mutating func append(_ plaintext: some Collection<UInt8>) throws -> [UInt8] {
        precondition(started, "start() first")
        buffer.append(contentsOf: plaintext)
        var out: [UInt8] = []
        var offset = 0
        // A full chunk is sealed only once a byte after it exists: the last chunk carries a flag.
        while buffer.count - offset > Age.chunkSize {
            out += try seal(buffer[offset..<offset + Age.chunkSize], last: false)
            offset += Age.chunkSize
        }
        if offset > 0 { buffer.removeFirst(offset) }
        return out
    }

    /// Seals what is left as the last chunk (possibly empty, when the whole payload is empty).
    public mutating func finish() throws -> [UInt8] {
        precondition(started, "start() first")
        let out = try seal(buffer[...], last: true)
        buffer = []
        return out
    }

    private mutating func seal(_ chunk: ArraySlice<UInt8>, last: Bool) throws -> [UInt8] {
        let box = try ChaChaPoly.seal(chunk, using: key, nonce: Age.chunkNonce(counter, last: last))
        counter += 1
        return Array(box.ciphertext) + Array(box.tag)
    }
}

/// Decrypts an age file made for a password. Feed it the file's bytes in any pieces; it returns
/// plaintext only from chunks that authenticated and are known not to be the last until
/// `finish()`, which checks that the stream ended exactly at a last chunk. Any failure throws a
/// ``KeyholdError`` and nothing more is returned.
public struct AgeDecryptor {
    private enum Phase { case header, payload, done }
    private let password: [UInt8]
    private let maximumWorkFactor: Int
    private var phase = Phase.header
    private var buffer: [UInt8] = []
    private var key: SymmetricKey?
    private var counter: UInt64 = 0
    /// Bytes consumed before `buffer`, for error messages.
    private var consumed = 0
    /// The work factor of the file, once its header was read.
    public private(set) var workFactor: Int?

    /// A decryptor for `password` that refuses files asking for more than `maximumWorkFactor`.
    public init(password: [UInt8], maximumWorkFactor: Int = Age.maximumWorkFactor) {
        self.password = password
        self.maximumWorkFactor = maximumWorkFactor
    }

    static func invalid(_ message: String) -> KeyholdError {
        KeyholdError(.invalidHeader, "not a valid age file: \(message)", hint: "check that this is the export file, complete and unchanged")
    }

    /// Decrypts the next bytes of the file; returns the plaintext they completed (authenticated chunks only).
    public mutating func feed(_ bytes: some Collection<UInt8>) throws -> [UInt8] {
        buffer.append(contentsOf: bytes)
        if phase == .header {
            guard try readHeader() else { return [] }
        }
        guard phase == .payload else {
            if !buffer.isEmpty { throw Self.invalid("data after the end of the payload") }
            return []
        }
        var out: [UInt8] = []
        var offset = 0
        let sealed = Age.chunkSize + Age.tagSize
        while buffer.count - offset > sealed {
            out += try open(buffer[offset..<offset + sealed], last: false)
            offset += sealed
        }
        if offset > 0 {
            buffer.removeFirst(offset)
            consumed += offset
        }
        return out
    }

    /// Opens the final chunk; throws `truncated` when the file ends before one.
    public mutating func finish() throws -> [UInt8] {
        switch phase {
        case .header:
            throw KeyholdError(
                .truncated, "the file ends inside its age header (\(consumed + buffer.count) bytes)",
                hint: "the export file is truncated: copy it again")
        case .done:
            return []
        case .payload:
            guard buffer.count >= Age.tagSize else {
                throw KeyholdError(
                    .truncated, "the file ends early, at byte \(consumed + buffer.count), before its last chunk",
                    hint: "the export file is truncated: copy it again")
            }
            let out: [UInt8]
            do {
                out = try open(buffer[...], last: true)
            } catch {
                // A whole chunk that opens as "not last": the file was cut at a chunk boundary.
                if buffer.count == Age.chunkSize + Age.tagSize, let key,
                    let box = try? ChaChaPoly.SealedBox(
                        nonce: Age.chunkNonce(counter, last: false), ciphertext: buffer.dropLast(Age.tagSize), tag: buffer.suffix(Age.tagSize)),
                    (try? ChaChaPoly.open(box, using: key)) != nil
                {
                    throw KeyholdError(
                        .truncated, "the file ends early, at byte \(consumed + buffer.count), after a chunk that is not the last",
                        hint: "the export file is truncated: copy it again")
                }
                throw error
            }
            if out.isEmpty && counter > 1 {
                throw KeyholdError(
                    .authenticationFailed, "the file has an empty last chunk after data, which age forbids", hint: "the export file was altered")
            }
            buffer = []
            phase = .done
            return out
        }
    }

    private mutating func open(_ chunk: ArraySlice<UInt8>, last: Bool) throws -> [UInt8] {
        guard let key else { throw Self.invalid("no payload key") }
        do {
            let box = try ChaChaPoly.SealedBox(
                nonce: Age.chunkNonce(counter, last: last), ciphertext: chunk.dropLast(Age.tagSize), tag: chunk.suffix(Age.tagSize)
            )
            let plain = try ChaChaPoly.open(box, using: key)
            counter += 1
            return Array(plain)
        } catch {
            if !last {
                // A full chunk that is in fact the file's last one (the file was cut after it) fails
                // with the "not last" nonce: say truncated when the last-chunk nonce opens it.
                if let box = try? ChaChaPoly.SealedBox(
                    nonce: Age.chunkNonce(counter, last: true), ciphertext: chunk.dropLast(Age.tagSize), tag: chunk.suffix(Age.tagSize)),
                    (try? ChaChaPoly.open(box, using: key)) != nil
                {
                    throw KeyholdError(
                        .invalidHeader, "data follows the last chunk (at byte \(consumed + chunk.count))",
                        hint: "the export file was altered: use the file as the server wrote it")
                }
            }
            throw KeyholdError(
                .authenticationFailed, "the file's payload failed authentication in chunk \(counter) (near byte \(consumed))",
                hint: "the export file is damaged or was altered: copy it again from the exporting server"
            )
        }
    }

    /// Parses and checks the header once it is complete; `false` while more bytes are needed.
    private mutating func readHeader() throws -> Bool {
        let limit = 4096  // a one-stanza scrypt header is ~150 bytes
        guard let macStart = findMACLine() else {
            if buffer.count > limit { throw Self.invalid("no header end in the first \(limit) bytes") }
            if !buffer.starts(with: Array(Age.versionLine.utf8).prefix(buffer.count)) {
                throw Self.invalid("it does not start with \"\(Age.versionLine)\"")
            }
            return false
        }
        guard let macEnd = buffer[macStart...].firstIndex(of: 0x0A) else {
            if buffer.count > limit { throw Self.invalid("the MAC line does not end") }
            return false
        }
        // The payload nonce must be there too.
        guard buffer.count >= macEnd + 1 + Age.nonceSize else { return false }
        let headerText = buffer[..<macStart]
        guard let text = String(bytes: headerText, encoding: .utf8) else { throw Self.invalid("the header is not text") }
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        // headerText ends with "\n" so the last split part is empty.
        guard lines.last == "" else { throw Self.invalid("malformed header") }
        lines.removeLast()
        guard lines.first == Substring(Age.versionLine) else { throw Self.invalid("it does not start with \"\(Age.versionLine)\"") }
        let stanzaLines = lines.dropFirst()
        let stanzaCount = stanzaLines.filter { $0.hasPrefix("->") }.count
        guard let arguments = stanzaLines.first, arguments.hasPrefix("-> ") else { throw Self.invalid("no recipient stanza") }
        let parts = arguments.dropFirst(3).split(separator: " ", omittingEmptySubsequences: false)
        guard parts.first == "scrypt" else {
            throw KeyholdError(
                .invalidHeader, "the file is encrypted to a \(parts.first ?? "?") recipient, not a password",
                hint: "export files are made with a password (age --passphrase)")
        }
        guard stanzaCount == 1 else { throw Self.invalid("a scrypt (password) stanza must be the only one; this file has \(stanzaCount)") }
        guard parts.count == 3, let salt = Age.unbase64(parts[1]), salt.count == 16 else { throw Self.invalid("malformed scrypt stanza arguments") }
        let logText = parts[2]
        guard logText.allSatisfy(\.isASCII), logText.allSatisfy(\.isNumber), !logText.hasPrefix("0"), logText.count <= 2, let logN = Int(logText),
            logN >= 1
        else {
            throw Self.invalid("malformed scrypt work factor \"\(logText)\"")
        }
        guard logN <= maximumWorkFactor else {
            throw KeyholdError(
                .invalidHeader, "the file's scrypt work factor \(logN) is above the limit of \(maximumWorkFactor)",
                hint: "re-encrypt it with age's default work factor (18)")
        }
        let bodyLines = Array(stanzaLines.dropFirst())
        guard bodyLines.count == 1, bodyLines[0].count < 64, let wrapped = Age.unbase64(bodyLines[0]), wrapped.count == 32 else {
            throw Self.invalid("malformed scrypt stanza body")
        }
        let macText = buffer[(macStart + 4)..<macEnd]
        guard buffer[macStart + 3] == 0x20, let macSub = String(bytes: macText, encoding: .utf8), let mac = Age.unbase64(Substring(macSub)),
            mac.count == 32
        else {
            throw Self.invalid("malformed MAC line")
        }

        let wrapping = try Age.wrappingKey(password: password, salt: salt, workFactor: logN)
        let fileKey: SymmetricKey
        do {
            let box = try ChaChaPoly.SealedBox(combined: [UInt8](repeating: 0, count: 12) + wrapped)
            fileKey = SymmetricKey(data: try ChaChaPoly.open(box, using: wrapping))
        } catch {
            throw KeyholdError(
                .wrongPassword, "the password does not open this export file",
                hint: "check the password (it is case-sensitive); a changed header also gives this error")
        }
        guard fileKey.bitCount == 128 else { throw Self.invalid("the file key is not 16 bytes") }
        let macInput = buffer[..<(macStart + 3)]  // up to and including "---"
        guard HMAC<SHA256>.isValidAuthenticationCode(mac, authenticating: macInput, using: Age.headerMACKey(fileKey: fileKey)) else {
            throw KeyholdError(
                .authenticationFailed, "the file's header MAC does not match: the header was altered",
                hint: "copy the export file again from the exporting server")
        }
        let nonce = Array(buffer[(macEnd + 1)..<(macEnd + 1 + Age.nonceSize)])
        key = Age.payloadKey(fileKey: fileKey, nonce: nonce)
        workFactor = logN
        consumed = macEnd + 1 + Age.nonceSize
        buffer.removeFirst(consumed)
        phase = .payload
        return true
    }

    /// The offset of "---" at the start of a line, if the header has one yet.
    private func findMACLine() -> Int? {
        var i = 0
        let dash = UInt8(ascii: "-")
        while i + 3 < buffer.count {
            if i == 0 || buffer[i - 1] == 0x0A, buffer[i] == dash, buffer[i + 1] == dash, buffer[i + 2] == dash { return i }
            i += 1
        }
        return nil
    }
}
