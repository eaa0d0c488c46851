import Foundation
import KeyholdCore
import KeyholdProtocol
import Synchronization

/// When a device has been given many distinct keys in a short time — what a stolen device
/// certificate harvesting keys looks like — the server says so (docs/threat-model.md).
public struct ReleaseAlert: Sendable, Equatable {
    /// Distinct keys released to one device within ``window`` that raise the alert.
    public var keys: Int
    /// The window the keys are counted in.
    public var window: Duration

    /// An alert at `keys` distinct keys within `window`.
    public init(keys: Int, window: Duration) {
        self.keys = keys
        self.window = window
    }

    /// Far above what one person opens in an hour, far below a harvest of the repository.
    public static let standard = ReleaseAlert(keys: 500, window: .seconds(3600))
}

/// Distinct keys released per device in fixed windows; answers true once per window, when the
/// count reaches the threshold. Memory is bounded by the threshold per device.
final class ReleaseWatch: Sendable {
    private struct Tally {
        var started: ContinuousClock.Instant
        var keys: Set<KeyID> = []
        var alerted = false
    }

    let alert: ReleaseAlert
    private let tallies = Mutex<[ClientID: Tally]>([:])

    init(_ alert: ReleaseAlert) { self.alert = alert }

    /// Notes that `key` went to `client`; true when this release crossed the threshold.
    func released(_ key: KeyID, to client: ClientID, now: ContinuousClock.Instant = .now) -> Bool {
        tallies.withLock { tallies in
            var tally = tallies[client] ?? Tally(started: now)
            if now - tally.started >= alert.window { tally = Tally(started: now) }
            defer { tallies[client] = tally }
            guard !tally.alerted else { return false }
            tally.keys.insert(key)
            guard tally.keys.count >= alert.keys else { return false }
            tally.alerted = true
            tally.keys = []  // nothing more to count in this window
            return true
        }
    }
}

/// Which devices may receive a key (`release_policy` in `config.toml`; docs/threat-model.md).
public enum ReleasePolicy: String, Sendable, CaseIterable {
    /// Any active device of this server may receive any key it names (the seed's cross-domain
    /// behaviour, and the hierarchy's purpose).
    case any
    /// Only keys escrowed at this server (their origin server is this one).
    case sameServer = "same_server"
    /// Only the device that escrowed the key.
    case originDevice = "origin_device"
    /// The device that escrowed the key receives it; any other device's request waits for an
    /// administrator's approval (`keyhold-server release approve`).
    case approval

    /// Why `record` may not go to the device `client` of server `here`, or nil when it may.
    func refusal(of record: KeyRecord, to client: ClientID, here: ServerID) -> String? {
        switch self {
        case .any:
            return nil
        case .sameServer:
            return record.originServerID == here ? nil : "it was escrowed at server \(record.originServerID), not here"
        case .originDevice, .approval:
            let device = DeviceID(enrollment: client)
            return record.originDeviceID == device ? nil : "it belongs to device \(record.originDeviceID), not to this one"
        }
    }
}
