import Foundation
import KeyholdCore
import KeyholdProtocol

/// What this server, as a primary, saw of each secondary since it started: its last report
/// (pending keys, lag), the keys it pushed, its last refused push. Kept in memory: the durable
/// part of a push (its time, the secondary's version and key count) goes to the repository as
/// the secondary's last contact, like a device's heartbeat.
actor SecondaryActivity {
    struct Entry {
        var report: SecondaryReport?
        var keysReceived = 0
        var lastKeys: Date?
        var lastRefusal: String?
        var lastRefusalAt: Date?
    }

    private var entries: [ClientID: Entry] = [:]

    /// A push from `id` carrying `keys` keys (and maybe its report) was stored.
    func received(from id: ClientID, keys: Int, report: SecondaryReport?, at time: Date) {
        var entry = entries[id] ?? Entry()
        if let report { entry.report = report }
        if keys > 0 {
            entry.keysReceived += keys
            entry.lastKeys = time
        }
        entries[id] = entry
    }

    /// A push from `id` was refused with `code`.
    func refused(_ id: ClientID, code: KeyholdError.Code, at time: Date) {
        var entry = entries[id] ?? Entry()
        entry.lastRefusal = code.rawValue
        entry.lastRefusalAt = time
        entries[id] = entry
    }

    /// What is known of `id` (nil when it did not push since this server started).
    func entry(_ id: ClientID) -> Entry? { entries[id] }
}
