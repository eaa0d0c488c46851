import Foundation
import KeyholdCore
import KeyholdTestSupport
import Testing

/// The exit statuses of docs/operations.md ("Exit status"), the `--json` errors and the usage
/// hints, as the three executables produce them.
@Suite struct ExitStatusTests {
    let keyhold = Paths.executable("keyhold")
    let server = Paths.executable("keyhold-server")
    let agent = Paths.executable("keyhold-agent")

    /// The rows of the table in docs/operations.md: status, class, error codes.
    func documentedTable() throws -> [(status: Int32, name: String, codes: [String])] {
        let text = try String(contentsOf: Paths.repository.appendingPathComponent("docs/operations.md"), encoding: .utf8)
        guard let start = text.range(of: "### Exit status") else { return [] }
        return text[start.upperBound...].split(separator: "\n").drop { !$0.hasPrefix("| status") }.dropFirst(2)
            .prefix { $0.hasPrefix("|") }
            .compactMap { row in
                let cells = row.split(separator: "|", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
                guard cells.count > 4, let status = Int32(cells[1]) else { return nil }
                let codes = cells[3].split(separator: ",").compactMap { cell -> String? in
                    let word = cell.trimmingCharacters(in: .whitespaces)
                    return word.hasPrefix("`") ? word.trimmingCharacters(in: CharacterSet(charactersIn: "`")) : nil
                }
                return (status, cells[2].trimmingCharacters(in: CharacterSet(charactersIn: "`")), codes)
            }
    }

    @Test func everyErrorCodeHasTheStatusTheOperationsTableGivesIt() throws {
        let table = try documentedTable()
        #expect(table.map(\.status) == ExitStatus.allCases.map(\.rawValue), "one row per status, in order")
        for row in table {
            #expect(ExitStatus(rawValue: row.status)?.description == row.name, "status \(row.status)")
        }
        let documented = table.flatMap { row in row.codes.map { ($0, row.status) } }
        #expect(documented.count == KeyholdError.Code.allCases.count, "every code once: \(documented.map(\.0))")
        for (code, status) in documented {
            let known = KeyholdError.Code(rawValue: code)
            #expect(known != nil, "\(code) is not a code")
            #expect(known?.exitStatus.rawValue == status, "\(code): documented \(status), code says \(known?.exitStatus.rawValue ?? -1)")
        }
    }

    /// Two lines on standard error and, with `--json`, the same error as one JSON line on standard output.
    func expectFailure(
        _ r: RunResult, _ program: String, status: Int32, code: String, json: Bool = false, sourceLocation: SourceLocation = #_sourceLocation
    ) throws {
        #expect(r.status == status, "\(r.stderr)", sourceLocation: sourceLocation)
        let lines = r.stderr.split(separator: "\n")
        #expect(lines.first?.hasPrefix("\(program): error: ") == true && lines.contains { $0.hasPrefix("hint: ") }, "\(r.stderr)")
        guard json else { return }
        let object = try JSONSerialization.jsonObject(with: r.stdout) as? [String: [String: Any]]
        let error = object?["error"]
        #expect(error?["code"] as? String == code, sourceLocation: sourceLocation)
        #expect(error?["exit_status"] as? Int == Int(status), sourceLocation: sourceLocation)
        #expect(error?["exit_class"] as? String == ExitStatus(rawValue: status)?.description, sourceLocation: sourceLocation)
        #expect((error?["hint"] as? String)?.isEmpty == false, sourceLocation: sourceLocation)
    }

    @Test func eachExecutableEndsWithItsErrorsClass() async throws {
        let dir = try Paths.temporaryFolder("exit")
        defer { try? FileManager.default.removeItem(at: dir) }
        // try again: the agent is not running
        let unreachable = try await run(keyhold, ["status", "--json", "--socket", dir.appendingPathComponent("none.sock").path])
        try expectFailure(unreachable, "keyhold", status: 75, code: "unreachable", json: true)
        // data error: not a Keyhold file
        #expect(try await run(keyhold, ["key", "new", "-o", "k.json"], in: dir).status == 0)
        try Data("not a keyhold file".utf8).write(to: dir.appendingPathComponent("junk"))
        let junk = try await run(keyhold, ["file", "decrypt", "--key-file", "k.json", "junk", "-o", "out"], in: dir)
        try expectFailure(junk, "keyhold", status: 65, code: "not_keyhold_file")
        #expect(!FileManager.default.fileExists(atPath: dir.appendingPathComponent("out").path))
        // configuration: no data directory, no configuration file
        let noServer = try await run(server, ["status", "--json", "--data-dir", dir.appendingPathComponent("nothing").path])
        try expectFailure(noServer, "keyhold-server", status: 78, code: "configuration", json: true)
        let noConfig = try await run(agent, ["run", "--config", dir.appendingPathComponent("none.toml").path])
        try expectFailure(noConfig, "keyhold-agent", status: 78, code: "configuration")
        // usage
        let badName = try await run(server, ["init", "--data-dir", dir.appendingPathComponent("s").path, "--name", "two words"])
        try expectFailure(badName, "keyhold-server", status: 64, code: "usage")
        #expect(badName.stderr.contains("is not a host name"), "\(badName.stderr)")
        #expect(!FileManager.default.fileExists(atPath: dir.appendingPathComponent("s").path), "a refused init creates nothing")
    }

    @Test func aMistypedSubcommandIsAnsweredWithTheClosestOne() async throws {
        for (words, meant) in [
            (["fiel"], "keyhold file"), (["file", "encrpyt", "x"], "keyhold file encrypt"), (["drive", "unlcok"], "keyhold drive unlock"),
            (["stat"], "keyhold status"),
        ] {
            let r = try await run(keyhold, words)
            try expectFailure(r, "keyhold", status: 64, code: "usage")
            #expect(r.stderr.contains("hint: did you mean '\(meant)'?"), "\(words): \(r.stderr)")
        }
        let r = try await run(server, ["key", "reveel"])
        #expect(r.status == 64 && r.stderr.contains("did you mean 'keyhold-server key reveal'?"), "\(r.stderr)")
        let far = try await run(keyhold, ["xyzzy"])
        #expect(far.status == 64 && !far.stderr.contains("did you mean"), "nothing is close to xyzzy: \(far.stderr)")
    }

    @Test func versionNamesTheCommitAndItsDate() async throws {
        for program in [keyhold, server, agent] {
            let r = try await run(program, ["--version"])
            #expect(r.status == 0)
            let line = r.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
            let pattern = #/^\d+\.\d+\.\d+ \(commit ([0-9a-f]{12}(-dirty)?|unknown), (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ|unknown)\)$/#
            #expect(line.wholeMatch(of: pattern) != nil, "\(program.lastPathComponent): \(line)")
        }
        // Built from this clone: the commit is this clone's HEAD.
        let head = try await run(URL(fileURLWithPath: "/usr/bin/git"), ["-C", Paths.repository.path, "rev-parse", "--short=12", "HEAD"])
        if head.status == 0 {
            let r = try await run(keyhold, ["--version"])
            #expect(r.stdoutText.contains("(commit \(head.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines))"), "\(r.stdoutText)")
        }
    }

    @Test(.enabled(if: geteuid() == 0, "drops from root to nobody")) func aDataDirectoryThisUserCannotReadIsReportedAsUnreadable() async throws {
        let dir = try Paths.temporaryFolder("exit-unreadable")
        defer { try? FileManager.default.removeItem(at: dir) }
        let data = dir.appendingPathComponent("server").path
        let made = try await run(
            server, ["init", "--data-dir", data, "--listen", "127.0.0.1:0", "--enroll-listen", "127.0.0.1:0", "--name", "unreadable"])
        #expect(made.status == 0, "\(made.stderr)")
        let r = try await run(
            URL(fileURLWithPath: "/usr/bin/setpriv"), ["--reuid=65534", "--regid=65534", "--clear-groups", server.path, "status", "--data-dir", data])
        try expectFailure(r, "keyhold-server", status: 78, code: "configuration")
        #expect(r.stderr.contains("cannot read the data directory \(data): permission denied"), "\(r.stderr)")
        #expect(!r.stderr.contains("create one with"), "not told to init a directory that exists: \(r.stderr)")
    }

    @Test(.enabled(if: geteuid() == 0, "drops from root to nobody")) func enrollingAsAnotherUserThanRootIsToldItNeedsRoot() async throws {
        let dir = try Paths.temporaryFolder("exit-root")
        defer { try? FileManager.default.removeItem(at: dir) }
        let r = try await run(
            URL(fileURLWithPath: "/usr/bin/setpriv"),
            [
                "--reuid=65534", "--regid=65534", "--clear-groups", keyhold.path, "enroll", "kh1.x", "--socket",
                dir.appendingPathComponent("a.sock").path,
            ]
        )
        try expectFailure(r, "keyhold", status: 77, code: "forbidden")
        #expect(r.stderr.contains("'keyhold enroll' needs root"), "\(r.stderr)")
    }
}
