import Foundation
import KeyholdCore
public import KeyholdProtocol
import TOMLKit

/// A TOML configuration file read strictly (the server's `config.toml`, the agent's
/// `agent.toml`): the syntax is TOMLKit's (toml++), which also refuses a key defined twice, with
/// the line; every value is then read by a typed accessor that names the file and the key when
/// the type or the value is wrong; and ``finish()`` refuses every key nothing asked for, with the
/// nearest known key as a hint. Nothing is silently ignored.
public final class ConfigFile {
    /// The file's path, for messages.
    public let path: String
    private let table: TOMLTable
    private var known: [String] = []

    /// Parses `text` as the contents of `path`.
    /// - Throws: `configuration` naming the file, the line and column, and what toml++ found.
    public init(path: String, text: String) throws {
        self.path = path
        do {
            table = try TOMLTable(string: text)
        } catch let error as TOMLParseError {
            let at = error.source.begin
            throw KeyholdError(
                .configuration, "\(path):\(at.line):\(at.column): \(error.description)",
                hint: "fix that line (TOML: key = \"text\", key = 123, key = true; each key once)"
            )
        }
    }

    /// Reads and parses the file at `path`.
    /// - Throws: `configuration` when it cannot be read or parsed.
    public convenience init(path: String) throws {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw KeyholdError(.configuration, "cannot read \(path)", hint: "check that the file exists and that this user may read it")
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw KeyholdError(.configuration, "\(path) is not UTF-8 text", hint: "write the file as UTF-8")
        }
        try self.init(path: path, text: text)
    }

    /// The string at `key`, or nil when absent.
    public func string(_ key: String) throws -> String? {
        guard let value = try value(key, expecting: "a string in double quotes") else { return nil }
        guard let text = value.string else { throw wrongType(key, value, expected: "a string in double quotes") }
        return text
    }

    /// The integer at `key` (within `range`), or nil when absent.
    public func integer(_ key: String, in range: ClosedRange<Int>) throws -> Int? {
        guard let value = try value(key, expecting: "an integer") else { return nil }
        guard let number = value.int else { throw wrongType(key, value, expected: "an integer") }
        guard range.contains(number) else {
            throw KeyholdError(
                .configuration, "\(path): \(key) = \(number) is out of range",
                hint: "give \(key) a value from \(range.lowerBound) to \(range.upperBound)"
            )
        }
        return number
    }

    /// The number at `key` — an integer or a float — within `range`, or nil when absent.
    public func number(_ key: String, in range: ClosedRange<Double>) throws -> Double? {
        guard let value = try value(key, expecting: "a number") else { return nil }
        guard let number = value.int.map(Double.init) ?? value.double else { throw wrongType(key, value, expected: "a number") }
        guard range.contains(number) else {
            throw KeyholdError(
                .configuration, "\(path): \(key) = \(number) is out of range",
                hint: "give \(key) a value from \(range.lowerBound) to \(range.upperBound)"
            )
        }
        return number
    }

    /// The boolean at `key`, or nil when absent.
    public func boolean(_ key: String) throws -> Bool? {
        guard let value = try value(key, expecting: "true or false") else { return nil }
        guard let flag = value.bool else { throw wrongType(key, value, expected: "true or false") }
        return flag
    }

    /// The `host:port` at `key`, or nil when absent.
    public func address(_ key: String) throws -> HostPort? {
        guard let text = try string(key) else { return nil }
        do {
            return try HostPort(text)
        } catch {
            throw KeyholdError(
                .configuration, "\(path): \(key) = \"\(text)\" is not host:port", hint: "write it like \(key) = \"127.0.0.1:8443\" or \"[::1]:8443\"")
        }
    }

    /// One of `choices` at `key`, or nil when absent.
    public func choice(_ key: String, of choices: [String]) throws -> String? {
        guard let text = try string(key) else { return nil }
        guard choices.contains(text) else {
            throw KeyholdError(
                .configuration, "\(path): \(key) = \"\(text)\" is not one of \(choices.joined(separator: ", "))",
                hint: "write one of them, for example \(key) = \"\(choices[0])\""
            )
        }
        return text
    }

    /// The value at `key`, or a `configuration` error naming it when it is missing.
    public func require<T>(_ value: T?, _ key: String, hint: String) throws -> T {
        guard let value else { throw KeyholdError(.configuration, "\(path): \(key) is missing", hint: hint) }
        return value
    }

    /// Refuses every key that no accessor asked for: a misspelt key is an error, not a default.
    public func finish() throws {
        for key in table.keys where !known.contains(key) {
            let near = known.min { Self.distance($0, key) < Self.distance($1, key) }
            let suggestion = near.flatMap { Self.distance($0, key) <= max(2, key.count / 3) ? "did you mean '\($0)'? " : nil } ?? ""
            throw KeyholdError(
                .configuration, "\(path): unknown key '\(key)'",
                hint: "\(suggestion)the keys are: \(known.sorted().joined(separator: ", ")) (docs/operations.md lists them)"
            )
        }
    }

    private func value(_ key: String, expecting: String) throws -> (any TOMLValueConvertible)? {
        guard !known.contains(key) else { return table[key] }
        known.append(key)
        return table[key]
    }

    private func wrongType(_ key: String, _ value: any TOMLValueConvertible, expected: String) -> KeyholdError {
        KeyholdError(
            .configuration, "\(path): \(key) must be \(expected), not \(Self.article(value.type)) \(value.type)",
            hint: "write it like \(key) = \(Self.example(expected))")
    }

    private static func article(_ type: TOMLType) -> String {
        "aeiou".contains(type.description.first ?? "x") ? "an" : "a"
    }

    private static func example(_ expected: String) -> String {
        switch expected {
        case "an integer", "a number": return "30"
        case "true or false": return "true"
        default: return "\"…\""
        }
    }

    /// Edit distance (Levenshtein), for suggesting the key a misspelt one meant.
    static func distance(_ a: String, _ b: String) -> Int {
        let a = Array(a)
        let b = Array(b)
        if a.isEmpty { return b.count }
        if b.isEmpty { return a.count }
        var row = Array(0...b.count)
        for i in 1...a.count {
            var previous = row[0]
            row[0] = i
            for j in 1...b.count {
                let saved = row[j]
                row[j] = min(row[j] + 1, row[j - 1] + 1, previous + (a[i - 1] == b[j - 1] ? 0 : 1))
                previous = saved
            }
        }
        return row[b.count]
    }
}

/// Writes a configuration file: each value is written by TOMLKit (so strings are quoted and
/// escaped by the library), each key under its comment.
public struct ConfigWriter {
    private var lines: [String]

    /// A file that starts with the comment lines `header`.
    public init(header: [String]) { lines = header.map { "# \($0)" } }

    /// Adds `key = value` under `comment`.
    public mutating func add(_ key: String, _ value: String, comment: String? = nil) { add(key, value as any TOMLValueConvertible, comment: comment) }
    /// Adds `key = value` under `comment`.
    public mutating func add(_ key: String, _ value: Int, comment: String? = nil) { add(key, value as any TOMLValueConvertible, comment: comment) }
    /// Adds `key = value` under `comment` (an integer when it is whole).
    public mutating func add(_ key: String, _ value: Double, comment: String? = nil) {
        if value.rounded() == value, abs(value) < 1e15 {
            add(key, Int(value) as any TOMLValueConvertible, comment: comment)
        } else {
            add(key, value as any TOMLValueConvertible, comment: comment)
        }
    }
    /// Adds `key = value` under `comment`.
    public mutating func add(_ key: String, _ value: Bool, comment: String? = nil) { add(key, value as any TOMLValueConvertible, comment: comment) }

    private mutating func add(_ key: String, _ value: any TOMLValueConvertible, comment: String?) {
        if let comment { lines.append("# \(comment)") }
        lines.append(TOMLTable([key: value]).convert(to: .toml).trimmingCharacters(in: .whitespacesAndNewlines))
    }

    /// The file's text.
    public var text: String { lines.joined(separator: "\n") + "\n" }
}
