import Foundation
public import KeyholdCore

extension KeyMaterial {
    /// The bytes ``WireFormat/encoder()`` writes for this key, written directly: releasing a key
    /// is the server's hot path, and the generic encoder took a tenth of its CPU there. The secret
    /// goes from the key into the output as base64 bytes (no string of it is made). Nil for what
    /// this writer leaves to the encoder (a creation date outside 1970…9999). The protocol tests
    /// check that both agree byte for byte.
    public func wireJSON() -> [UInt8]? {
        let seconds = record.created.timeIntervalSince1970
        guard seconds >= 0, seconds < 253_402_300_800 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(320 + record.label.utf8.count)
        // Keys in sorted order, as the encoder's .sortedKeys writes them.
        out += Array(#"{"record":{"created":""#.utf8)
        Self.appendDate(Int64(seconds.rounded(.down)), to: &out)
        out += Array(#"","id":""#.utf8)
        out += Array(record.id.description.utf8)
        out += Array(#"","kind":"#.utf8)
        Self.appendString(record.kind.rawValue, to: &out)
        out += Array(#","label":"#.utf8)
        Self.appendString(record.label, to: &out)
        out += Array(#","origin_device_id":""#.utf8)
        out += Array(record.originDeviceID.description.utf8)
        out += Array(#"","origin_server_id":""#.utf8)
        out += Array(record.originServerID.description.utf8)
        out += Array(#"","state":"#.utf8)
        Self.appendString(record.state.rawValue, to: &out)
        out += Array(#"},"secret":""#.utf8)
        var raw = secret.withUnsafeBytes { Data($0) }
        var base64 = raw.base64EncodedData()
        out += base64
        raw.withUnsafeMutableBytes { SecretKey.wipe($0) }
        base64.withUnsafeMutableBytes { SecretKey.wipe($0) }
        out += Array(#""}"#.utf8)
        return out
    }

    /// A JSON string as the encoder writes it (slashes not escaped).
    private static func appendString(_ s: String, to out: inout [UInt8]) {
        let hex = Array("0123456789abcdef".utf8)
        out.append(UInt8(ascii: "\""))
        for b in s.utf8 {
            switch b {
            case UInt8(ascii: "\""): out += [UInt8(ascii: "\\"), UInt8(ascii: "\"")]
            case UInt8(ascii: "\\"): out += [UInt8(ascii: "\\"), UInt8(ascii: "\\")]
            case 0x08: out += [UInt8(ascii: "\\"), UInt8(ascii: "b")]
            case 0x0C: out += [UInt8(ascii: "\\"), UInt8(ascii: "f")]
            case 0x0A: out += [UInt8(ascii: "\\"), UInt8(ascii: "n")]
            case 0x0D: out += [UInt8(ascii: "\\"), UInt8(ascii: "r")]
            case 0x09: out += [UInt8(ascii: "\\"), UInt8(ascii: "t")]
            case 0..<0x20: out += Array("\\u00".utf8) + [hex[Int(b >> 4)], hex[Int(b & 0xF)]]
            default: out.append(b)
            }
        }
        out.append(UInt8(ascii: "\""))
    }

    /// `yyyy-MM-ddTHH:mm:ssZ` in UTC for whole seconds since 1970 (proleptic Gregorian calendar).
    private static func appendDate(_ t: Int64, to out: inout [UInt8]) {
        let days = t / 86_400
        let secondOfDay = t % 86_400
        // Days to civil date (H. Hinnant's algorithm), for days >= 0.
        let z = days + 719_468
        let era = z / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let day = doy - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        let year = yoe + era * 400 + (month <= 2 ? 1 : 0)
        func digits(_ v: Int64, _ width: Int) {
            var buffer = [UInt8](repeating: UInt8(ascii: "0"), count: width)
            var v = v
            for i in stride(from: width - 1, through: 0, by: -1) {
                buffer[i] = UInt8(ascii: "0") + UInt8(v % 10)
                v /= 10
            }
            out += buffer
        }
        digits(year, 4)
        out.append(UInt8(ascii: "-"))
        digits(month, 2)
        out.append(UInt8(ascii: "-"))
        digits(day, 2)
        out.append(UInt8(ascii: "T"))
        digits(secondOfDay / 3600, 2)
        out.append(UInt8(ascii: ":"))
        digits(secondOfDay % 3600 / 60, 2)
        out.append(UInt8(ascii: ":"))
        digits(secondOfDay % 60, 2)
        out.append(UInt8(ascii: "Z"))
    }
}
