/// Random bytes from the operating system's CSPRNG.
///
/// Uses the standard library's `SystemRandomNumberGenerator`, which on Linux reads `getrandom(2)`
/// (and on Darwin `arc4random_buf`): the kernel's CSPRNG, never a seeded user-space generator.
public enum SecureRandom {
    /// Fills `buffer` with random bytes.
    public static func fill(_ buffer: UnsafeMutableRawBufferPointer) {
        var generator = SystemRandomNumberGenerator()
        var offset = 0
        while offset < buffer.count {
            var word = generator.next()
            let n = min(8, buffer.count - offset)
            withUnsafeBytes(of: &word) { w in
                UnsafeMutableRawBufferPointer(rebasing: buffer[offset..<(offset + n)]).copyMemory(from: UnsafeRawBufferPointer(rebasing: w[..<n]))
            }
            word = 0
            offset += n
        }
    }

    /// Returns `count` random bytes.
    public static func bytes(count: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        out.withUnsafeMutableBytes { fill($0) }
        return out
    }
}
