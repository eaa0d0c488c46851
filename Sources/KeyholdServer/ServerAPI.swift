import Foundation
import Hummingbird
import HummingbirdTLS
import HTTPTypes
import KeyholdCore
import KeyholdProtocol
import KeyholdStore
import Logging
import NIOCore
import NIOSSL
import SwiftASN1
import Synchronization
import X509

/// Request context that keeps the channel, so handlers can read the TLS peer certificate.
struct ServerContext: RequestContext {
    var coreContext: CoreRequestContextStorage
    let channel: any Channel

    init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        channel = source.channel
    }

}

/// What authentication needs from a connection's verified client certificate.
struct PeerIdentity: Sendable {
    /// The Keyhold identity its SAN names, if any.
    var identity: CertificateIdentity?
    /// SHA-256 of the certificate, compared with the one recorded at enrollment.
    var fingerprint: String
}

/// Reads, parses and hashes each connection's client certificate once, not at every request on a
/// keep-alive connection. A connection's peer certificate cannot change (TLS 1.3 has no
/// renegotiation and swift-nio-ssl refuses it for older versions by default). Entries leave when
/// their connection closes; the close callback holds the channel until then, so no new channel can
/// reuse a cached channel's identity while it is cached. Enrollment state is never cached: it is
/// checked at every request.
final class PeerIdentityCache: Sendable {
    private let entries = Mutex<[ObjectIdentifier: PeerIdentity]>([:])

    func identity(of channel: any Channel) async -> PeerIdentity? {
        let key = ObjectIdentifier(channel)
        if let known = entries.withLock({ $0[key] }) { return known }
        guard let cert = try? await channel.nioSSL_peerCertificate().get(), let der = try? cert.toDERBytes(),
              let certificate = try? Certificate(derEncoded: der)
        else { return nil }
        let peer = PeerIdentity(identity: CertificateIdentity(certificate: certificate), fingerprint: CertificateAuthority.fingerprint(certificate))
        let added = entries.withLock { entries -> Bool in
            guard entries[key] == nil else { return false }
            entries[key] = peer
            return true
        }
        if added {
            channel.closeFuture.whenComplete { [channel] _ in
                withExtendedLifetime(channel) { _ = self.entries.withLock { $0.removeValue(forKey: key) } }
            }
        }
        return peer
    }
}

/// HTTP status for each error code (docs/spec/protocol.md).
enum ErrorStatus {
    static func status(for code: KeyholdError.Code) -> HTTPResponse.Status {
        switch code {
        case .unauthenticated, .tokenInvalid: return .unauthorized
        case .forbidden, .clientRevoked, .keyBlocked: return .forbidden
        case .notFound: return .notFound
        case .conflict: return .conflict
        case .invalidRequest, .invalidKey, .usage: return .badRequest
        // An uploaded export file that does not open or is damaged.
        case .wrongPassword, .truncated, .authenticationFailed, .invalidHeader, .unsupportedVersion: return .unprocessableContent
        case .hierarchyDisabled: return .forbidden
        case .hierarchyLoop, .hierarchyTooDeep: return .conflict
        case .auditFailed, .unreachable: return .serviceUnavailable
        default: return .internalServerError
        }
    }
}

/// JSON in, JSON out, errors as `ErrorBody`.
enum JSONRoute {
    /// Decodes a JSON body of at most `limit` bytes (1 MiB; pushes of up to 10000 keys get 8 MiB).
    static func decode<T: Decodable>(_ type: T.Type, _ request: Request, limit: Int = 1 << 20) async throws -> T {
        let buffer: ByteBuffer
        do {
            buffer = try await request.body.collect(upTo: limit)
        } catch {
            throw KeyholdError(.invalidRequest, "the request body is larger than \(limit >> 20) MiB", hint: "send smaller requests")
        }
        do {
            return try WireFormat.decoder().decode(T.self, from: Data(buffer.readableBytesView))
        } catch {
            throw KeyholdError(.invalidRequest, "the request body is not a valid \(T.self): \(error)", hint: "see docs/spec/protocol.md")
        }
    }

    static func respond<T: Encodable>(_ value: T, status: HTTPResponse.Status = .ok) throws -> Response {
        let data = try WireFormat.encoder().encode(value)
        return Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    /// Wraps a handler so every thrown error becomes a JSON error response.
    static func handle(
        _ logger: Logger, _ body: @escaping @Sendable (Request, ServerContext) async throws -> Response
    ) -> @Sendable (Request, ServerContext) async throws -> Response {
        { request, context in
            do {
                return try await body(request, context)
            } catch let error as KeyholdError {
                return try respond(ErrorBody(code: error.code.rawValue, message: error.message, hint: error.hint), status: ErrorStatus.status(for: error.code))
            } catch {
                logger.error("request failed", metadata: ["path": "\(request.uri.path)", "error": "\(error)"])
                return try respond(
                    ErrorBody(code: "internal", message: "the server failed to handle the request", hint: "see the server's log"),
                    status: .internalServerError
                )
            }
        }
    }

    static func keyID(_ context: ServerContext) throws -> KeyID {
        guard let text = context.parameters.get("id"), let id = KeyID(text) else {
            throw KeyholdError(.invalidRequest, "the path does not name a valid key id", hint: "key ids are lowercase UUIDs")
        }
        return id
    }
}

/// Builds the two listeners of a server.
enum ServerAPI {
    /// Enrollment listener: TLS that authenticates the server only (the caller has no certificate yet).
    static func enrollmentRouter(_ core: ServerCore, logger: Logger) -> Router<ServerContext> {
        let router = Router(context: ServerContext.self)
        router.get(RouterPath(APIPath.health)) { _, _ in "ok\n" }
        router.get(RouterPath(APIPath.ca)) { _, _ in
            Response(status: .ok, headers: [.contentType: "application/x-pem-file"], body: .init(byteBuffer: ByteBuffer(string: core.authority.certificate.pem)))
        }
        router.post(RouterPath(APIPath.enroll), use: JSONRoute.handle(logger) { request, _ in
            try JSONRoute.respond(try await core.enroll(try await JSONRoute.decode(EnrollRequest.self, request)), status: .created)
        })
        return router
    }

    /// Mutual-TLS listener: every caller presents a certificate this server's CA issued.
    static func apiRouter(_ core: ServerCore, addresses: BoundAddresses, logger: Logger) -> Router<ServerContext> {
        let router = Router(context: ServerContext.self)
        router.get(RouterPath(APIPath.health)) { _, _ in "ok\n" }
        let peers = PeerIdentityCache()
        @Sendable func caller(_ context: ServerContext) async throws -> Caller {
            try await core.authenticate(await peers.identity(of: context.channel))
        }
        router.put(RouterPath("/v1/keys/:id"), use: JSONRoute.handle(logger) { request, context in
            let who = try await caller(context)
            let id = try JSONRoute.keyID(context)
            return try JSONRoute.respond(try await core.escrow(try await JSONRoute.decode(EscrowRequest.self, request), keyID: id, caller: who))
        })
        router.get(RouterPath("/v1/keys/:id"), use: JSONRoute.handle(logger) { _, context in
            guard let id = try? JSONRoute.keyID(context) else {
                _ = try await caller(context)  // who asks comes first, as on every endpoint
                _ = try JSONRoute.keyID(context)
                throw KeyholdError(.internalError, "unreachable", hint: "report this")
            }
            let response = try await core.release(id, peer: await peers.identity(of: context.channel))
            guard let json = response.wireJSON() else { return try JSONRoute.respond(response) }
            return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: json)))
        })
        router.post(RouterPath(APIPath.leave), use: JSONRoute.handle(logger) { request, context in
            let who = try await caller(context)
            try await core.leave(try await JSONRoute.decode(LeaveRequest.self, request), caller: who)
            return Response(status: .noContent)
        })
        router.post(RouterPath(APIPath.heartbeat), use: JSONRoute.handle(logger) { request, context in
            let who = try await caller(context)
            return try JSONRoute.respond(try await core.heartbeat(try await JSONRoute.decode(HeartbeatRequest.self, request), caller: who))
        })

        // Administrators.
        @Sendable func admin(_ context: ServerContext) async throws -> Caller {
            let who = try await caller(context)
            try core.require(who, .admin)
            return who
        }
        router.get(RouterPath(APIPath.adminStatus), use: JSONRoute.handle(logger) { _, context in
            _ = try await admin(context)
            return try JSONRoute.respond(try await core.status())
        })
        router.get(RouterPath(APIPath.adminAudit), use: JSONRoute.handle(logger) { request, context in
            _ = try await admin(context)
            let after = Int64(request.uri.queryParameters.get("after") ?? "") ?? 0
            let limit = min(10_000, Int(request.uri.queryParameters.get("limit") ?? "") ?? 1000)
            return try JSONRoute.respond(try await core.audit(after: after, limit: limit))
        })
        router.get(RouterPath(APIPath.adminKeys), use: JSONRoute.handle(logger) { request, context in
            _ = try await admin(context)
            let after = request.uri.queryParameters.get("after").flatMap { KeyID(String($0)) }
            let limit = min(10_000, Int(request.uri.queryParameters.get("limit") ?? "") ?? 1000)
            return try JSONRoute.respond(try await core.keys(after: after, limit: limit))
        })
        router.post(RouterPath(APIPath.adminKeysExport), use: JSONRoute.handle(logger) { request, context in
            let who = try await admin(context)
            let body = try await JSONRoute.decode(ExportRequest.self, request)
            try await core.checkExport(body)
            // From here on the answer is the file: a failure closes the connection before the
            // final chunk, so the client sees an incomplete transfer, never a short file.
            return Response(status: .ok, headers: [.contentType: "application/octet-stream"], body: ResponseBody { writer in
                do {
                    try await core.export(body, caller: who) { bytes in try await writer.write(ByteBuffer(bytes: bytes)) }
                } catch {
                    logger.error("export failed mid-stream", metadata: ["error": "\(error)"])
                    throw error
                }
                try await writer.finish(nil)
            })
        })
        router.post(RouterPath(APIPath.adminKeysImport), use: JSONRoute.handle(logger) { request, context in
            let who = try await admin(context)
            guard let field = HTTPField.Name(TransferPassword.header), let encoded = request.headers[field],
                  let bytes = Data(base64Encoded: encoded), let password = String(data: bytes, encoding: .utf8)
            else {
                throw KeyholdError(.invalidRequest, "the import names no password (header \(TransferPassword.header), base64)", hint: "use 'keyhold-server key import'")
            }
            let spool = try await Spool.receive(request.body, into: core.spoolDirectory, limit: 8 << 30)
            defer { try? FileManager.default.removeItem(atPath: spool) }
            return try JSONRoute.respond(try await core.importFile(at: spool, password: password, caller: who))
        })
        for (suffix, blocked) in [("block", true), ("unblock", false)] {
            router.post(RouterPath("/v1/admin/keys/:id/\(suffix)"), use: JSONRoute.handle(logger) { _, context in
                let who = try await admin(context)
                try await core.block(try JSONRoute.keyID(context), blocked: blocked, caller: who)
                return Response(status: .noContent)
            })
        }
        router.get(RouterPath(APIPath.adminClients), use: JSONRoute.handle(logger) { _, context in
            _ = try await admin(context)
            return try JSONRoute.respond(try await core.clients())
        })
        router.post(RouterPath("/v1/admin/clients/:id/revoke"), use: JSONRoute.handle(logger) { _, context in
            let who = try await admin(context)
            guard let text = context.parameters.get("id"), let id = DeviceID(text) else {
                throw KeyholdError(.invalidRequest, "the path does not name a valid device id", hint: "ids are lowercase UUIDs")
            }
            try await core.revoke(id, caller: who)
            return Response(status: .noContent)
        })
        router.post(RouterPath(APIPath.adminTokens), use: JSONRoute.handle(logger) { request, context in
            let who = try await admin(context)
            let body = try await JSONRoute.decode(TokenCreateRequest.self, request)
            let (api, enroll) = await addresses.advertised()
            return try JSONRoute.respond(try await core.createToken(body, caller: who, api: api, enroll: enroll), status: .created)
        })
        // The hierarchy: secondaries calling this server, administrators steering it.
        router.post(RouterPath(APIPath.hierarchyPush), use: JSONRoute.handle(logger) { request, context in
            let who = try await caller(context)
            return try JSONRoute.respond(try await core.receivePush(try await JSONRoute.decode(PushRequest.self, request, limit: 8 << 20), caller: who))
        })
        router.get(RouterPath("/v1/hierarchy/keys/:id"), use: JSONRoute.handle(logger) { request, context in
            let parsed = Result { () throws -> (KeyID, [ServerID]) in
                let chain = try (request.uri.queryParameters.get("chain") ?? "").split(separator: ",").map { part -> ServerID in
                    guard let id = ServerID(String(part)) else { throw KeyholdError(.invalidRequest, "chain holds an invalid server id", hint: "see docs/spec/hierarchy.md") }
                    return id
                }
                return (try JSONRoute.keyID(context), chain)
            }
            guard case .success(let (id, chain)) = parsed else {
                _ = try await caller(context)  // who asks comes first, as on every endpoint
                _ = try parsed.get()
                throw KeyholdError(.internalError, "unreachable", hint: "report this")
            }
            let hops = Int(request.uri.queryParameters.get("hops") ?? "") ?? 0
            return try JSONRoute.respond(try await core.lookup(id, chain: chain, hops: hops, peer: await peers.identity(of: context.channel)))
        })
        router.post(RouterPath(APIPath.adminPrimary), use: JSONRoute.handle(logger) { request, context in
            _ = try await admin(context)
            return try JSONRoute.respond(try await core.hierarchy.join(tokenText: try await JSONRoute.decode(JoinRequest.self, request).token))
        })
        router.delete(RouterPath(APIPath.adminPrimary), use: JSONRoute.handle(logger) { _, context in
            _ = try await admin(context)
            try await core.hierarchy.leave()
            return Response(status: .noContent)
        })
        router.post(RouterPath(APIPath.adminHierarchy), use: JSONRoute.handle(logger) { request, context in
            let who = try await admin(context)
            let body = try await JSONRoute.decode(HierarchyOptionRequest.self, request)
            try await core.hierarchy.setEnabled(body.enabled)
            try await core.repository.appendAudit(AuditEvent(actor: who.actor, action: body.enabled ? "hierarchy_enable" : "hierarchy_disable", route: "admin-api", result: "ok"))
            return try JSONRoute.respond(try await core.hierarchy.status())
        })
        router.post(RouterPath(APIPath.adminHierarchySync), use: JSONRoute.handle(logger) { _, context in
            _ = try await admin(context)
            return try JSONRoute.respond(try await core.hierarchy.sync())
        })
        return router
    }
}

/// The addresses the listeners actually bound (known once they run; port 0 picks a free port).
actor BoundAddresses {
    private var api: String
    private var enroll: String
    private let advertiseAPI: String
    private let advertiseEnroll: String
    private var waiters: [CheckedContinuation<Void, Never>] = []
    private var bound = 0

    init(config: ServerConfig) {
        api = config.listen
        enroll = config.enrollListen
        advertiseAPI = config.advertiseAPI
        advertiseEnroll = config.advertiseEnroll
    }

    func set(api address: String) { api = address; bound += 1; wake() }
    func set(enroll address: String) { enroll = address; bound += 1; wake() }

    private func wake() {
        guard bound >= 2 else { return }
        for w in waiters { w.resume() }
        waiters = []
    }

    /// Waits until both listeners are bound.
    func waitUntilBound() async {
        if bound >= 2 { return }
        await withCheckedContinuation { waiters.append($0) }
    }

    func current() -> (api: String, enroll: String) { (api, enroll) }

    /// What tokens carry: the configured advertised addresses, else the bound ones.
    func advertised() -> (String, String) {
        (advertiseAPI.isEmpty ? api : advertiseAPI, advertiseEnroll.isEmpty ? enroll : advertiseEnroll)
    }
}

/// Uploaded files, written to a private file in the data directory as they arrive.
enum Spool {
    static func receive(_ body: RequestBody, into directory: String, limit: Int) async throws -> String {
        let path = "\(directory)/import-\(UUID().uuidString.lowercased()).spool"
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw KeyholdError(.ioFailed, "cannot create a spool file in \(directory): errno \(errno)", hint: "check the data directory's free space and permissions") }
        let handle = FileHandle(fileDescriptor: fd, closeOnDealloc: true)
        do {
            var total = 0
            for try await buffer in body {
                total += buffer.readableBytes
                guard total <= limit else {
                    throw KeyholdError(.invalidRequest, "the upload is larger than \(limit >> 30) GiB", hint: "split the export (--device, --since)")
                }
                try handle.write(contentsOf: buffer.readableBytesView)
            }
            try handle.close()
            return path
        } catch {
            try? handle.close()
            try? FileManager.default.removeItem(atPath: path)
            throw error
        }
    }
}
