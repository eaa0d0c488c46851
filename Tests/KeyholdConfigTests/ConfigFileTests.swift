import Foundation
import KeyholdConfig
import KeyholdCore
import KeyholdProtocol
import Testing

/// The strict TOML reader both configuration files use.
@Suite struct ConfigFileTests {
    /// Reads `text` with the accessors a server's config uses.
    func read(_ text: String) throws -> (listen: String?, heartbeat: Int?, use: Bool?) {
        let file = try ConfigFile(path: "/etc/test.toml", text: text)
        let listen = try file.address("listen")?.description
        let heartbeat = try file.integer("heartbeat", in: 1...3600)
        let use = try file.boolean("enabled")
        try file.finish()
        return (listen, heartbeat, use)
    }

    func error(_ text: String) -> KeyholdError? {
        do {
            _ = try read(text)
            return nil
        } catch let e as KeyholdError {
            return e
        } catch {
            return nil
        }
    }

    @Test func knownKeysAreRead() throws {
        let r = try read("# comment\nlisten = \"127.0.0.1:8443\"\nheartbeat = 30\nenabled = true\n")
        #expect(r.listen == "127.0.0.1:8443")
        #expect(r.heartbeat == 30)
        #expect(r.use == true)
        let empty = try read("")
        #expect(empty.listen == nil && empty.heartbeat == nil && empty.use == nil)
    }

    @Test func aMisspeltKeyIsAnErrorThatSuggestsTheRightOne() throws {
        let e = try #require(error("lisen = \"127.0.0.1:8443\"\n"))
        #expect(e.code == .configuration)
        #expect(e.message == "/etc/test.toml: unknown key 'lisen'")
        #expect(e.hint.contains("did you mean 'listen'?"), "\(e.hint)")
        // Something nowhere near a known key gets the list, without a guess.
        let far = try #require(error("colour = \"blue\"\n"))
        #expect(!far.hint.contains("did you mean") && far.hint.contains("enabled, heartbeat, listen"), "\(far.hint)")
        // A table is a key too.
        #expect(error("[listen]\nport = 1\n")?.message.contains("listen must be a string") == true)
    }

    @Test func aDuplicatedKeyIsRefusedWithItsLine() throws {
        let e = try #require(error("listen = \"127.0.0.1:1\"\nheartbeat = 3\nlisten = \"127.0.0.1:2\"\n"))
        #expect(e.message.hasPrefix("/etc/test.toml:3:"), "\(e.message)")
        #expect(e.message.contains("listen"), "the key is named: \(e.message)")
        #expect(!e.hint.isEmpty)
    }

    @Test func syntaxErrorsNameTheLine() throws {
        let e = try #require(error("heartbeat = 30\nlisten = \"unterminated\n"))
        #expect(e.message.hasPrefix("/etc/test.toml:2:"), "\(e.message)")
    }

    @Test func wrongTypesAndValuesNameTheKey() throws {
        #expect(error("listen = 8443\n")?.message == "/etc/test.toml: listen must be a string in double quotes, not an integer")
        #expect(error("heartbeat = \"30\"\n")?.message == "/etc/test.toml: heartbeat must be an integer, not a string")
        #expect(error("enabled = 1\n")?.message == "/etc/test.toml: enabled must be true or false, not an integer")
        #expect(error("heartbeat = 0\n")?.message == "/etc/test.toml: heartbeat = 0 is out of range")
        #expect(error("listen = \"localhost\"\n")?.message == "/etc/test.toml: listen = \"localhost\" is not host:port")
        #expect(error("listen = \"[::1]:99999\"\n")?.message.contains("is not host:port") == true)
        for text in ["listen = 8443\n", "heartbeat = \"30\"\n", "listen = \"localhost\"\n"] {
            #expect(error(text)?.hint.contains("write it like") == true)
        }
    }

    @Test func theWriterQuotesThroughTheLibraryAndReadsBack() throws {
        var w = ConfigWriter(header: ["test"])
        let tricky = "a \"quoted\" \\ back\\slash\ttab"
        w.add("name", tricky, comment: "a name")
        w.add("heartbeat", 30)
        w.add("enabled", false)
        let file = try ConfigFile(path: "x", text: w.text)
        #expect(try file.string("name") == tricky)
        #expect(try file.integer("heartbeat", in: 1...60) == 30)
        #expect(try file.boolean("enabled") == false)
        try file.finish()
        #expect(w.text.hasPrefix("# test\n# a name\n"))
    }
}
