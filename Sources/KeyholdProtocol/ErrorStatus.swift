public import KeyholdCore

/// The HTTP status of every error code (docs/spec/protocol.md §5): one exhaustive table, used by
/// the server for every error answer and held to the spec by a test.
public enum ErrorStatus {
    /// The status an error with `code` is answered with.
    public static func httpStatus(for code: KeyholdError.Code) -> Int {
        switch code {
        case .unauthenticated, .tokenInvalid, .certificateExpired: return 401
        case .forbidden, .clientRevoked, .clientMoved, .keyBlocked, .hierarchyDisabled: return 403
        case .notFound: return 404
        // The key existed and is gone for good: asking again never helps.
        case .keyDestroyed: return 410
        case .conflict, .hierarchyLoop, .hierarchyTooDeep, .destinationExists: return 409
        case .invalidRequest, .invalidKey, .usage, .keyMismatch, .unsafePath, .invalidCode: return 400
        case .inputTooLarge: return 413
        case .rateLimited: return 429
        // Not a failure: the request is queued for an administrator (202 Accepted, with the
        // error body saying so).
        case .pendingApproval: return 202
        // An uploaded export file that does not open or is damaged.
        case .wrongPassword, .truncated, .authenticationFailed, .invalidHeader, .unsupportedVersion, .notKeyholdFile: return 422
        case .auditFailed, .unreachable: return 503
        case .internalError, .configuration, .ioFailed, .driveFailed, .deviceBusy, .deviceMapperUnavailable, .escrowDrift: return 500
        }
    }
}
