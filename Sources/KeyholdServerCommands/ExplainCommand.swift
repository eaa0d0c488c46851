import ArgumentParser
import Foundation
import KeyholdClient
import KeyholdCore
import KeyholdProtocol

/// `keyhold-server explain --key ID [--device ID]`.
struct ExplainCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "explain",
        abstract: "Say, hop by hop up the hierarchy, why a device can or cannot get a key.",
        discussion: """
            For this server and each primary above it: whether it holds the key (and how it got it), whether it is \
            blocked or destroyed there, whether the 'use hierarchy' option is on, whether its primary acknowledged \
            the key, and what its last lookup of the key answered. With --device, also the device's state and what \
            release_policy says. Changes nothing; no secret is read.
            Example:
              keyhold-server explain --key 1b4e28ba-2fa1-4d2e-883f-0016d3cca427 --device 06c0c961-bf82-4966-3339-fac5f1577a27
            """
    )
    @OptionGroup var data: DataDirOption
    @Option(help: ArgumentHelp("The key's id.", valueName: "id")) var key: String
    @Option(help: ArgumentHelp("A device enrolled here that wants the key.", valueName: "id")) var device: String?
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
        try requireKeyID(key)
        if let device { try requireClientID(device) }
        let path = APIPath.adminExplain(key) + (device.map { "?device=\($0)" } ?? "")
        let e = try await withAdmin(data) { try await $0.get(path, as: KeyExplanation.self) }
        if json { return try printJSON(e) }
        for (i, hop) in e.hops.enumerated() {
            let title = i == 0 ? "here" : "\(i) up"
            print("\(title): server \(hop.serverID)")
            if let refusal = hop.refusal {
                print("    did not answer: \(PrintableText.escaped(refusal))")
                continue
            }
            print("    use hierarchy: \(hop.useHierarchy.map { $0 ? "on" : "off" } ?? "?")")
            if hop.held {
                var facts = [
                    "holds it (\(PrintableText.escaped(hop.state ?? "?")), \(PrintableText.escaped(hop.provenance ?? "?")), stored \(formatDate(hop.stored)))"
                ]
                if hop.blocked == true { facts.append("BLOCKED") }
                if let acknowledged = hop.acknowledgedByPrimary {
                    facts.append(acknowledged ? "acknowledged by its primary" : "not yet pushed to its primary")
                }
                print("    key: " + facts.joined(separator: "; "))
            } else {
                print("    key: not held")
            }
            if let primary = hop.primaryServerID {
                print("    primary: \(primary)\(hop.primaryRefuses == true ? " (refused the last exchange: hierarchy_disabled)" : "")")
            }
            if let last = hop.lastLookup { print("    last lookup at its primary: \(PrintableText.escaped(last)) (\(formatDate(hop.lastLookupAt)))") }
        }
        if let d = e.device {
            let who = d.enrolled ? "\(PrintableText.escaped(d.name ?? "?")), \(d.state.map { "\($0)" } ?? "?")" : "not enrolled here"
            print(
                "device \(d.id): \(who); release_policy \(d.releasePolicy): \(d.policyRefusal.map { "refuses: \(PrintableText.escaped($0))" } ?? "allows it")"
            )
        }
        print("verdict: \(PrintableText.escaped(e.verdict))")
    }
}
