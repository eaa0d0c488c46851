import KeyholdSystem
public import Logging
public import ServiceLifecycle

/// Pings systemd's watchdog from the service group at half the interval it asked for, and says
/// `STOPPING=1` when the group shuts down gracefully. The ping comes from a task of the same
/// concurrency pool the requests run on, so a daemon whose pool is wedged stops pinging and
/// systemd restarts it (`Restart=on-failure`); outside systemd it only waits for the shutdown.
public struct SystemdNotifier: Service {
    let logger: Logger

    /// A notifier logging to `logger`.
    public init(logger: Logger) { self.logger = logger }

    /// Pings until graceful shutdown.
    public func run() async throws {
        if let interval = SystemdNotify.watchdogInterval() {
            logger.debug("pinging systemd's watchdog", metadata: ["interval": "\(interval)"])
            try? await cancelWhenGracefulShutdown {
                while !Task.isCancelled {
                    SystemdNotify.send("WATCHDOG=1")
                    try await Task.sleep(for: interval / 2)
                }
            }
        } else {
            try? await gracefulShutdown()
        }
        SystemdNotify.send("STOPPING=1")
    }
}
