/// Where a streaming operation reads from. `read` returns the number of bytes placed at the start
/// of `buffer`, and 0 only at the end of the input; it may return fewer bytes than asked for.
public protocol ByteSource {
    mutating func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int
}

/// Where a streaming operation writes to. `write` writes all of `bytes` or throws.
public protocol ByteSink {
    mutating func write(_ bytes: UnsafeRawBufferPointer) throws
}

extension ByteSource {
    /// Reads until `buffer` is full or the input ends; returns how many bytes were read.
    public mutating func readFully(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        var filled = 0
        while filled < buffer.count {
            let n = try read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[filled...]))
            if n == 0 { break }
            filled += n
        }
        return filled
    }
}

/// A ``ByteSource`` over bytes in memory.
public struct MemorySource: ByteSource {
    private let bytes: [UInt8]
    private var offset = 0
    /// How many bytes one `read` returns at most (tests use small values to exercise short reads).
    private let chunk: Int

    /// A source that gives `bytes`, at most `chunk` at a time.
    public init(_ bytes: [UInt8], chunk: Int = .max) {
        self.bytes = bytes
        self.chunk = max(1, chunk)
    }

    /// The next bytes (0 at the end).
    public mutating func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let n = min(buffer.count, bytes.count - offset, chunk)
        guard n > 0 else { return 0 }
        bytes.withUnsafeBytes { src in
            buffer.baseAddress!.copyMemory(from: src.baseAddress! + offset, byteCount: n)
        }
        offset += n
        return n
    }
}

/// A ``ByteSink`` that collects bytes in memory.
public struct MemorySink: ByteSink {
    /// Everything written.
    public private(set) var bytes: [UInt8] = []
    /// An empty sink.
    public init() {}
    /// Appends `bytes`.
    public mutating func write(_ bytes: UnsafeRawBufferPointer) throws { self.bytes += bytes }
}
