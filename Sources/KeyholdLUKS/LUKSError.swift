import CCryptsetup
import Foundation
import KeyholdCore
import Synchronization

/// The one place where libcryptsetup's and libblkid's failures become ``KeyholdError``s: the
/// negative errno they return plus the last message libcryptsetup logged for it.
enum LUKSCall {
    /// libcryptsetup's own log lines (errors only), kept for the next error message instead of
    /// being printed: a person sees one `keyhold: error:` line with a hint, not library chatter.
    static let lastMessage = Mutex<String>("")

    static func installLogCapture() {
        crypt_set_log_callback(
            nil,
            { level, message, _ in
                guard level == CRYPT_LOG_ERROR, let message else { return }
                let text = String(cString: message).trimmingCharacters(in: .whitespacesAndNewlines)
                LUKSCall.lastMessage.withLock { $0 = text }
            }, nil)
        // Keyhold's token type is handled here; libcryptsetup must not look for a plugin for it.
        crypt_token_external_disable()
    }

    /// Returns `rc` when it is not negative; else throws the error for `-rc` while doing `what`.
    @discardableResult
    static func check(_ rc: Int32, _ what: String, _ path: String) throws -> Int32 {
        guard rc < 0 else { return rc }
        throw error(-rc, what, path)
    }

    static func error(_ code: Int32, _ what: String, _ path: String) -> KeyholdError {
        let logged = lastMessage.withLock { m -> String in
            defer { m = "" }
            return m
        }
        let reason = logged.isEmpty ? String(cString: strerror(code)) : logged
        let text = "cannot \(what) \(path): \(reason)"
        switch code {
        case EPERM:
            return KeyholdError(
                .keyMismatch, "the key does not open \(path)'s keyslot (\(what))",
                hint: "the drive was encrypted with another key; check the key id in 'keyhold drive info'")
        case EACCES:
            return KeyholdError(.forbidden, text, hint: "drive operations need root: run with sudo")
        case EBUSY:
            return KeyholdError(.deviceBusy, text, hint: "unmount the drive and close other users of it, then try again")
        case ENOENT:
            return KeyholdError(.ioFailed, text, hint: "check the device path; the drive may have been removed")
        case let c where [ENODEV, ENOTSUP, ENXIO].contains(c) && what.hasPrefix("activate"):
            return KeyholdError(
                .deviceMapperUnavailable, text,
                hint: "this kernel offers no device-mapper (dm-crypt): load it ('modprobe dm-crypt') or unlock the drive on a machine that has it"
            )
        case ENOSPC:
            return KeyholdError(.driveFailed, text, hint: "the device is too small for a LUKS2 header (16 MiB) and data")
        default:
            return KeyholdError(.driveFailed, text, hint: "check the device with 'cryptsetup luksDump \(path)' and the system log")
        }
    }
}
