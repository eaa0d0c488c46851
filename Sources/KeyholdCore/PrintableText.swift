/// Text that came from a client (an enrollment name, a key label, an audit detail) on its way to
/// a person: checked when it enters the system, escaped wherever it is shown, so that a newline or
/// a control character cannot forge an extra line of `keyhold-server audit` or of a log.
public enum PrintableText {
    /// Whether `text` holds no control or format characters (C0, C1, DEL, line and paragraph
    /// separators, bidirectional overrides…) and at most `limit` characters.
    public static func isClean(_ text: String, limit: Int) -> Bool {
        text.count <= limit && text.unicodeScalars.allSatisfy { !isUnsafe($0) }
    }

    /// `text` with every control or format character written as `\n`, `\t` or `\u{…}`, and
    /// backslashes doubled, so the result is one line that shows exactly what was there.
    public static func escaped(_ text: String) -> String {
        guard text.unicodeScalars.contains(where: { isUnsafe($0) || $0 == "\\" }) else { return text }
        var out = ""
        out.reserveCapacity(text.utf8.count + 8)
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if isUnsafe(scalar) {
                    out += "\\u{" + String(scalar.value, radix: 16) + "}"
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out
    }

    private static func isUnsafe(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.properties.generalCategory {
        case .control, .format, .lineSeparator, .paragraphSeparator, .surrogate, .privateUse, .unassigned: return true
        default: return false
        }
    }
}
