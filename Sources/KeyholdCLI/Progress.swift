#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation

/// A one-line progress display on standard error, shown only when standard error is a terminal
/// and the work lasts longer than half a second.
final class ProgressLine {
    private let label: String
    private let total: Int?
    private let enabled: Bool
    private let start = DispatchTime.now().uptimeNanoseconds
    private var lastDraw: UInt64 = 0
    private var drawn = false

    init(_ label: String, total: Int?) {
        self.label = label
        self.total = total
        self.enabled = isatty(STDERR_FILENO) == 1 && ProcessInfo.processInfo.environment["KEYHOLD_NO_PROGRESS"] == nil
    }

    /// Reports `done` bytes; redraws at most ten times a second.
    func update(_ done: Int) {
        guard enabled else { return }
        let now = DispatchTime.now().uptimeNanoseconds
        guard now - start > 500_000_000, now - lastDraw > 100_000_000 else { return }
        lastDraw = now
        let seconds = Double(now - start) / 1e9
        let rate = Self.bytes(Int(Double(done) / max(seconds, 0.001))) + "/s"
        var line = "\(label) \(Self.bytes(done))"
        if let total, total > 0 {
            line = "\(label) \(Int(Double(done) * 100 / Double(total)))% \(Self.bytes(done)) of \(Self.bytes(total))"
        }
        FileHandle.standardError.write(Data("\r\u{1B}[K\(line)  \(rate)".utf8))
        drawn = true
    }

    /// Clears the line.
    func finish() {
        if drawn { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }
    }

    /// `1.5 GiB`-style sizes.
    static func bytes(_ n: Int) -> String {
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
