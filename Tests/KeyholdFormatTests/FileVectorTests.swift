import Crypto
import Foundation
import KeyholdCore
import KeyholdFormat
import KeyholdTestSupport
import Testing

/// Runs every case of `Tests/Vectors/file-format/` (see `scripts/gen-file-vectors.py`).
@Suite struct FileVectorTests {
    static let vectors: [TestVector] = (try? TestVector.load(suite: "file-format")) ?? []

    @Test func vectorsArePresent() {
        #expect(Self.vectors.count >= 40)
        #expect(Self.vectors.contains { $0.expectation == .success })
    }

    @Test(arguments: vectors)
    func vector(_ v: TestVector) throws {
        let key = try SecretKey(bytes: v.key)
        var source = MemorySource(v.body)
        var sink = MemorySink()
        switch v.expectation {
        case .success:
            let summary = try KeyholdFile.decrypt(from: &source, to: &sink, key: key)
            #expect(summary.plaintextBytes == Int(v.fields["plaintext length"] ?? "-1"))
            let digest = SHA256.hash(data: sink.bytes).map { String(format: "%02x", $0) }.joined()
            #expect(digest == v.fields["plaintext sha256"])
        case .error(let code, let segment):
            let error = #expect(throws: KeyholdError.self) {
                try KeyholdFile.decrypt(from: &source, to: &sink, key: key)
            }
            #expect(error?.code.rawValue == code, "\(v.name): \(error?.message ?? "no error")")
            if let segment {
                #expect(error?.message.hasPrefix("segment \(segment) failed authentication") == true, "\(v.name): \(error?.message ?? "")")
                // Only segments before the failing one may have been released.
                #expect(sink.bytes.count <= max(0, segment) * 1008)
            } else if code != "truncated" {
                // Header errors are found before any key is used.
                #expect(sink.bytes.isEmpty)
            }
            #expect(error?.hint.isEmpty == false)
        }
    }
}
