import ArgumentParser
import Foundation
import KeyholdClient
import KeyholdCore
import KeyholdProtocol

/// `keyhold-server release …`: requests for keys that `release_policy = approval` keeps for an
/// administrator (docs/operations.md, "Release approval").
struct ReleaseCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "release", abstract: "Requests for keys that wait for an administrator's approval (release_policy = approval).",
        subcommands: [List.self, Approve.self, Deny.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List release requests, newest first (the open ones unless --all).",
            discussion: "Example: keyhold-server release list")
        @OptionGroup var data: DataDirOption
        @Flag(help: "Also list closed requests (released, expired).") var all = false
        @Option(help: "At most this many (1…10000).") var limit = 1000
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            guard (1...10_000).contains(limit) else { throw KeyholdError(.usage, "--limit must be 1 to 10000", hint: "for example --limit 100") }
            let state = all ? "all" : "open"
            let list = try await withAdmin(data) {
                try await $0.get("\(APIPath.adminReleases)?state=\(state)&limit=\(limit)", as: ApprovalListResponse.self)
            }
            if json { return try printJSON(list.requests) }
            print("id\tstate\trequested\tkey\tdevice\tname\tdecided by\treason")
            for r in list.requests {
                print(
                    "\(r.id)\t\(r.state)\t\(formatDate(r.requested))\t\(r.keyID)\t\(r.clientID)\t\(PrintableText.escaped(r.clientName))\t\(r.decidedBy.map { "\($0)" } ?? "-")\t\(PrintableText.escaped(r.reason))"
                )
            }
            if list.requests.count == limit {
                FileHandle.standardError.write(Data("keyhold: showing the newest \(limit); raise --limit for more\n".utf8))
            }
        }
    }

    struct Approve: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Approve a request: the device's next request for the key releases it, once.",
            discussion: "Example: keyhold-server release approve 1c0f…e2 --reason 'ticket 4711: laptop replaced'")
        @OptionGroup var data: DataDirOption
        @Argument(help: "The request id (see 'release list').") var id: String
        @Option(help: "Why (recorded in the audit trail).") var reason: String

        func run() async throws { try await ReleaseCommand.decide(data, id, "approve", reason) }
    }

    struct Deny: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Deny a request: the device is refused the key, with the reason.",
            discussion: "Example: keyhold-server release deny 1c0f…e2 --reason 'not the owner of this drive'")
        @OptionGroup var data: DataDirOption
        @Argument(help: "The request id (see 'release list').") var id: String
        @Option(help: "Why (recorded in the audit trail and told to the device).") var reason: String

        func run() async throws { try await ReleaseCommand.decide(data, id, "deny", reason) }
    }

    static func decide(_ data: DataDirOption, _ id: String, _ decision: String, _ reason: String) async throws {
        guard ApprovalID(id) != nil else {
            throw KeyholdError(.usage, "'\(id)' is not a request id", hint: "ids are UUIDs; see 'keyhold-server release list'")
        }
        let info = try await withAdmin(data) {
            try await $0.post(APIPath.adminRelease(id, decision), ApprovalDecisionRequest(reason: reason), as: ApprovalInfo.self)
        }
        print("\(info.state) request \(info.id): key \(info.keyID) for device \(info.clientID) (\(PrintableText.escaped(info.clientName)))")
    }
}
