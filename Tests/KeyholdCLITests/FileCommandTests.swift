import Foundation
import KeyholdCore
import KeyholdTestSupport
import Testing

/// `keyhold file …` and `keyhold key new`, run as the real executable.
@Suite struct FileCommandTests {
    let keyhold = Paths.executable("keyhold")

    func folder() throws -> URL { try Paths.temporaryFolder("cli") }

    func keyhold(_ args: [String], in dir: URL, stdin: Data? = nil) async throws -> RunResult {
        try await run(keyhold, args, in: dir, stdin: stdin)
    }

    /// Files in `dir` other than the ones named (temporary files must never be left behind).
    func others(_ dir: URL, except names: Set<String>) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { !names.contains($0) }.sorted()
    }

    func expectError(_ r: RunResult, code: String? = nil, mentions: String? = nil, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(r.status != 0, sourceLocation: sourceLocation)
        let lines = r.stderr.split(separator: "\n")
        #expect(lines.first?.hasPrefix("keyhold: error: ") == true, "\(r.stderr)", sourceLocation: sourceLocation)
        #expect(lines.contains { $0.hasPrefix("hint: ") && $0.count > 10 }, "\(r.stderr)", sourceLocation: sourceLocation)
        if let mentions { #expect(r.stderr.contains(mentions), "\(r.stderr)", sourceLocation: sourceLocation) }
    }

    @Test func keyNewWritesAPrivateKeyRecord() async throws {
        let dir = try folder()
        defer { try? FileManager.default.removeItem(at: dir) }
        let r = try await keyhold(["key", "new", "--label", "laptop backups", "-o", "k.json"], in: dir)
        #expect(r.status == 0)
        let id = r.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
        let attrs = try FileManager.default.attributesOfItem(atPath: dir.appendingPathComponent("k.json").path)
        #expect((attrs[.posixPermissions] as? Int) == 0o600)
        let m = try KeyMaterial(keyFileJSON: Data(contentsOf: dir.appendingPathComponent("k.json")))
        #expect(m.record.id.description == id)
        #expect(m.record.label == "laptop backups")
        #expect(m.record.kind == .file)
        // Never overwritten silently.
        expectError(try await keyhold(["key", "new", "-o", "k.json"], in: dir), mentions: "already exists")
        #expect(try KeyMaterial(keyFileJSON: Data(contentsOf: dir.appendingPathComponent("k.json"))).record.id == m.record.id)
    }

    @Test func encryptInfoDecryptRoundTrip() async throws {
        let dir = try folder()
        defer { try? FileManager.default.removeItem(at: dir) }
        _ = try await keyhold(["key", "new", "-o", "k.json"], in: dir)
        let key = try KeyMaterial(keyFileJSON: Data(contentsOf: dir.appendingPathComponent("k.json")))
        let plaintext = Data((0..<3_000_000).map { UInt8(truncatingIfNeeded: $0 &* 7) })
        try plaintext.write(to: dir.appendingPathComponent("p"))
        #expect(try await keyhold(["file", "encrypt", "p", "-o", "c", "--key-file", "k.json"], in: dir).status == 0)

        let info = try await keyhold(["file", "info", "c", "--json"], in: dir)
        let object = try #require(try JSONSerialization.jsonObject(with: info.stdout) as? [String: Any])
        #expect(object["key_id"] as? String == key.record.id.description)
        #expect(object["origin_server_id"] as? String == key.record.originServerID.description)
        #expect(object["segment_size"] as? Int == 1 << 20)
        #expect(object["segments"] as? Int == 3)
        #expect(object["plaintext_length"] as? Int == plaintext.count)
        #expect(object["file_size"] as? Int == plaintext.count + 45 + 40 + 3 * 16)
        let text = try await keyhold(["file", "info", "c"], in: dir).stdoutText
        #expect(text.contains("key id:            \(key.record.id)"))
        #expect(text.contains("plaintext length:  3000000 bytes"))

        let d = try await keyhold(["file", "decrypt", "c", "-o", "d", "--key-file", "k.json"], in: dir)
        #expect(d.status == 0)
        #expect(try Data(contentsOf: dir.appendingPathComponent("d")) == plaintext)
        let mode = try FileManager.default.attributesOfItem(atPath: dir.appendingPathComponent("d").path)[.posixPermissions] as? Int
        #expect(mode == 0o600, "new plaintext files are private")
        #expect(try others(dir, except: ["k.json", "p", "c", "d"]).isEmpty)
    }

    @Test func standardInputAndOutput() async throws {
        let dir = try folder()
        defer { try? FileManager.default.removeItem(at: dir) }
        _ = try await keyhold(["key", "new", "-o", "k.json"], in: dir)
        let plaintext = Data(repeating: 0x41, count: 2_500_000)
        let enc = try await keyhold(["file", "encrypt", "-", "-o", "-", "--key-file", "k.json"], in: dir, stdin: plaintext)
        #expect(enc.status == 0)
        #expect(enc.stdout.starts(with: [0x89, 0x4B, 0x48, 0x46]))
        let info = try await keyhold(["file", "info", "-", "--json"], in: dir, stdin: enc.stdout)
        #expect(info.stdoutText.contains("\"plaintext_length\" : 2500000"))
        let dec = try await keyhold(["file", "decrypt", "-", "-o", "-", "--key-file", "k.json"], in: dir, stdin: enc.stdout)
        #expect(dec.status == 0)
        #expect(dec.stdout == plaintext)
    }

    @Test func inPlaceKeepsModeAndRefusesDoubleEncryption() async throws {
        let dir = try folder()
        defer { try? FileManager.default.removeItem(at: dir) }
        _ = try await keyhold(["key", "new", "-o", "k.json"], in: dir)
        let path = dir.appendingPathComponent("notes.txt")
        let plaintext = Data("meeting notes\n".utf8)
        try plaintext.write(to: path)
        try FileManager.default.setAttributes([.posixPermissions: 0o640], ofItemAtPath: path.path)

        #expect(try await keyhold(["file", "encrypt", "notes.txt", "--in-place", "--key-file", "k.json"], in: dir).status == 0)
        let encrypted = try Data(contentsOf: path)
        #expect(encrypted.starts(with: [0x89, 0x4B, 0x48, 0x46]))
        #expect(try FileManager.default.attributesOfItem(atPath: path.path)[.posixPermissions] as? Int == 0o640)

        expectError(
            try await keyhold(["file", "encrypt", "notes.txt", "--in-place", "--key-file", "k.json"], in: dir), mentions: "already a Keyhold")
        #expect(try Data(contentsOf: path) == encrypted)

        #expect(try await keyhold(["file", "decrypt", "notes.txt", "--in-place", "--key-file", "k.json"], in: dir).status == 0)
        #expect(try Data(contentsOf: path) == plaintext)
        #expect(try FileManager.default.attributesOfItem(atPath: path.path)[.posixPermissions] as? Int == 0o640)
        #expect(try others(dir, except: ["k.json", "notes.txt"]).isEmpty)
    }

    // Trust boundary, defect 1: `--in-place` through a symbolic link left the plaintext target.

    @Test func inPlaceThroughASymbolicLinkIsRefusedAndLeavesBothAsTheyWere() async throws {
        let dir = try folder()
        defer { try? FileManager.default.removeItem(at: dir) }
        _ = try await keyhold(["key", "new", "-o", "k.json"], in: dir)
        try FileManager.default.createDirectory(at: dir.appendingPathComponent("real"), withIntermediateDirectories: true)
        let secret = Data("TOP SECRET\n".utf8)
        try secret.write(to: dir.appendingPathComponent("real/secret.txt"))
        try FileManager.default.createSymbolicLink(atPath: dir.appendingPathComponent("slink.txt").path, withDestinationPath: "real/secret.txt")
        for verb in ["encrypt", "decrypt"] {
            for extra in [[], ["--force"]] {
                let r = try await keyhold(["file", verb, "slink.txt", "--in-place", "--key-file", "k.json"] + extra, in: dir)
                expectError(r, mentions: "symbolic link")
                #expect(r.stderr.contains("real/secret.txt"), "the hint names the link's target: \(r.stderr)")
            }
        }
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: dir.appendingPathComponent("slink.txt").path) == "real/secret.txt")
        #expect(try Data(contentsOf: dir.appendingPathComponent("real/secret.txt")) == secret)
        // On the file itself it works, and the link then shows the ciphertext.
        #expect(try await keyhold(["file", "encrypt", "real/secret.txt", "--in-place", "--key-file", "k.json"], in: dir).status == 0)
        #expect(try Data(contentsOf: dir.appendingPathComponent("slink.txt")).starts(with: [0x89, 0x4B, 0x48, 0x46]))
        #expect(try others(dir, except: ["k.json", "real", "slink.txt"]).isEmpty)
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.appendingPathComponent("real").path) == ["secret.txt"])
    }

    @Test func outputOntoASymbolicLinkIsRefusedEvenWithForce() async throws {
        let dir = try folder()
        defer { try? FileManager.default.removeItem(at: dir) }
        _ = try await keyhold(["key", "new", "-o", "k.json"], in: dir)
        try Data("plain".utf8).write(to: dir.appendingPathComponent("p"))
        try Data("old".utf8).write(to: dir.appendingPathComponent("target"))
        try FileManager.default.createSymbolicLink(atPath: dir.appendingPathComponent("out").path, withDestinationPath: "target")
        try FileManager.default.createSymbolicLink(atPath: dir.appendingPathComponent("dangling").path, withDestinationPath: "nowhere")
        for output in ["out", "dangling"] {
            expectError(
                try await keyhold(["file", "encrypt", "p", "-o", output, "--force", "--key-file", "k.json"], in: dir), mentions: "symbolic link")
        }
        _ = try await keyhold(["file", "encrypt", "p", "-o", "c", "--key-file", "k.json"], in: dir)
        expectError(try await keyhold(["file", "decrypt", "c", "-o", "out", "--force", "--key-file", "k.json"], in: dir), mentions: "symbolic link")
        // Every writer of a user's file refuses the same way (here: a new key file).
        expectError(try await keyhold(["key", "new", "-o", "dangling", "--force"], in: dir), mentions: "symbolic link")
        #expect(try Data(contentsOf: dir.appendingPathComponent("target")) == Data("old".utf8))
        #expect(!FileManager.default.fileExists(atPath: dir.appendingPathComponent("nowhere").path))
        #expect(try others(dir, except: ["k.json", "p", "c", "target", "out", "dangling"]).isEmpty)
    }

    @Test func inPlaceOnAFileWithOtherHardLinksIsRefused() async throws {
        let dir = try folder()
        defer { try? FileManager.default.removeItem(at: dir) }
        _ = try await keyhold(["key", "new", "-o", "k.json"], in: dir)
        let secret = Data("TOP SECRET\n".utf8)
        try secret.write(to: dir.appendingPathComponent("a.txt"))
        try FileManager.default.linkItem(atPath: dir.appendingPathComponent("a.txt").path, toPath: dir.appendingPathComponent("b.txt").path)
        for verb in ["encrypt", "decrypt"] {
            expectError(try await keyhold(["file", verb, "a.txt", "--in-place", "--force", "--key-file", "k.json"], in: dir), mentions: "hard links")
        }
        #expect(try Data(contentsOf: dir.appendingPathComponent("a.txt")) == secret)
        #expect(try Data(contentsOf: dir.appendingPathComponent("b.txt")) == secret)
        // With the other name gone it works, and no copy of the plaintext is left.
        try FileManager.default.removeItem(at: dir.appendingPathComponent("b.txt"))
        #expect(try await keyhold(["file", "encrypt", "a.txt", "--in-place", "--key-file", "k.json"], in: dir).status == 0)
        #expect(try others(dir, except: ["k.json", "a.txt"]).isEmpty)
    }

    @Test func inPlaceInAFolderOthersCanWriteIsRefusedUnlessItIsSticky() async throws {
        let dir = try folder()
        defer { try? FileManager.default.removeItem(at: dir) }
        _ = try await keyhold(["key", "new", "-o", "k.json"], in: dir)
        let shared = dir.appendingPathComponent("shared")
        try FileManager.default.createDirectory(at: shared, withIntermediateDirectories: true)
        let secret = Data("TOP SECRET\n".utf8)
        try secret.write(to: shared.appendingPathComponent("s.txt"))
        for mode in [0o777, 0o775] {
            try FileManager.default.setAttributes([.posixPermissions: mode], ofItemAtPath: shared.path)
            expectError(
                try await keyhold(["file", "encrypt", "shared/s.txt", "--in-place", "--key-file", "k.json"], in: dir),
                mentions: "other than its owner")
            #expect(try Data(contentsOf: shared.appendingPathComponent("s.txt")) == secret)
        }
        // The sticky bit (as on /tmp) stops others from moving the file: allowed.
        try FileManager.default.setAttributes([.posixPermissions: 0o1777], ofItemAtPath: shared.path)
        #expect(try await keyhold(["file", "encrypt", "shared/s.txt", "--in-place", "--key-file", "k.json"], in: dir).status == 0)
        #expect(try Data(contentsOf: shared.appendingPathComponent("s.txt")).starts(with: [0x89, 0x4B, 0x48, 0x46]))
        #expect(try FileManager.default.contentsOfDirectory(atPath: shared.path) == ["s.txt"])
    }

    @Test func existingDestinationIsNeverReplacedWithoutForce() async throws {
        let dir = try folder()
        defer { try? FileManager.default.removeItem(at: dir) }
        _ = try await keyhold(["key", "new", "-o", "k.json"], in: dir)
        try Data("plain".utf8).write(to: dir.appendingPathComponent("p"))
        try Data("keep me".utf8).write(to: dir.appendingPathComponent("c"))
        let r = try await keyhold(["file", "encrypt", "p", "-o", "c", "--key-file", "k.json"], in: dir)
        expectError(r, mentions: "already exists")
        #expect(try Data(contentsOf: dir.appendingPathComponent("c")) == Data("keep me".utf8))
        #expect(try await keyhold(["file", "encrypt", "p", "-o", "c", "--key-file", "k.json", "--force"], in: dir).status == 0)
        expectError(try await keyhold(["file", "encrypt", "p", "-o", "p", "--key-file", "k.json", "--force"], in: dir), mentions: "is the input")
        expectError(try await keyhold(["file", "encrypt", "p", "--key-file", "k.json"], in: dir), mentions: "no destination")
    }

    @Test func wrongKeysAreRefusedBeforeAnythingIsWritten() async throws {
        let dir = try folder()
        defer { try? FileManager.default.removeItem(at: dir) }
        _ = try await keyhold(["key", "new", "-o", "a.json"], in: dir)
        _ = try await keyhold(["key", "new", "-o", "b.json"], in: dir)
        _ = try await keyhold(["key", "new", "--kind", "drive", "-o", "drive.json"], in: dir)
        try Data("secret".utf8).write(to: dir.appendingPathComponent("p"))
        #expect(try await keyhold(["file", "encrypt", "p", "-o", "c", "--key-file", "a.json"], in: dir).status == 0)
        expectError(try await keyhold(["file", "decrypt", "c", "-o", "d", "--key-file", "b.json"], in: dir), mentions: "not with key")
        expectError(try await keyhold(["file", "encrypt", "p", "-o", "e", "--key-file", "drive.json"], in: dir), mentions: "drive key")
        try Data(repeating: 1, count: 31).write(to: dir.appendingPathComponent("short.key"))
        expectError(
            try await keyhold(["file", "decrypt", "c", "-o", "d", "--key-file", "short.key"], in: dir), mentions: "neither a 32-byte raw key")
        expectError(try await keyhold(["file", "decrypt", "c", "-o", "d", "--key-file", "missing.key"], in: dir), mentions: "No such file")
        #expect(try others(dir, except: ["a.json", "b.json", "drive.json", "p", "c", "short.key"]).isEmpty)
    }

    @Test func usageErrorsUseTheSameFormat() async throws {
        let dir = try folder()
        defer { try? FileManager.default.removeItem(at: dir) }
        let r = try await keyhold(["file", "encrypt"], in: dir)
        expectError(r, mentions: "Missing expected argument")
        let s = try await keyhold(["file", "encrypt", "x", "-o", "y", "--key-file", "k", "--segment-size", "12"], in: dir)
        expectError(s)
    }

    /// Every vector through the real command: success vectors decrypt to the right bytes; every
    /// failing one exits non-zero with `keyhold: error:` and a hint, and leaves no output file and no
    /// temporary file behind.
    @Test(arguments: try TestVector.load(suite: "file-format"))
    func vectorThroughTheCommand(_ v: TestVector) async throws {
        let dir = try folder()
        defer { try? FileManager.default.removeItem(at: dir) }
        try Data(v.key).write(to: dir.appendingPathComponent("k"))
        try Data(v.body).write(to: dir.appendingPathComponent("in"))
        let r = try await keyhold(["file", "decrypt", "in", "-o", "out", "--key-file", "k"], in: dir)
        switch v.expectation {
        case .success:
            #expect(r.status == 0, "\(r.stderr)")
            #expect(try Data(contentsOf: dir.appendingPathComponent("out")).count == Int(v.fields["plaintext length"] ?? ""))
        case .error(let code, let segment):
            expectError(r)
            if let segment { #expect(r.stderr.contains("segment \(segment) failed authentication"), "\(r.stderr)") }
            if code == "not_keyhold_file" { #expect(r.stderr.contains("not a Keyhold encrypted file")) }
            if code == "unsupported_version" { #expect(r.stderr.contains("format version")) }
            if code == "truncated" { #expect(r.stderr.contains("cut short") || r.stderr.contains("empty")) }
            #expect(try others(dir, except: ["k", "in"]).isEmpty, "no output and no temporary file")
        }
    }
}
