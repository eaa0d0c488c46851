import ArgumentParser
import Foundation
import KeyholdAgentClient
import KeyholdCommandLine
import KeyholdCore
import KeyholdProtocol
import KeyholdSystem

#if canImport(Glibc)
import Glibc
#endif

/// `--socket`, shared by the commands that talk to the agent.
struct AgentOptions: ParsableArguments {
    @Option(help: ArgumentHelp("The agent's socket (default: $KEYHOLD_SOCKET or /run/keyhold/agent.sock).", valueName: "path"))
    var socket: String?

    /// A client for the agent (waiting at most `timeout` seconds for an answer).
    func client(timeout: Int = 60) -> AgentClient { AgentClient(path: socket ?? AgentClient.defaultPath, timeout: timeout) }

    /// Sends `request` as `command` (`keyhold enroll`, …): a request only root may make is not
    /// sent by anyone else, who is told so (the agent would refuse it without saying why).
    func send(_ request: AgentRequest, as command: String, timeout: Int = 60) throws -> AgentResponse {
        if request.operation.needsRoot, geteuid() != 0 {
            throw KeyholdError(
                .forbidden, "'\(command)' needs root: only root may \(request.operation) through the Keyhold agent",
                hint: "run it as root, for example 'sudo \(command) …'")
        }
        return try client(timeout: timeout).send(request)
    }

    /// A key from the agent (`file-key` for encryption, `key` for decryption, `drive-key`).
    func key(_ request: AgentRequest) throws -> KeyFile {
        KeyFile(agentKey: try client().send(request).key())
    }
}

extension KeyFile {
    /// A key the agent answered.
    init(agentKey key: KeyMaterial) { self.init(secret: key.secret, record: key.record) }
}

/// The two halves of offline access on the command line (docs/spec/offline-access.md), shared
/// by `file decrypt` and `drive unlock`: `--offline [--request-file]` asks, `--response` or
/// `--response-file` answers.
struct OfflineAccessOptions: ParsableArguments {
    @Flag(help: "The server cannot be reached: print a request code for an administrator instead (docs/operations.md, 'Offline access').")
    var offline = false

    @Option(help: ArgumentHelp("With --offline, also write the request code to this file (to send by e-mail).", valueName: "file"))
    var requestFile: String?

    @Option(help: ArgumentHelp("The administrator's response code to a request made with --offline: use its key, once.", valueName: "code"))
    var response: String?

    @Option(help: ArgumentHelp("Read the response code from this file.", valueName: "file"))
    var responseFile: String?

    /// Asks the agent for a request code for `keyID`, prints it (and writes it to `--request-file`).
    func printRequest(_ keyID: KeyID, kind: KeyKind, agent: AgentOptions) throws {
        let request = try agent.client().send(.offlineRequest(keyID, kind: kind)).offlineRequest()
        if let requestFile { try AtomicFileWriter.replace(requestFile, with: Data((request.code + "\n").utf8), mode: 0o644) }
        print(request.code)
        FileHandle.standardError.write(
            Data(
                """
                keyhold: request \(request.requestID) for key \(keyID) from device \(request.deviceID)\(requestFile.map { " (also in \($0))" } ?? "")
                keyhold: give the code above to your administrator ('keyhold-server key respond CODE --reason …'), then run
                keyhold:   the same command with --response CODE instead of --offline (the response works once, on this device)

                """.utf8))
    }

    /// Refuses `--offline` together with a response (the one asks for what the other uses).
    func refuseRequestWithResponse() throws {
        guard !offline || (response == nil && responseFile == nil) else {
            throw KeyholdError(
                .usage, "--offline asks for a response code; --response uses one", hint: "first run with --offline, later with --response")
        }
    }

    /// The response code given with `--response` or `--response-file`, if either.
    func responseCode() throws -> String? {
        guard response == nil || responseFile == nil else {
            throw KeyholdError(.usage, "give --response or --response-file, not both", hint: "for example --response 46DCBP-0VHK54-…")
        }
        guard let responseFile else { return response }
        guard let data = FileManager.default.contents(atPath: responseFile) else {
            throw KeyholdError(.ioFailed, "cannot read \(responseFile)", hint: "check the path")
        }
        return String(decoding: data, as: UTF8.self)
    }
}

/// `keyhold enroll TOKEN`.
struct EnrollCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "enroll",
        abstract: "Enroll this device with a Keyhold server (root).",
        discussion:
            """
            The token comes from the administrator ('keyhold-server token create'). The agent checks the server's CA against the token, makes the device key here and keeps it in its state directory.
            Example:
              sudo keyhold enroll kh1.… --name laptop-42
            """
    )
    @Argument(help: "The enrollment token (kh1.…).") var token: String
    @Option(
        help: ArgumentHelp(
            "The name the server lists this device under (default: the host name); 1 to 64 printable characters.", valueName: "name"))
    var name: String?
    @OptionGroup var agent: AgentOptions

    func validate() throws {
        if let name, name.isEmpty || !PrintableText.isClean(name, limit: 64) {
            throw ValidationError("--name must be 1 to 64 printable characters (no control characters)")
        }
    }

    func run() throws {
        let status = try agent.send(.enroll(token: token, name: name), as: "keyhold enroll").status()
        print(
            "enrolled: device \(status.deviceID?.description ?? "?") with server \(status.serverID?.description ?? "?") at \(status.serverAddress ?? "?")"
        )
    }
}

/// `keyhold reassign`.
struct ReassignCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reassign",
        abstract: "Move this device to another Keyhold server without losing access to its data (root).",
        discussion: """
            The token comes from the new server's administrator ('keyhold-server token create'). The agent checks the new \
            server's CA against the token, enrolls with it, re-escrows every key it holds and waits for each acknowledgement, \
            and only then switches to the new server; it then tells the old server that the device left. If anything fails \
            before the switch, the device stays with its old server; run the command again with the same token to resume.
            Examples:
              sudo keyhold reassign kh1.… --dry-run
              sudo keyhold reassign kh1.…
            """
    )
    @Argument(help: "The enrollment token of the new server (kh1.…).") var token: String
    @Flag(help: "Check the new server and list the keys that would move; change nothing.") var dryRun = false
    @Flag(help: "Print JSON.") var json = false
    @OptionGroup var agent: AgentOptions

    func run() throws {
        let report = try agent.send(.reassign(token: token, dryRun: dryRun), as: "keyhold reassign", timeout: 3600).reassignReport()
        if json {
            print(try WireFormat.prettyText(report))
            return
        }
        if report.dryRun {
            print("Dry run: nothing changed.")
            print("The server at \(report.toAddress) presents the CA the token names.")
            print(
                "This device would move from server \(report.fromServerID) (\(report.fromAddress)) to it, re-escrowing \(report.keys.count) key\(report.keys.count == 1 ? "" : "s"):"
            )
            for id in report.keys { print("  \(id)") }
            return
        }
        print(
            "Reassigned: this device is now \(report.deviceID?.description ?? "?") at server \(report.toServerID?.description ?? "?") (\(report.toAddress))."
        )
        print(
            "Re-escrowed \(report.keys.count) key\(report.keys.count == 1 ? "" : "s") (\(report.reescrowed) new to that server, \(report.alreadyPresent) already there), each acknowledged before the switch."
        )
        if report.oldServerNotified {
            print("The old server \(report.fromServerID) marked this device as moved; it keeps its keys.")
        } else {
            print(
                "The old server \(report.fromServerID) could not be told (\(report.oldServerNote ?? "no answer")); its administrator may revoke this device there."
            )
        }
    }
}

/// `keyhold status`.
struct StatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status", abstract: "Show the agent's state.",
        discussion: """
            Example:
              keyhold status --json
            """)
    @OptionGroup var agent: AgentOptions
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        let status = try agent.client().send(.status).status()
        if json {
            print(try WireFormat.prettyText(status))
            return
        }
        let date = { (d: Date?) in d.map { ISO8601DateFormatter().string(from: $0) } ?? "never" }
        print(
            """
            enrolled:        \(status.enrolled ? "yes" : "no")
            server:          \(status.serverID?.description ?? "-") at \(status.serverAddress ?? "-")
            device:          \(status.deviceID?.description ?? "-")\(status.certificateExpires.map { "\ncertificate:     expires \(date($0))" } ?? "")
            last heartbeat:  \(date(status.lastHeartbeat))\(status.lastHeartbeatError.map { " (last attempt failed: \(PrintableText.escaped($0)))" } ?? "")\(status.heartbeatStopped.map { "\nheartbeats:      STOPPED: \($0)" } ?? "")
            cached keys:     \(status.cachedKeys)
            active file key: \(status.activeFileKey?.description ?? "none yet")
            outbox:          \(status.outbox) key(s) awaiting escrow
            agent version:   \(status.version)
            """)
    }
}
