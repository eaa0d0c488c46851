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

/// `release_policy = approval` (issue "Harden the trust boundary", defect 4): another device's
/// key waits for an administrator; the router in process on the in-memory repository.
@Suite struct ReleaseApprovalTests {
    /// The answer's body as `T`.
    static func body<T: Decodable>(_ r: TestResponse, as: T.Type) throws -> T {
        try WireFormat.decoder().decode(T.self, from: Data(r.body.readableBytesView))
    }

    /// The error body of `r`.
    static func error(_ r: TestResponse) throws -> KeyholdError { try body(r, as: ErrorBody.self).error }

    static func decision(_ reason: String) throws -> ByteBuffer {
        ByteBuffer(bytes: try WireFormat.encoder().encode(ApprovalDecisionRequest(reason: reason)))
    }

    /// The request id a `pending_approval` answer names.
    static func requestID(_ r: TestResponse) throws -> ApprovalID {
        let message = try error(r).message
        let id = try #require(message.split(separator: "(").last?.split(separator: ")").first?.split(separator: " ").last)
        return try #require(ApprovalID(String(id)), "\(message)")
    }

    /// A server under `release_policy = approval` with a key escrowed by `owner`, another
    /// device and an administrator.
    struct Scene {
        let server: InProcessServer
        let owner: Peer
        let other: Peer
        let admin: Peer
        let key: KeyMaterial
        let escrow: ByteBuffer
        var path: String { "/v1/keys/\(key.record.id)" }

        static func make(approvalLifetime: TimeInterval = 86_400) async throws -> Scene {
            let server = try await InProcessServer.make(releasePolicy: .approval, approvalLifetime: approvalLifetime)
            let owner = try await server.enroll(.device)
            let (key, escrow) = try escrowBody(for: owner, serverID: server.serverID)
            return Scene(
                server: server, owner: owner, other: try await server.enroll(.device), admin: try await server.enroll(.admin), key: key,
                escrow: escrow)
        }

        /// Escrows the key and lets the other device ask for it: the request's id.
        func escrowAndAsk(_ client: some TestClientProtocol) async throws -> ApprovalID {
            _ = try await client.execute(uri: path, method: .put, headers: owner.header, body: escrow)
            return try ReleaseApprovalTests.requestID(try await client.execute(uri: path, method: .get, headers: other.header))
        }
    }

    @Test func anotherDevicesKeyIsReleasedOnlyOnceAnAdministratorApprovesAndOnlyOnce() async throws {
        let server = try await InProcessServer.make(releasePolicy: .approval)
        let owner = try await server.enroll(.device)
        let other = try await server.enroll(.device)
        let revoked = try await server.enroll(.device, state: .revoked)
        let admin = try await server.enroll(.admin)
        let (key, escrow) = try escrowBody(for: owner, serverID: server.serverID)
        let path = "/v1/keys/\(key.record.id)"
        try await server.apiApplication().test(.router) { client in
            #expect(try await client.execute(uri: path, method: .put, headers: owner.header, body: escrow).status == .ok)
            // The owner's own key needs nobody's approval.
            #expect(try await client.execute(uri: path, method: .get, headers: owner.header).status == .ok)

            // Another device's request is queued: 202 pending_approval, the same request on every retry.
            let first = try await client.execute(uri: path, method: .get, headers: other.header)
            #expect(first.status == .accepted && errorCode(first) == .pendingApproval, "\(String(buffer: first.body))")
            #expect(try Self.error(first).hint.contains("keyhold-server release approve"))
            let id = try Self.requestID(first)
            let again = try await client.execute(uri: path, method: .get, headers: other.header)
            let againID = try Self.requestID(again)
            #expect(again.status == .accepted && againID == id)
            // A revoked device hears that it is revoked, and queues nothing.
            let refused = try await client.execute(uri: path, method: .get, headers: revoked.header)
            #expect(refused.status == .forbidden && errorCode(refused) == .clientRevoked)

            let listed = try Self.body(
                try await client.execute(uri: "/v1/admin/releases", method: .get, headers: admin.header), as: ApprovalListResponse.self)
            #expect(listed.requests.map(\.id) == [id])
            #expect(listed.requests.first?.state == .pending && listed.requests.first?.keyID == key.record.id)
            #expect(listed.requests.first?.clientID == other.id && listed.requests.first?.clientName == "device")

            // A decision needs a reason; with one, the next request releases the key.
            let noReason = try await client.execute(
                uri: "/v1/admin/releases/\(id)/approve", method: .post, headers: admin.header, body: try Self.decision(""))
            #expect(noReason.status == .badRequest && errorCode(noReason) == .invalidRequest)
            let approved = try await client.execute(
                uri: "/v1/admin/releases/\(id)/approve", method: .post, headers: admin.header, body: try Self.decision("ticket 4711"))
            let info = try Self.body(approved, as: ApprovalInfo.self)
            #expect(info.state == .approved && info.decidedBy == admin.id && info.reason == "ticket 4711")
            let released = try await client.execute(uri: path, method: .get, headers: other.header)
            #expect(released.status == .ok)
            #expect(try Self.body(released, as: KeyMaterial.self).secret.constantTimeEquals(key.secret))

            // One approval, one release: the next request is a new one.
            let after = try await client.execute(uri: path, method: .get, headers: other.header)
            let afterID = try Self.requestID(after)
            #expect(after.status == .accepted && afterID != id)
            let closed = try Self.body(
                try await client.execute(uri: "/v1/admin/releases?state=released", method: .get, headers: admin.header), as: ApprovalListResponse.self
            )
            #expect(closed.requests.map(\.id) == [id])
            let bad = try await client.execute(uri: "/v1/admin/releases?state=later", method: .get, headers: admin.header)
            #expect(bad.status == .badRequest)
        }
        let audit = try await server.repository.audit(after: 0, limit: 100)
        let trail = audit.filter { $0.actor == .device(other.id) || $0.actor == .administrator(admin.id) }
        #expect(trail.map(\.action) == [.releaseRequest, .releaseApprove, .release, .releaseRequest])
        #expect(trail[1].detail.contains("ticket 4711") && trail[1].keyID == key.record.id)
        #expect(trail[2].result == .ok && trail[2].detail.contains("approved by admin:\(admin.id)"))
    }

    @Test func aDeniedRequestIsRefusedWithTheReasonUntilAnAdministratorApprovesIt() async throws {
        let scene = try await Scene.make()
        let (server, other, admin, path) = (scene.server, scene.other, scene.admin, scene.path)
        try await server.apiApplication().test(.router) { client in
            let id = try await scene.escrowAndAsk(client)
            let denied = try await client.execute(
                uri: "/v1/admin/releases/\(id)/deny", method: .post, headers: admin.header, body: try Self.decision("not the drive's owner"))
            #expect(try Self.body(denied, as: ApprovalInfo.self).state == .denied)
            let refused = try await client.execute(uri: path, method: .get, headers: other.header)
            #expect(refused.status == .forbidden && errorCode(refused) == .forbidden)
            #expect(try Self.error(refused).message.contains("not the drive's owner"))

            // The administrator changes their mind: approve the denied request.
            _ = try await client.execute(
                uri: "/v1/admin/releases/\(id)/approve", method: .post, headers: admin.header, body: try Self.decision("owner confirmed"))
            #expect(try await client.execute(uri: path, method: .get, headers: other.header).status == .ok)
            // A used request cannot be decided again; an unknown one is not found.
            let late = try await client.execute(
                uri: "/v1/admin/releases/\(id)/deny", method: .post, headers: admin.header, body: try Self.decision("too late"))
            #expect(late.status == .conflict && errorCode(late) == .conflict)
            let unknown = try await client.execute(
                uri: "/v1/admin/releases/\(ApprovalID.random())/approve", method: .post, headers: admin.header, body: try Self.decision("x"))
            #expect(unknown.status == .notFound)
        }
        let refusals = try await server.repository.audit(after: 0, limit: 100).filter { $0.action == .release && $0.result == .refused(.forbidden) }
        #expect(refusals.count == 1 && refusals[0].detail.contains("denied by admin:\(admin.id): not the drive's owner"))
    }

    @Test func anApprovalNotUsedWithinItsLifetimeExpiresAndTheDeviceAsksAnew() async throws {
        let scene = try await Scene.make(approvalLifetime: 1)
        let (server, other, admin, path) = (scene.server, scene.other, scene.admin, scene.path)
        try await server.apiApplication().test(.router) { client in
            let id = try await scene.escrowAndAsk(client)
            _ = try await client.execute(uri: "/v1/admin/releases/\(id)/approve", method: .post, headers: admin.header, body: try Self.decision("ok"))
            try await Task.sleep(for: .milliseconds(1500))
            let late = try await client.execute(uri: path, method: .get, headers: other.header)
            let lateID = try Self.requestID(late)
            #expect(late.status == .accepted && lateID != id)
        }
        let expired = try await server.repository.listApprovals(states: [.expired], limit: 10)
        #expect(expired.count == 1 && expired.first?.decidedBy != nil, "the unused approval expired")
        let released = try await server.repository.audit(after: 0, limit: 100).filter { $0.action == .release && $0.actor == .device(other.id) }
        #expect(released.isEmpty, "an expired approval releases nothing")
    }
}
