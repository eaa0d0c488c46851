/// The exit status of every Keyhold executable, following `sysexits.h` so that a script can tell
/// "try again later" from "this will never work" from "fix your input" (docs/operations.md,
/// "Exit status"). The values never change once released.
public enum ExitStatus: Int32, Sendable, CaseIterable, CustomStringConvertible {
    /// It worked.
    case success = 0
    /// A failure with no class of its own (an unexpected error from below Keyhold).
    case failure = 1
    /// `EX_USAGE`: the command line is wrong.
    case usage = 64
    /// `EX_DATAERR`: the input is wrong — a damaged file, a wrong password or key, a mistyped code.
    case dataError = 65
    /// `EX_NOINPUT`: what was asked for does not exist (or no longer does: a destroyed key).
    case noInput = 66
    /// `EX_UNAVAILABLE`: a service or facility this needs is switched off or missing here.
    case unavailable = 69
    /// `EX_SOFTWARE`: Keyhold or its server failed internally; the log says more.
    case software = 70
    /// `EX_CANTCREAT`: the output cannot be created safely (it exists, or the path is unsafe).
    case cannotCreate = 73
    /// `EX_IOERR`: reading or writing a file or a drive failed.
    case ioError = 74
    /// `EX_TEMPFAIL`: try again later — unreachable, rate limited, busy, waiting for approval.
    case tryAgain = 75
    /// `EX_NOPERM`: not allowed — no or a revoked, moved or expired identity, a blocked key, a bad token.
    case noPermission = 77
    /// `EX_CONFIG`: the configuration (this one's, or the hierarchy's) is missing or wrong.
    case configuration = 78

    /// The name used in the documentation and in `--json` errors (`data_error`, `try_again`, …).
    public var description: String {
        switch self {
        case .success: "success"
        case .failure: "failure"
        case .usage: "usage"
        case .dataError: "data_error"
        case .noInput: "no_input"
        case .unavailable: "unavailable"
        case .software: "software"
        case .cannotCreate: "cannot_create"
        case .ioError: "io_error"
        case .tryAgain: "try_again"
        case .noPermission: "no_permission"
        case .configuration: "configuration"
        }
    }
}

extension KeyholdError.Code {
    /// The exit status a command ends with when it fails with this code.
    public var exitStatus: ExitStatus {
        switch self {
        case .usage: .usage
        case .notKeyholdFile, .unsupportedVersion, .invalidHeader, .truncated, .authenticationFailed, .keyMismatch,
            .invalidKey, .inputTooLarge, .conflict, .invalidRequest, .escrowDrift, .wrongPassword, .invalidCode:
            .dataError
        case .notFound, .keyDestroyed: .noInput
        case .hierarchyDisabled, .deviceMapperUnavailable: .unavailable
        case .internalError: .software
        case .destinationExists, .unsafePath: .cannotCreate
        case .ioFailed, .driveFailed: .ioError
        case .unreachable, .rateLimited, .pendingApproval, .auditFailed, .deviceBusy: .tryAgain
        case .tokenInvalid, .unauthenticated, .forbidden, .clientRevoked, .clientMoved, .keyBlocked, .certificateExpired:
            .noPermission
        case .configuration, .hierarchyLoop, .hierarchyTooDeep: .configuration
        }
    }
}

extension KeyholdError {
    /// The exit status a command ends with when it fails with this error.
    public var exitStatus: ExitStatus { code.exitStatus }
}
