/// The one error type Keyhold shows to people and sends over the wire.
///
/// Every error has a stable machine-readable ``code`` (it never changes once released, so scripts and
/// the other side of a connection can match on it), a ``message`` saying what went wrong, and a
/// ``hint`` saying what to do next. Messages never contain key material.
public struct KeyholdError: Error, Hashable, Sendable, CustomStringConvertible {
    /// A stable error code, written in `snake_case` on the wire and in `--json` output.
    public struct Code: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
        public let rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        /// The input does not start with the Keyhold file magic.
        public static let notKeyholdFile = Code(rawValue: "not_keyhold_file")
        /// The file's format version is not one this build reads.
        public static let unsupportedVersion = Code(rawValue: "unsupported_version")
        /// A header field has a value the specification does not allow.
        public static let invalidHeader = Code(rawValue: "invalid_header")
        /// The input ended before a complete header or segment.
        public static let truncated = Code(rawValue: "truncated")
        /// A segment failed authentication: wrong key, or the data was changed, truncated, reordered or extended.
        public static let authenticationFailed = Code(rawValue: "authentication_failed")
        /// The key given is not the key the file names.
        public static let keyMismatch = Code(rawValue: "key_mismatch")
        /// A key or key file is malformed.
        public static let invalidKey = Code(rawValue: "invalid_key")
        /// The input is too large for the format (more than 2^32 segments).
        public static let inputTooLarge = Code(rawValue: "input_too_large")
        /// A file-system operation failed.
        public static let ioFailed = Code(rawValue: "io_failed")
        /// The command line asks for something inconsistent.
        public static let usage = Code(rawValue: "usage")
        /// An enrollment token is malformed, unknown, expired, used up or revoked.
        public static let tokenInvalid = Code(rawValue: "token_invalid")
        /// The caller presented no valid client certificate.
        public static let unauthenticated = Code(rawValue: "unauthenticated")
        /// The caller may not do this.
        public static let forbidden = Code(rawValue: "forbidden")
        /// The caller's enrollment was revoked.
        public static let clientRevoked = Code(rawValue: "client_revoked")
        /// No such key (or other object).
        public static let notFound = Code(rawValue: "not_found")
        /// The key id exists with another secret.
        public static let conflict = Code(rawValue: "conflict")
        /// The key is blocked and is never released.
        public static let keyBlocked = Code(rawValue: "key_blocked")
        /// The request is malformed.
        public static let invalidRequest = Code(rawValue: "invalid_request")
        /// The audit record could not be written, so nothing was released.
        public static let auditFailed = Code(rawValue: "audit_failed")
        /// The server could not be reached or did not answer in time.
        public static let unreachable = Code(rawValue: "unreachable")
        /// The server failed unexpectedly.
        public static let internalError = Code(rawValue: "internal")
        /// The server's or the device's configuration is missing or wrong.
        public static let configuration = Code(rawValue: "configuration")
        /// A server's "use hierarchy" option is off, so it neither pushes nor answers its secondaries.
        public static let hierarchyDisabled = Code(rawValue: "hierarchy_disabled")
        /// A hierarchy request came back to a server already on its route.
        public static let hierarchyLoop = Code(rawValue: "hierarchy_loop")
        /// A hierarchy request ran out of hops.
        public static let hierarchyTooDeep = Code(rawValue: "hierarchy_too_deep")
        /// The destination already exists and would be overwritten.
        public static let destinationExists = Code(rawValue: "destination_exists")
        /// libcryptsetup or libblkid failed on a drive (the message carries its words).
        public static let driveFailed = Code(rawValue: "drive_failed")
        /// The drive is mounted, held by another mapping or has data that would be destroyed.
        public static let deviceBusy = Code(rawValue: "device_busy")
        /// The kernel offers no device-mapper (dm-crypt), so a LUKS drive cannot be activated here.
        public static let deviceMapperUnavailable = Code(rawValue: "device_mapper_unavailable")
        /// Replacing the path could leave the original content behind or write somewhere else: it
        /// is a symbolic link, has other hard links, lies in a folder others can write, or changed
        /// while Keyhold worked on it.
        public static let unsafePath = Code(rawValue: "unsafe_path")
        /// The password does not open the (export) file.
        public static let wrongPassword = Code(rawValue: "wrong_password")
    }

    /// The stable error code.
    public var code: Code
    /// What went wrong, in one sentence, without secrets.
    public var message: String
    /// What the person should do next.
    public var hint: String

    /// Creates an error; prefer the static factories of each module, which keep wording consistent.
    public init(_ code: Code, _ message: String, hint: String) {
        self.code = code
        self.message = message
        self.hint = hint
    }

    public var description: String { "\(code): \(message)" }
}
