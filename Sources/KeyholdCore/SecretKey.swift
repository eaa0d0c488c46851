#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A 32-byte symmetric key: the one home for key secrets in Keyhold.
///
/// The bytes live in memory this object owns; they are reachable only through
/// ``withUnsafeBytes(_:)`` and are overwritten with zeros (with `explicit_bzero`, which the
/// compiler may not elide) when the last reference goes away. ``description`` and
/// ``debugDescription`` never show the bytes, so a key that reaches a log line or an
/// interpolated string leaks nothing.
public final class SecretKey: Sendable, CustomStringConvertible, CustomDebugStringConvertible {
    /// The length of every Keyhold key.
    public static let byteCount = 32

    // Safe to share across threads: the buffer is written only in `init` (before the object is
    // published) and in `deinit` (after the last reference is gone); in between it is read-only.
    private nonisolated(unsafe) let storage: UnsafeMutableRawBufferPointer

    private init(uninitialized: ()) {
        storage = .allocate(byteCount: Self.byteCount, alignment: 16)
    }

    /// A new key from the operating system's CSPRNG.
    public static func generate() -> SecretKey {
        let key = SecretKey(uninitialized: ())
        SecureRandom.fill(key.storage)
        return key
    }

    /// Copies exactly 32 bytes into a new key.
    /// - Throws: ``KeyholdError/Code/invalidKey`` for any other length.
    public init<Bytes: Collection>(bytes: Bytes) throws where Bytes.Element == UInt8 {
        guard bytes.count == Self.byteCount else {
            throw KeyholdError(
                .invalidKey,
                "a key must be exactly \(Self.byteCount) bytes, got \(bytes.count)",
                hint: "use a 32-byte raw key file, or a JSON key record written by 'keyhold key new'"
            )
        }
        storage = .allocate(byteCount: Self.byteCount, alignment: 16)
        _ = storage.initializeMemory(as: UInt8.self, from: bytes)
    }

    deinit {
        Self.wipe(storage)
        storage.deallocate()
    }

    /// Overwrites `buffer` with zeros in a way the optimiser keeps.
    public static func wipe(_ buffer: UnsafeMutableRawBufferPointer) {
        guard let base = buffer.baseAddress, buffer.count > 0 else { return }
        #if canImport(Glibc)
        explicit_bzero(base, buffer.count)
        #else
        memset_s(base, buffer.count, 0, buffer.count)
        #endif
    }

    /// Gives `body` read access to the 32 key bytes. Do not let the pointer escape.
    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeRawBufferPointer(storage))
    }

    /// Compares two keys in time that does not depend on where they differ.
    public func constantTimeEquals(_ other: SecretKey) -> Bool {
        var diff: UInt8 = 0
        for i in 0..<Self.byteCount { diff |= storage[i] ^ other.storage[i] }
        return diff == 0
    }

    /// Never the bytes.
    public var description: String { "SecretKey(\(Self.byteCount) bytes, redacted)" }
    /// Never the bytes.
    public var debugDescription: String { description }
}
