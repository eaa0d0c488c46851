import KeyholdCore

/// A `host:port` address as the configuration and the tokens write it: `127.0.0.1:8443`,
/// `[::1]:8443`, `keys.example.org:8443`; port 0 asks the system for a free port.
public struct HostPort: Sendable, Equatable, CustomStringConvertible {
    /// The host name or address (without brackets).
    public var host: String
    /// The port, 0…65535.
    public var port: Int

    /// Parses `text`; throws `configuration` with an example for anything else.
    public init(_ text: String) throws {
        var host = text
        var portText = ""
        if text.hasPrefix("["), let close = text.firstIndex(of: "]") {
            host = String(text[text.index(after: text.startIndex)..<close])
            portText = String(text[close...].dropFirst(2))
        } else if let colon = text.lastIndex(of: ":") {
            host = String(text[..<colon])
            portText = String(text[text.index(after: colon)...])
        }
        guard let port = Int(portText), (0...65535).contains(port), !host.isEmpty, !host.contains(" ") else {
            throw KeyholdError(.configuration, "'\(text)' is not host:port", hint: "write it like 127.0.0.1:8443 or [::1]:8443")
        }
        self.host = host
        self.port = port
    }

    /// `host:port`, with brackets around an IPv6 address.
    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}
