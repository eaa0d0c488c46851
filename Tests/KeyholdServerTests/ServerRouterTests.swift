import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import KeyholdCore
import KeyholdProtocol
import KeyholdStore
import NIOCore
import Testing

@testable import KeyholdServer

/// The mutual-TLS API's router, in process (HummingbirdTesting) on the in-memory repository.
@Suite struct ServerRouterTests {
    /// Every route of the API and the roles that may call it.
    static let routes: [(HTTPRequest.Method, String, Set<ClientRole>)] = {
        let key = KeyID.random()
        let client = ClientID.random()
        let request = ApprovalID.random()
        return [
            (.put, "/v1/keys/\(key)", [.device]), (.get, "/v1/keys/\(key)", [.device]),
            (.post, "/v1/keys/\(key)/retire", [.device]), (.get, "/v1/keys/\(key)/status", [.device]), (.post, "/v1/leave", [.device]),
            (.post, "/v1/heartbeat", [.device]), (.post, "/v1/certificate/renew", [.device, .server]),
            (.post, "/v1/hierarchy/push", [.server]), (.get, "/v1/hierarchy/keys/\(key)", [.server]),
            (.get, "/v1/admin/status", [.admin]), (.get, "/v1/admin/audit", [.admin]), (.get, "/v1/admin/keys", [.admin]),
            (.post, "/v1/admin/keys/export", [.admin]), (.post, "/v1/admin/keys/import", [.admin]),
            (.post, "/v1/admin/keys/\(key)/reveal", [.admin]), (.post, "/v1/admin/keys/offline-response", [.admin]),
            (.post, "/v1/admin/keys/\(key)/block", [.admin]),
            (.post, "/v1/admin/keys/\(key)/unblock", [.admin]),
            (.get, "/v1/admin/clients", [.admin]), (.post, "/v1/admin/clients/\(client)/revoke", [.admin]),
            (.get, "/v1/admin/administrators", [.admin]), (.post, "/v1/admin/administrators", [.admin]),
            (.post, "/v1/admin/administrators/\(client)/revoke", [.admin]),
            (.post, "/v1/admin/tokens", [.admin]), (.get, "/v1/admin/tokens", [.admin]),
            (.post, "/v1/admin/tokens/\(TokenID.random())/revoke", [.admin]),
            (.post, "/v1/admin/primary", [.admin]), (.delete, "/v1/admin/primary", [.admin]),
            (.post, "/v1/admin/hierarchy", [.admin]), (.post, "/v1/admin/hierarchy/sync", [.admin]),
            (.get, "/v1/admin/releases", [.admin]), (.post, "/v1/admin/releases/\(request)/approve", [.admin]),
            (.post, "/v1/admin/releases/\(request)/deny", [.admin]),
        ]
    }()

    @Test func everyRouteServesOnlyItsRolesAndChecksThemBeforeTheBody() async throws {
        let server = try await InProcessServer.make(useHierarchy: true)
        var enrolled: [ClientRole: Peer] = [:]
        for role in ClientRole.allCases { enrolled[role] = try await server.enroll(role) }
        let peers = enrolled
        // Larger than any body limit: a refusal by role must come before the body is read.
        let oversized = ByteBuffer(repeating: 0x7B, count: 9 << 20)
        try await server.apiApplication().test(.router) { client in
            for (method, path, allowed) in Self.routes {
                let anonymous = try await client.execute(uri: path, method: method, body: oversized)
                #expect(anonymous.status == .unauthorized && errorCode(anonymous) == .unauthenticated, "\(method) \(path) without a peer")
                for role in ClientRole.allCases {
                    let peer = try #require(peers[role])
                    if allowed.contains(role) {
                        let r = try await client.execute(uri: path, method: method, headers: peer.header)
                        #expect(
                            ![.unauthorized, .forbidden].contains(r.status), "\(method) \(path) as \(role): \(r.status) \(String(buffer: r.body))")
                    } else {
                        let r = try await client.execute(uri: path, method: method, headers: peer.header, body: oversized)
                        #expect(r.status == .forbidden && errorCode(r) == .forbidden, "\(method) \(path) as \(role): \(r.status)")
                    }
                }
            }
        }
    }

    @Test func everyErrorAnswerHasTheStatusOfTheProtocolTable() async throws {
        let server = try await InProcessServer.make()
        let device = try await server.enroll(.device)
        let admin = try await server.enroll(.admin)
        try await server.apiApplication().test(.router) { client in
            var seen = Set<KeyholdError.Code>()
            let answers = [
                try await client.execute(uri: "/v1/keys/\(KeyID.random())", method: .get, headers: device.header),  // not_found
                try await client.execute(uri: "/v1/keys/not-a-key", method: .get, headers: device.header),  // invalid_request
                try await client.execute(uri: "/v1/admin/audit?limit=-1", method: .get, headers: admin.header),  // invalid_request
                try await client.execute(uri: "/v1/admin/status", method: .get, headers: device.header),  // forbidden
                try await client.execute(uri: "/v1/admin/status", method: .get),  // unauthenticated
            ]
            for r in answers {
                let code = try #require(errorCode(r), "\(String(buffer: r.body))")
                seen.insert(code)
                #expect(Int(r.status.code) == ErrorStatus.httpStatus(for: code), "\(code)")
            }
            #expect(seen == [.notFound, .invalidRequest, .forbidden, .unauthenticated])
        }
    }

    @Test func escrowAndReleaseAreAuditedAndAnsweredAfterTheCommit() async throws {
        let server = try await InProcessServer.make()
        let d1 = try await server.enroll(.device)
        let d2 = try await server.enroll(.device)
        let (key, body) = try escrowBody(for: d1, serverID: server.serverID)
        try await server.apiApplication().test(.router) { client in
            let stored = try await client.execute(uri: "/v1/keys/\(key.record.id)", method: .put, headers: d1.header, body: body)
            #expect(stored.status == .ok)
            #expect(try WireFormat.decoder().decode(EscrowResponse.self, from: Data(stored.body.readableBytesView)).outcome == .inserted)
            let again = try await client.execute(uri: "/v1/keys/\(key.record.id)", method: .put, headers: d1.header, body: body)
            #expect(try WireFormat.decoder().decode(EscrowResponse.self, from: Data(again.body.readableBytesView)).outcome == .alreadyPresent)
            let released = try await client.execute(uri: "/v1/keys/\(key.record.id)", method: .get, headers: d2.header)
            let back = try WireFormat.decoder().decode(KeyMaterial.self, from: Data(released.body.readableBytesView))
            #expect(back.record == key.record && back.secret.constantTimeEquals(key.secret))
        }
        let audit = try await server.repository.audit(after: 0, limit: 100)
        #expect(audit.map(\.action) == [.escrow, .escrow, .release])
        #expect(audit.map(\.actor) == [.device(d1.id), .device(d1.id), .device(d2.id)])
        #expect(audit.map(\.result) == [.ok, .ok, .ok])
    }

    @Test func noAuditNoKey() async throws {
        let server = try await InProcessServer.make()
        let device = try await server.enroll(.device)
        let (key, body) = try escrowBody(for: device, serverID: server.serverID)
        try await server.apiApplication().test(.router) { client in
            _ = try await client.execute(uri: "/v1/keys/\(key.record.id)", method: .put, headers: device.header, body: body)
            try await server.repository.breakAuditWrites()
            let r = try await client.execute(uri: "/v1/keys/\(key.record.id)", method: .get, headers: device.header)
            #expect(r.status == .serviceUnavailable && errorCode(r) == .auditFailed)
            #expect(!String(buffer: r.body).contains("secret"))
        }
    }

    @Test func revokedAndMovedClientsAreRefusedWithTheirOwnCodesAndAudited() async throws {
        let server = try await InProcessServer.make()
        let revoked = try await server.enroll(.device, state: .revoked)
        let moved = try await server.enroll(.device, state: .moved)
        let stranger = Peer(role: .device, id: .random(), fingerprint: "00")
        try await server.apiApplication().test(.router) { client in
            for (peer, code) in [(revoked, KeyholdError.Code.clientRevoked), (moved, .clientMoved), (stranger, .unauthenticated)] {
                // Both kinds of route: the release (checked in its statement) and an ordinary one.
                for (method, path) in [(HTTPRequest.Method.get, "/v1/keys/\(KeyID.random())"), (.post, "/v1/heartbeat")] {
                    let r = try await client.execute(uri: path, method: method, headers: peer.header, body: ByteBuffer(string: "{}"))
                    #expect(errorCode(r) == code, "\(path): \(String(buffer: r.body))")
                }
            }
        }
        let refusals = try await server.repository.audit(after: 0, limit: 100).filter { $0.action == .request }
        #expect(refusals.map(\.result) == [.refused(.clientRevoked), .refused(.clientRevoked), .refused(.clientMoved), .refused(.clientMoved)])
    }

    @Test func onlyTheHolderOfAnOldDriveKeyRetiresItForOneItEscrowed() async throws {
        let server = try await InProcessServer.make()
        let owner = try await server.enroll(.device)
        let other = try await server.enroll(.device)
        let (old, oldBody) = try escrowBody(for: owner, serverID: server.serverID)
        let (new, newBody) = try escrowBody(for: owner, serverID: server.serverID)
        let path = "/v1/keys/\(old.record.id)/retire"
        let forgedBody = ByteBuffer(
            bytes: try WireFormat.encoder().encode(RetireRequest(old: old.record.id, oldSecret: .generate(), replacedBy: new.record.id)))
        let realBody = ByteBuffer(
            bytes: try WireFormat.encoder().encode(RetireRequest(old: old.record.id, oldSecret: old.secret, replacedBy: new.record.id)))
        try await server.apiApplication().test(.router) { client in
            for (key, body) in [(old, oldBody), (new, newBody)] {
                _ = try await client.execute(uri: "/v1/keys/\(key.record.id)", method: .put, headers: owner.header, body: body)
            }
            // A wrong proof (made with another secret) and a new key the caller did not escrow are refused.
            let refused = try await client.execute(uri: path, method: .post, headers: owner.header, body: forgedBody)
            #expect(refused.status == .forbidden && errorCode(refused) == .forbidden)
            let notTheirs = try await client.execute(uri: path, method: .post, headers: other.header, body: realBody)
            #expect(notTheirs.status == .forbidden, "the new key was not escrowed by this device")
            #expect(try await server.repository.key(id: old.record.id)?.blocked == false, "nothing changed")
            // The holder retires it: blocked, audited.
            let done = try await client.execute(uri: path, method: .post, headers: owner.header, body: realBody)
            #expect(done.status == .noContent)
        }
        #expect(try await server.repository.key(id: old.record.id)?.blocked == true)
        let records = try await server.repository.audit(after: 0, limit: 100).filter { $0.action == .retire }
        #expect(records.map(\.result) == [.refused(.forbidden), .ok])
    }
}
