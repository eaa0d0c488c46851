import CSystemd

/// The daemons' side of systemd's service protocol (`sd_notify(3)`, through libsystemd): `READY=1`
/// once they serve, `WATCHDOG=1` while they live, `RELOADING=1` around a SIGHUP reload and
/// `STOPPING=1` when they stop. Outside systemd (no `NOTIFY_SOCKET`) every call does nothing.
public enum SystemdNotify {
    /// Sends `state` (`KEY=value` lines). Returns whether systemd received it.
    @discardableResult
    public static func send(_ state: String) -> Bool {
        sd_notify(0, state) > 0
    }

    /// Tells systemd the service is up, with a one-line status for `systemctl status`.
    public static func ready(status: String) {
        send("READY=1\nSTATUS=\(status.replacingNewlines)")
    }

    /// The interval systemd expects watchdog pings within (`WatchdogSec=`), or nil when it expects none.
    public static func watchdogInterval() -> Duration? {
        var microseconds: UInt64 = 0
        guard sd_watchdog_enabled(0, &microseconds) > 0, microseconds > 0 else { return nil }
        return .microseconds(Int64(clamping: microseconds))
    }
}

extension String {
    fileprivate var replacingNewlines: String { split(whereSeparator: \.isNewline).joined(separator: " ") }
}
