import ArgumentParser
import Foundation
import KeyholdClient
import KeyholdCore
import KeyholdProtocol

/// `keyhold-server hierarchy tree`: this server, its link to its primary and its secondaries.
struct HierarchyTreeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tree", abstract: "Show the hierarchy as this server sees it: its primary above, its secondaries below.",
        discussion: """
            For the primary: the option at this end, the push cursor, pending keys and the lag (age of the oldest \
            key not yet acknowledged), the last push and whether the primary refuses. For each secondary: its last \
            push (kept across restarts), and since this server started the pending keys and lag it reported, the keys \
            it pushed and its last refused push. A server sees one level each way: run it on each server of a longer chain.
            Example:
              keyhold-server hierarchy tree --data-dir /var/lib/keyhold-server
            """
    )
    @OptionGroup var data: DataDirOption
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
        let tree = try await withAdmin(data) { try await $0.get(APIPath.adminHierarchyTree, as: HierarchyTree.self) }
        if json { return try printJSON(tree) }
        print(TreeText.render(tree, now: Date()))
    }
}

/// The text of `hierarchy tree` and `secondary list`.
enum TreeText {
    static func render(_ tree: HierarchyTree, now: Date) -> String {
        let up = tree.upward
        var lines = ["server \(tree.serverID) (use hierarchy: \(up.useHierarchy ? "on" : "off"))"]
        if let primary = up.primaryServerID {
            let refuses = up.primaryRefuses ? ", REFUSES (hierarchy_disabled there)" : ""
            lines.append("├── primary \(primary) at \(up.primaryAddress ?? "?")\(refuses)")
            lines.append(
                "│     pushed up to sequence \(up.pushCursor); \(up.pending) key(s) pending, lag \(seconds(tree.lagSeconds)); last push \(ago(up.lastPush, now)) (\(up.lastPushResult.map(PrintableText.escaped) ?? "none yet"))"
            )
        } else {
            lines.append("├── primary: none")
        }
        if tree.secondaries.isEmpty {
            lines.append("└── secondaries: none")
        } else {
            lines.append("└── secondaries: \(tree.secondaries.count)")
            for (i, s) in tree.secondaries.enumerated() {
                let last = i == tree.secondaries.count - 1
                lines.append("    \(last ? "└──" : "├──") \(s.id) \(PrintableText.escaped(s.name)) [\(s.state)]")
                for detail in details(s, now: now) { lines.append("    \(last ? " " : "│")     \(detail)") }
            }
        }
        return lines.joined(separator: "\n")
    }

    static func details(_ s: SecondaryNode, now: Date) -> [String] {
        var out = [
            "last push \(ago(s.lastPush, now))\(s.version.map { ", keyhold \(PrintableText.escaped($0))" } ?? "")\(s.keyCount.map { ", \($0) key(s)" } ?? "")"
        ]
        if let received = s.keysReceived {
            let pending = s.pending.map { "reported \($0) key(s) pending, lag \(seconds(s.lagSeconds ?? 0))" } ?? "no report (an older secondary)"
            out.append(
                "\(pending); \(received) key(s) received since this server started (last \(ago(s.lastKeys, now)))"
            )
        } else {
            out.append("no push since this server started")
        }
        if let refusal = s.lastRefusal { out.append("last refusal: \(refusal) \(ago(s.lastRefusalAt, now))") }
        return out
    }

    /// `12 s ago`, `3 min ago`, or `never`.
    static func ago(_ date: Date?, _ now: Date) -> String {
        guard let date else { return "never" }
        let s = max(0, now.timeIntervalSince(date))
        let text = s < 120 ? "\(Int(s)) s" : s < 7200 ? "\(Int(s / 60)) min" : s < 172_800 ? "\(Int(s / 3600)) h" : "\(Int(s / 86400)) d"
        return "\(text) ago (\(formatDate(date)))"
    }

    static func seconds(_ value: Double) -> String { value < 10 ? String(format: "%.1f s", value) : "\(Int(value)) s" }
}
