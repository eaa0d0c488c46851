public import Foundation

/// Where things are when tests run.
public enum Paths {
    /// The repository root (found from this file's path).
    public static let repository: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// The folder of this package's built executables: `$KEYHOLD_BIN_DIR`, else the folder of the
    /// running test bundle (SwiftPM puts products and the test bundle side by side).
    public static var binaries: URL {
        if let dir = ProcessInfo.processInfo.environment["KEYHOLD_BIN_DIR"] { return URL(fileURLWithPath: dir) }
        var dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        // On Darwin the runner lives inside a .xctest bundle.
        while dir.path.contains(".xctest") { dir = dir.deletingLastPathComponent() }
        return dir
    }

    /// A built executable of this package.
    public static func executable(_ name: String) -> URL { binaries.appendingPathComponent(name) }

    /// A new empty folder under the system's temporary folder; the caller removes it.
    public static func temporaryFolder(_ label: String = "test") throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("keyhold-\(label)-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }
}
