/// What a build was made from, written at build time by the BuildStamp plugin
/// (scripts/build-stamp.sh): the commit and its date.
public enum BuildStamp {
    /// The commit, 12 hex digits (with `-dirty` when the tree had changes), or `unknown` outside a git clone.
    public static var commit: String { stampedCommit }
    /// The commit's date (or `SOURCE_DATE_EPOCH`'s), ISO 8601 in UTC, or `unknown`.
    public static var date: String { stampedDate }
}
