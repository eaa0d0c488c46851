import Foundation
import KeyholdCore
import KeyholdProtocol
import KeyholdTestSupport
import Testing

/// The typed protocol: the error-status table, the audit vocabulary and the agent's messages.
@Suite struct ProtocolTests {
    /// The `| code | status | meaning |` rows of docs/spec/protocol.md §5.
    static func documentedStatuses() throws -> [String: Int] {
        let text = try String(contentsOf: Paths.repository.appendingPathComponent("docs/spec/protocol.md"), encoding: .utf8)
        let section = try #require(text.range(of: "## 5. Errors")).upperBound
        let end = text[section...].range(of: "\n## ")?.lowerBound ?? text.endIndex
        var table: [String: Int] = [:]
        for line in text[section..<end].split(separator: "\n") where line.hasPrefix("| `") {
            let cells = line.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
            guard cells.count >= 2, let status = Int(cells[1]) else { continue }
            for code in cells[0].split(separator: ",") {
                table[code.trimmingCharacters(in: .whitespaces).trimmingCharacters(in: CharacterSet(charactersIn: "`"))] = status
            }
        }
        return table
    }

    @Test func everyErrorCodeHasTheStatusTheSpecGivesIt() throws {
        let documented = try Self.documentedStatuses()
        for code in KeyholdError.Code.allCases {
            #expect(
                documented[code.rawValue] == ErrorStatus.httpStatus(for: code),
                "\(code): spec \(documented[code.rawValue].map(String.init) ?? "missing")")
            // Every code is a failure status but the one that says a request was queued.
            #expect((400...599).contains(ErrorStatus.httpStatus(for: code)) || (code == .pendingApproval && ErrorStatus.httpStatus(for: code) == 202))
        }
        #expect(Set(documented.keys) == Set(KeyholdError.Code.allCases.map(\.rawValue)), "the spec lists exactly the codes there are")
    }

    @Test func theAuditVocabularyRoundTripsAsText() throws {
        let actors: [AuditActor] = [.device(.random()), .secondary(.random()), .administrator(.random()), .server(.random()), .anonymous]
        for actor in actors { #expect(AuditActor(actor.description) == actor) }
        let routes: [AuditRoute] = [.agent, .adminAPI, .enrollment, .local, .api, .secondary(.random()), .primary(.random())]
        for route in routes { #expect(AuditRoute(route.description) == route) }
        for result in [AuditResult.ok, .alreadyPresent] + KeyholdError.Code.allCases.map(AuditResult.refused) {
            #expect(AuditResult(result.description) == result)
        }
        for text in ["", "device:", "device:not-a-uuid", "robot:0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", "primary"] {
            #expect(AuditActor(text) == nil && AuditRoute(text) == nil, "\(text)")
        }
        #expect(AuditResult("no_such_code") == nil)
    }

    @Test func agentRequestsHaveTheDocumentedWireForm() throws {
        let id = KeyID.random()
        let cases: [(AgentRequest, String)] = [
            (.status, #"{"op":"status"}"#), (.fileKey, #"{"op":"file-key"}"#), (.key(id), #"{"key_id":"\#(id)","op":"key"}"#),
            (.enroll(token: "kh1.x", name: nil), #"{"op":"enroll","token":"kh1.x"}"#),
            (.enroll(token: "kh1.x", name: "vm-2"), #"{"name":"vm-2","op":"enroll","token":"kh1.x"}"#),
            (.reassign(token: "kh1.y", dryRun: true), #"{"dry_run":true,"op":"reassign","token":"kh1.y"}"#),
            (.driveKey(label: "stick"), #"{"label":"stick","op":"drive-key"}"#),
        ]
        for (request, json) in cases {
            #expect(String(decoding: try WireFormat.encoder().encode(request), as: UTF8.self) == json)
            #expect(try WireFormat.decoder().decode(AgentRequest.self, from: Data(json.utf8)) == request)
        }
        for bad in [#"{"op":"wipe"}"#, #"{"op":"key"}"#, #"{"op":"enroll"}"#, #"{}"#] {
            #expect(throws: DecodingError.self) { try WireFormat.decoder().decode(AgentRequest.self, from: Data(bad.utf8)) }
        }
    }

    @Test func anUnknownErrorCodeFromANewerPeerIsKeptInTheMessage() throws {
        let body = try WireFormat.decoder().decode(ErrorBody.self, from: Data(#"{"code":"quota_exceeded","message":"too many","hint":"wait"}"#.utf8))
        #expect(body.code == .internalError)
        #expect(body.message == "too many (code quota_exceeded)")
    }
}
