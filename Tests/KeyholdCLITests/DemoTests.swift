import Foundation
import KeyholdTestSupport
import Testing

/// `keyhold demo` is what `make run` shows a newcomer: every step must report its expected result.
@Suite struct DemoTests {
    @Test func everyStepReportsSuccess() throws {
        let r = try run(Paths.executable("keyhold"), ["demo", "--size-mib", "2"])
        #expect(r.status == 0, "\(r.stdoutText)\n\(r.stderr)")
        let out = r.stdoutText
        let steps = [
            "Create a file key", "Encrypt the document", "Inspect it without the key", "Decrypt it",
            "Damage one byte and decrypt", "Decrypt with another key", "Encrypt and decrypt in place",
        ]
        let summary = try #require(out.range(of: "\nSummary\n")).upperBound
        let rows = out[summary...].split(separator: "\n")
        for step in steps {
            let row = rows.first { $0.hasPrefix("  \(step) ") }
            #expect(row?.contains(" ok: ") == true, "step '\(step)': \(row ?? "missing")")
        }
        #expect(out.contains("All \(steps.count) steps gave the expected result."))
        #expect(out.contains("$ keyhold file encrypt report.txt -o report.txt.khf --key-file key.json"))
        #expect(out.contains("failed authentication"))
    }
}
