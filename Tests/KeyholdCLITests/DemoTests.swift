import Foundation
import KeyholdTestSupport
import Testing

/// `keyhold demo` is what `make run` shows a newcomer: real servers and agents, every step must
/// report its expected result, and nothing it started may be left running.
@Suite(.timeLimit(.minutes(10))) struct DemoTests {
    static let steps = [
        "Start servers T, S1, S2, S3; join S1 and S2 to T",
        "Start agents D1, D2, D3 and enroll them",
        "D1 encrypts a file (its key is escrowed with S1 first)",
        "D2 opens D1's file: S2 asks T, which has it from S1's heartbeat",
        "A damaged copy is refused",
        "D1 encrypts a drive image; D2 unlocks it through the hierarchy",
        "Option off on T: D2 is refused with hierarchy_disabled",
        "Reassign D1 from S1 to S2; it still opens its data",
        "Export S1's keys (password); import into S3; D3 opens D1's file",
    ]

    @Test func everyStepReportsSuccessAndEverythingStops() async throws {
        let r = try await run(Paths.executable("keyhold"), ["demo", "--heartbeat", "1"])
        #expect(r.status == 0, "\(r.stdoutText)\n\(r.stderr)")
        let out = r.stdoutText
        let summary = try #require(out.range(of: "\nSummary\n")).upperBound
        let rows = out[summary...].split(separator: "\n")
        for (i, step) in Self.steps.enumerated() {
            let row = rows.first { $0.hasPrefix("  \(i + 1). \(step.prefix(40))") }
            #expect(row?.contains(" ok: ") == true, "step \(i + 1) '\(step)': \(row ?? "missing")")
        }
        #expect(out.contains("All \(Self.steps.count) steps gave the expected result."))
        // The narration shows the real commands and the real refusals.
        #expect(out.contains("[D1] $ keyhold file encrypt minutes.txt -o minutes.khf"))
        #expect(out.contains("$ keyhold-server hierarchy disable --data-dir T"))
        #expect(out.contains("hierarchy_disabled") || out.contains("use hierarchy"))
        #expect(out.contains("failed authentication"))
        #expect(out.contains("Stopped every server and agent the demo started"))
        // Nothing the demo started is still running.
        let folder = try #require(out.firstMatch(of: /in\n(\/[^\n]*keyhold-demo-[A-Za-z0-9]+):/)?.1)
        #expect(!FileManager.default.fileExists(atPath: String(folder)))
        let ps = try await run(URL(fileURLWithPath: "/bin/ps"), ["-eo", "args"]).stdoutText
        #expect(!ps.contains(String(folder)), "a demo process is still running")
    }
}
