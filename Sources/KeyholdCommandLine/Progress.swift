import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A one-line progress display on standard error, shown only when standard error is a terminal
/// and the work lasts longer than half a second.
public final class ProgressLine: Sendable {
    private let label: String
    private let total: Int?
    private let enabled: Bool
    private let start = DispatchTime.now().uptimeNanoseconds
    /// When it last drew, and whether anything is on the line (updates may come from an upload task).
    private let drawState = Mutex<(lastDraw: UInt64, drawn: Bool)>((0, false))

    /// A progress line labelled `label` (of `total` bytes, when known); shown only on a terminal.
    public init(_ label: String, total: Int?) {
        self.label = label
        self.total = total
        self.enabled = isatty(STDERR_FILENO) == 1 && ProcessInfo.processInfo.environment["KEYHOLD_NO_PROGRESS"] == nil
    }

    /// Whether `update` reported the whole total.
    public var isComplete: Bool { doneState.withLock { $0 } >= (total ?? .max) }
    private let doneState = Mutex(0)

    /// Reports `done` bytes; redraws at most ten times a second.
    public func update(_ done: Int) {
        doneState.withLock { $0 = done }
        guard enabled else { return }
        let now = DispatchTime.now().uptimeNanoseconds
        guard now - start > 500_000_000 else { return }
        let due = drawState.withLock { state in
            guard now - state.lastDraw > 100_000_000 else { return false }
            state = (now, true)
            return true
        }
        guard due else { return }
        let seconds = Double(now - start) / 1e9
        let rate = Self.bytes(Int(Double(done) / max(seconds, 0.001))) + "/s"
        var line = "\(label) \(Self.bytes(done))"
        if let total, total > 0 {
            line = "\(label) \(Int(Double(done) * 100 / Double(total)))% \(Self.bytes(done)) of \(Self.bytes(total))"
        }
        FileHandle.standardError.write(Data("\r\u{1B}[K\(line)  \(rate)".utf8))
    }

    /// Shows `text` instead of a byte count (for waiting on work done elsewhere).
    public func note(_ text: String) {
        guard enabled else { return }
        drawState.withLock { $0.drawn = true }
        FileHandle.standardError.write(Data("\r\u{1B}[K\(label) \(text)".utf8))
    }

    /// Clears the line.
    public func finish() {
        if drawState.withLock({ $0.drawn }) { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }
    }

    /// `1.5 GiB`-style sizes.
    public static func bytes(_ n: Int) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var value = Double(n)
        var unit = 0
        while value >= 1024, unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        return unit == 0 ? "\(n) B" : String(format: "%.1f", value) + " " + units[unit]
    }
}
