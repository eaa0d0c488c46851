#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Host names as a TLS certificate's subject alternative names carry them (RFC 1123 §2.1): at
/// most 253 characters of dot-separated labels, each 1 to 63 letters, digits and hyphens, not
/// starting or ending with a hyphen; or an IPv4 or IPv6 address.
public enum HostName {
    /// Whether `text` is a host name or an IP address.
    public static func isValid(_ text: String) -> Bool {
        if isIPAddress(text) { return true }
        guard !text.isEmpty, text.utf8.count <= 253 else { return false }
        let labels = text.split(separator: ".", omittingEmptySubsequences: false)
        return labels.allSatisfy { label in
            guard (1...63).contains(label.utf8.count), label.first != "-", label.last != "-" else { return false }
            return label.unicodeScalars.allSatisfy { $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || $0 == "-") }
        }
    }

    /// Whether `text` is an IPv4 address in dotted-quad form or an IPv6 address (as `inet_pton` reads them).
    public static func isIPAddress(_ text: String) -> Bool {
        var v4 = in_addr()
        var v6 = in6_addr()
        return inet_pton(AF_INET, text, &v4) == 1 || inet_pton(AF_INET6, text, &v6) == 1
    }
}
