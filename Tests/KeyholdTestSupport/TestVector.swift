import Foundation

/// One case of `Tests/Vectors/<suite>/`: a preamble of `name: value` lines, an empty line, then the
/// raw bytes under test (written by `scripts/gen-file-vectors.py`).
public struct TestVector: Sendable, CustomStringConvertible {
    /// What reading the bytes must give.
    public enum Expectation: Sendable, Equatable {
        case success
        /// An error with this code, and for authentication failures the segment that fails.
        case error(code: String, segment: Int?)
    }

    /// The file name of the case.
    public let name: String
    /// What reading the body must give.
    public let expectation: Expectation
    /// The preamble's `name: value` lines.
    public let fields: [String: String]
    /// The bytes under test.
    public let body: [UInt8]

    /// The case's name.
    public var description: String { name }

    /// The `key:` field as bytes.
    public var key: [UInt8] { Self.hex(fields["key"] ?? "") }

    /// Loads every vector of a suite, sorted by name.
    public static func load(suite: String) throws -> [TestVector] {
        let folder = Paths.repository.appendingPathComponent("Tests/Vectors/\(suite)")
        return try FileManager.default.contentsOfDirectory(atPath: folder.path).sorted().map { name in
            try TestVector(name: name, data: Data(contentsOf: folder.appendingPathComponent(name)))
        }
    }

    init(name: String, data: Data) throws {
        let bytes = [UInt8](data)
        guard let split = (0..<(bytes.count - 1)).first(where: { bytes[$0] == 0x0A && bytes[$0 + 1] == 0x0A }) else {
            throw CocoaError(.fileReadCorruptFile)
        }
        var fields: [String: String] = [:]
        for line in String(decoding: bytes[..<split], as: UTF8.self).split(separator: "\n") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            fields[String(line[..<colon])] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        let expect = (fields["expect"] ?? "").split(separator: " ").map(String.init)
        if expect == ["success"] {
            expectation = .success
        } else if expect.count >= 2, expect[0] == "error" {
            expectation = .error(code: expect[1], segment: expect.count == 4 && expect[2] == "segment" ? Int(expect[3]) : nil)
        } else {
            throw CocoaError(.fileReadCorruptFile)
        }
        self.name = name
        self.fields = fields
        self.body = Array(bytes[(split + 2)...])
    }

    /// The bytes of hex `text`.
    public static func hex(_ text: String) -> [UInt8] {
        var out: [UInt8] = []
        var it = text.utf8.makeIterator()
        while let a = it.next(), let b = it.next() {
            out.append(UInt8(String(decoding: [a, b], as: UTF8.self), radix: 16)!)
        }
        return out
    }
}
