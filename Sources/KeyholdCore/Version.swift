/// The version of every Keyhold executable and library in this package.
public enum KeyholdVersion {
    /// Semantic version string, shown by `--version` on each executable.
    public static let current = "0.1.0"
}
