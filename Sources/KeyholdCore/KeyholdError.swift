/// The one error type Keyhold shows to people and sends over the wire.
///
/// Every error has a stable machine-readable ``code`` (it never changes once released, so scripts and
/// the other side of a connection can match on it), a ``message`` saying what went wrong, and a
/// ``hint`` saying what to do next. Messages never contain key material.
public struct KeyholdError: Error, Hashable, Sendable, CustomStringConvertible {
    /// A stable error code, written in `snake_case` on the wire and in `--json` output. The list
    /// is closed: every code has an HTTP status in `ErrorStatus` (KeyholdProtocol) and a test
    /// holds the table to it.
    public enum Code: String, Hashable, Sendable, CaseIterable, Codable, CustomStringConvertible {
        /// The input does not start with the Keyhold file magic.
        case notKeyholdFile = "not_keyhold_file"
        /// The file's format version is not one this build reads.
        case unsupportedVersion = "unsupported_version"
        /// A header field has a value the specification does not allow.
        case invalidHeader = "invalid_header"
        /// The input ended before a complete header or segment.
        case truncated = "truncated"
        /// A segment failed authentication: wrong key, or the data was changed, truncated, reordered or extended.
        case authenticationFailed = "authentication_failed"
        /// The key given is not the key the file names.
        case keyMismatch = "key_mismatch"
        /// A key or key file is malformed.
        case invalidKey = "invalid_key"
        /// The input is too large for the format (more than 2^32 segments).
        case inputTooLarge = "input_too_large"
        /// A file-system operation failed.
        case ioFailed = "io_failed"
        /// The command line asks for something inconsistent.
        case usage = "usage"
        /// An enrollment token is malformed, unknown, expired, used up or revoked.
        case tokenInvalid = "token_invalid"
        /// The caller presented no valid client certificate.
        case unauthenticated = "unauthenticated"
        /// The caller may not do this.
        case forbidden = "forbidden"
        /// The caller's enrollment was revoked.
        case clientRevoked = "client_revoked"
        /// The caller (a device) moved to another server with `keyhold reassign`.
        case clientMoved = "client_moved"
        /// No such key (or other object).
        case notFound = "not_found"
        /// The key id exists with another secret.
        case conflict = "conflict"
        /// The key is blocked and is never released.
        case keyBlocked = "key_blocked"
        /// The key was destroyed (its device was deleted and the retention passed, or an
        /// administrator destroyed it): its record is kept, its secret is gone for good.
        case keyDestroyed = "key_destroyed"
        /// The request is malformed.
        case invalidRequest = "invalid_request"
        /// The audit record could not be written, so nothing was released.
        case auditFailed = "audit_failed"
        /// The server could not be reached or did not answer in time.
        case unreachable = "unreachable"
        /// The server failed unexpectedly.
        case internalError = "internal"
        /// The server's or the device's configuration is missing or wrong.
        case configuration = "configuration"
        /// A server's "use hierarchy" option is off, so it neither pushes nor answers its secondaries.
        case hierarchyDisabled = "hierarchy_disabled"
        /// A hierarchy request came back to a server already on its route.
        case hierarchyLoop = "hierarchy_loop"
        /// A hierarchy request ran out of hops.
        case hierarchyTooDeep = "hierarchy_too_deep"
        /// The destination already exists and would be overwritten.
        case destinationExists = "destination_exists"
        /// libcryptsetup or libblkid failed on a drive (the message carries its words).
        case driveFailed = "drive_failed"
        /// The drive is mounted, held by another mapping or has data that would be destroyed.
        case deviceBusy = "device_busy"
        /// A drive's escrowed key opens none of its keyslots: they were changed outside Keyhold.
        case escrowDrift = "escrow_drift"
        /// The kernel offers no device-mapper (dm-crypt), so a LUKS drive cannot be activated here.
        case deviceMapperUnavailable = "device_mapper_unavailable"
        /// Replacing the path could leave the original content behind or write somewhere else: it
        /// is a symbolic link, has other hard links, lies in a folder others can write, or changed
        /// while Keyhold worked on it.
        case unsafePath = "unsafe_path"
        /// The password does not open the (export) file.
        case wrongPassword = "wrong_password"
        /// The caller sent more requests than its budget allows; it may try again later (the
        /// answer's `Retry-After` says when).
        case rateLimited = "rate_limited"
        /// The key may go to this device only once an administrator approves the request
        /// (`release_policy = approval`); the request is queued, and asking again after the
        /// approval releases it.
        case pendingApproval = "pending_approval"
        /// An offline request or response code is mistyped, damaged, expired or not one this
        /// side can use (docs/spec/offline-access.md).
        case invalidCode = "invalid_code"
        /// This client's certificate expired before it was renewed: the client must enroll again.
        case certificateExpired = "certificate_expired"

        /// The code as written on the wire.
        public var description: String { rawValue }
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

    /// `code: message`, for logs (never the hint, never a secret).
    public var description: String { "\(code): \(message)" }
}
