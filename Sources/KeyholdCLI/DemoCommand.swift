#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import ArgumentParser
import Foundation
import KeyholdCommandLine
import KeyholdCore

/// `keyhold demo`: the narrated tour that `make run` shows. It runs the real `keyhold` commands
/// (this very executable) in a temporary folder, prints each command and its output, checks each
/// result, and ends with a summary table. Exit status 0 only if every step gave the expected result.
struct DemoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Walk through Keyhold's features with real commands, narrated."
    )

    @Flag(help: "Keep the demo folder instead of deleting it at the end.")
    var keep = false

    @Option(help: ArgumentHelp("Size of the sample document in MiB.", valueName: "mib"))
    var sizeMib: Int = 5

    func run() throws {
        let folder = try makeFolder()
        var demo = Demo(folder: folder, executable: Self.executablePath())
        defer {
            if keep {
                print("\nThe demo folder is kept: \(folder)")
            } else {
                try? FileManager.default.removeItem(atPath: folder)
            }
        }
        try demo.tour(sizeMib: max(1, sizeMib))
        demo.summary()
        if demo.failures > 0 { throw ExitCode(1) }
    }

    private func makeFolder() throws -> String {
        let base = FileManager.default.temporaryDirectory.path
        var template = Array("\(base)/keyhold-demo-XXXXXX".utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw SystemCall.error("create a demo folder in", path: base, errno: errno)
        }
        return String(cString: made)
    }

    static func executablePath() -> String {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    }
}

/// The state of one demo run.
private struct Demo {
    let folder: String
    let executable: String
    var rows: [(step: String, result: String, seconds: Double)] = []
    var failures = 0

    init(folder: String, executable: String) {
        self.folder = folder
        self.executable = executable
    }

    struct Outcome {
        var status: Int32
        var stdout: String
        var stderr: String
    }

    mutating func tour(sizeMib: Int) throws {
        print("""
        Keyhold demo: a file is encrypted with a 32-byte key into the Keyhold file format, inspected,
        decrypted, and then damaged to show that nothing unauthenticated is ever written out.
        Working in \(folder)

        """)

        step("Create a file key", expect: "a JSON key record, mode 0600") {
            let o = $0.keyhold(["key", "new", "--label", "demo file key", "-o", "key.json"])
            let mode = $0.mode("key.json")
            return (o.status == 0 && mode == 0o600, "key \(o.stdout.trimmingCharacters(in: .whitespacesAndNewlines)), mode 0\(String(mode ?? 0, radix: 8))")
        }

        let sample = "\(folder)/report.txt"
        var text = ""
        var line = 0
        while text.utf8.count < sizeMib << 20 {
            line += 1
            text += "Quarterly report line \(line): revenue, forecasts and other things worth protecting.\n"
        }
        try text.write(toFile: sample, atomically: true, encoding: .utf8)
        let original = try Data(contentsOf: URL(fileURLWithPath: sample))
        print("Wrote a sample document report.txt (\(ProgressLine.bytes(original.count))).\n")

        step("Encrypt the document", expect: "report.txt.khf, no plaintext inside") {
            let o = $0.keyhold(["file", "encrypt", "report.txt", "-o", "report.txt.khf", "--key-file", "key.json"])
            let cipher = (try? Data(contentsOf: URL(fileURLWithPath: "\($0.folder)/report.txt.khf"))) ?? Data()
            let leaked = cipher.range(of: Data("Quarterly report".utf8)) != nil
            return (o.status == 0 && !cipher.isEmpty && !leaked, "\(ProgressLine.bytes(cipher.count)), plaintext absent: \(!leaked)")
        }

        step("Inspect it without the key", expect: "key id, segment size and lengths") {
            let o = $0.keyhold(["file", "info", "report.txt.khf"])
            let ok = o.status == 0 && o.stdout.contains("plaintext length:  \(original.count) bytes")
            return (ok, ok ? "header read, plaintext length \(original.count) bytes" : "unexpected info output")
        }

        step("Decrypt it", expect: "the same bytes as the original") {
            let o = $0.keyhold(["file", "decrypt", "report.txt.khf", "-o", "report.decrypted.txt", "--key-file", "key.json"])
            let back = try? Data(contentsOf: URL(fileURLWithPath: "\($0.folder)/report.decrypted.txt"))
            return (o.status == 0 && back == original, back == original ? "identical to the original" : "differs from the original")
        }

        step("Damage one byte and decrypt", expect: "authentication_failed, no output file") {
            var bytes = (try? Data(contentsOf: URL(fileURLWithPath: "\($0.folder)/report.txt.khf"))) ?? Data()
            if bytes.count > 200 { bytes[bytes.count / 2] ^= 0x01 }
            try? bytes.write(to: URL(fileURLWithPath: "\($0.folder)/damaged.khf"))
            print("  (flipped one bit in the middle of a copy: damaged.khf)")
            let o = $0.keyhold(["file", "decrypt", "damaged.khf", "-o", "damaged.txt", "--key-file", "key.json"])
            let absent = !FileManager.default.fileExists(atPath: "\($0.folder)/damaged.txt")
            let ok = o.status != 0 && o.stderr.contains("failed authentication") && absent
            return (ok, "refused (exit \(o.status)), damaged.txt \(absent ? "not created" : "EXISTS")")
        }

        step("Decrypt with another key", expect: "key_mismatch before any decryption") {
            _ = $0.keyhold(["key", "new", "-o", "other.json"], echo: false)
            let o = $0.keyhold(["file", "decrypt", "report.txt.khf", "-o", "wrong.txt", "--key-file", "other.json"])
            let ok = o.status != 0 && o.stderr.contains("not with key") && !FileManager.default.fileExists(atPath: "\($0.folder)/wrong.txt")
            return (ok, "refused (exit \(o.status))")
        }

        step("Encrypt and decrypt in place", expect: "the file is replaced crash-safely, then restored") {
            let a = $0.keyhold(["file", "encrypt", "report.decrypted.txt", "--in-place", "--key-file", "key.json"])
            let enc = (try? Data(contentsOf: URL(fileURLWithPath: "\($0.folder)/report.decrypted.txt"))) ?? Data()
            let b = $0.keyhold(["file", "decrypt", "report.decrypted.txt", "--in-place", "--key-file", "key.json"])
            let dec = try? Data(contentsOf: URL(fileURLWithPath: "\($0.folder)/report.decrypted.txt"))
            let ok = a.status == 0 && b.status == 0 && enc.starts(with: [0x89, 0x4B, 0x48, 0x46]) && dec == original
            return (ok, ok ? "encrypted in place, then back to the original" : "round trip failed")
        }
    }

    /// Runs one narrated step and records its result.
    mutating func step(_ title: String, expect: String, _ body: (Demo) throws -> (Bool, String)) {
        print("== \(rows.count + 1). \(title) (expected: \(expect))")
        let start = Date()
        let (ok, detail) = (try? body(self)) ?? (false, "the step threw an error")
        let seconds = Date().timeIntervalSince(start)
        print("   \(ok ? "OK" : "FAILED"): \(detail)\n")
        rows.append((title, ok ? "ok: \(detail)" : "FAILED: \(detail)", seconds))
        if !ok { failures += 1 }
    }

    /// Runs `keyhold ARGS` in the demo folder, echoing the command and its output.
    func keyhold(_ args: [String], echo: Bool = true) -> Outcome {
        if echo { print("  $ keyhold " + args.map(Self.quote).joined(separator: " ")) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = args
        process.currentDirectoryURL = URL(fileURLWithPath: folder)
        var env = ProcessInfo.processInfo.environment
        env["KEYHOLD_NO_PROGRESS"] = "1"
        process.environment = env
        let out = Pipe()
        let err = Pipe()
        process.standardOutput = out
        process.standardError = err
        do { try process.run() } catch { return Outcome(status: 127, stdout: "", stderr: "\(error)") }
        let o = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let e = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        if echo {
            for line in (o + e).split(separator: "\n") { print("    \(line)") }
        }
        return Outcome(status: process.terminationStatus, stdout: o, stderr: e)
    }

    func mode(_ name: String) -> Int? {
        var st = stat()
        guard stat("\(folder)/\(name)", &st) == 0 else { return nil }
        return Int(st.st_mode & 0o777)
    }

    static func quote(_ s: String) -> String {
        s.contains(" ") ? "'\(s)'" : s
    }

    func summary() {
        let width = max(4, rows.map(\.step.count).max() ?? 0)
        print("Summary")
        print("  " + "step".padding(toLength: width, withPad: " ", startingAt: 0) + "  time     result")
        for row in rows {
            let t = String(format: "%6.2fs", row.seconds)
            print("  " + row.step.padding(toLength: width, withPad: " ", startingAt: 0) + "  \(t)  \(row.result)")
        }
        print(failures == 0 ? "\nAll \(rows.count) steps gave the expected result." : "\n\(failures) step(s) FAILED.")
    }
}
