import Foundation
import KeyholdCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Passwords from a file (`--password-file`) or asked on the terminal without echo.
public enum PasswordInput {
    /// The password in `file` (one trailing line break removed), else asked on /dev/tty —
    /// twice when `confirm` is set, and the two must match.
    public static func read(prompt: String, confirm: Bool, file: String?) throws -> String {
        if let file {
            guard let data = FileManager.default.contents(atPath: file) else {
                throw KeyholdError(.ioFailed, "cannot read the password file \(file)", hint: "check the path and its permissions")
            }
            guard var text = String(data: data, encoding: .utf8) else {
                throw KeyholdError(.usage, "the password file \(file) is not UTF-8 text", hint: "write the password as text on one line")
            }
            if text.hasSuffix("\n") { text.removeLast() }
            if text.hasSuffix("\r") { text.removeLast() }
            return text
        }
        let first = try ask(prompt)
        if confirm {
            let second = try ask("Repeat the password: ")
            guard first == second else {
                throw KeyholdError(.usage, "the two passwords differ", hint: "run the command again and type the same password twice")
            }
        }
        return first
    }

    /// One line read from the terminal with echo off.
    static func ask(_ prompt: String) throws -> String {
        let fd = open("/dev/tty", O_RDWR | O_NOCTTY | O_CLOEXEC)
        guard fd >= 0 else {
            throw KeyholdError(
                .usage, "there is no terminal to ask for the password", hint: "give the password in a file with --password-file FILE (mode 0600)")
        }
        defer { close(fd) }
        _ = prompt.withCString { write(fd, $0, strlen($0)) }
        var saved = termios()
        let isTerminal = tcgetattr(fd, &saved) == 0
        if isTerminal {
            var quiet = saved
            quiet.c_lflag &= ~tcflag_t(ECHO)
            quiet.c_lflag |= tcflag_t(ECHONL)
            tcsetattr(fd, TCSAFLUSH, &quiet)
        }
        defer { if isTerminal { tcsetattr(fd, TCSAFLUSH, &saved) } }
        var bytes: [UInt8] = []
        var byte: UInt8 = 0
        while true {
            let n = Glibc.read(fd, &byte, 1)
            if n < 0, errno == EINTR { continue }
            if n <= 0 || byte == 0x0A { break }
            bytes.append(byte)
        }
        if bytes.last == 0x0D { bytes.removeLast() }
        defer { bytes.withUnsafeMutableBytes { SecretKey.wipe($0) } }
        return String(decoding: bytes, as: UTF8.self)
    }
}
