import Foundation
import KeyholdCore
import KeyholdTestSupport
import Testing

@testable import KeyholdAgent

/// The sealed key cache in the state directory.
@Suite struct KeyCacheTests {
    func key(_ kind: KeyKind) -> KeyMaterial {
        KeyMaterial(record: KeyRecord(kind: kind, originServerID: .random(), originDeviceID: .random(), label: "cached"), secret: .generate())
    }

    @Test func keysSurviveAReopenAndTheFileHoldsNoSecret() throws {
        let folder = try Paths.temporaryFolder("cache")
        defer { try? FileManager.default.removeItem(at: folder) }
        let state = StateDirectory(path: folder.appendingPathComponent("state").path)
        try state.prepare()
        var cache = try KeyCache(state: state)
        let file = key(.file)
        let drive = key(.drive)
        try cache.add(file, makeActive: true)
        try cache.add(drive, makeActive: false)
        let again = try KeyCache(state: state)
        #expect(again.activeFileKey == file.record.id)
        #expect(again.key(drive.record.id)?.secret.constantTimeEquals(drive.secret) == true)
        let sealed = try Data(contentsOf: URL(fileURLWithPath: state.cache))
        let secret = file.secret.withUnsafeBytes { Data($0) }
        #expect(sealed.range(of: secret) == nil && sealed.range(of: Data(secret.base64EncodedString().utf8)) == nil)
        for path in [state.cache, state.cacheKey] {
            #expect(try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int == 0o600)
        }
    }

    @Test func aCacheThatDoesNotOpenIsAClearError() throws {
        let folder = try Paths.temporaryFolder("cache-bad")
        defer { try? FileManager.default.removeItem(at: folder) }
        let state = StateDirectory(path: folder.appendingPathComponent("state").path)
        try state.prepare()
        var cache = try KeyCache(state: state)
        try cache.add(key(.file), makeActive: true)
        try state.write(state.cacheKey, SecretKey.generate().withUnsafeBytes { Data($0) })
        #expect { _ = try KeyCache(state: state) } throws: { error in
            (error as? KeyholdError)?.message.contains("does not open with") == true
        }
    }
}
