import Foundation
import HTTPTypes
import Hummingbird
import KeyholdCore
import KeyholdProtocol
import Logging
import NIOCore

/// A request context that can say who is calling: the routers are generic over it, so the same
/// routes run behind TLS in the server and in process in the router tests.
protocol PeerContext: RequestContext {
    /// The caller of `request`, or nil when no Keyhold identity comes with it.
    func peer(for request: Request) async -> Peer?
    /// The connection's source address (what per-address limits count).
    var sourceAddress: String { get }
}

/// The server's request context: the peer is the connection's verified TLS client certificate.
struct ServerContext: PeerContext {
    var coreContext: CoreRequestContextStorage
    let channel: any Channel
    /// Every connection's parsed certificate, shared by all requests of the process.
    static let peers = PeerCache()

    init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        channel = source.channel
    }

    func peer(for request: Request) async -> Peer? { await Self.peers.peer(of: channel) }

    var sourceAddress: String { channel.remoteAddress?.ipAddress ?? "unknown" }
}

/// The server's two routers (docs/spec/protocol.md). On the mutual-TLS API every route names the
/// roles that may call it; the role comes from the connection's certificate and is checked before
/// any body is read. A route then either authenticates the caller (``ServerCore/authenticate(_:)``)
/// or, for key releases, lets the release statement check the enrollment.
struct ServerAPI<Context: PeerContext> {
    let core: ServerCore
    let logger: Logger

    init(core: ServerCore, logger: Logger) {
        self.core = core
        self.logger = logger
    }

    /// Enrollment listener: TLS that authenticates the server only (the caller has no certificate yet).
    func enrollmentRouter() -> Router<Context> {
        let router = Router(context: Context.self)
        router.add(middleware: RequestRecorder(metrics: core.metrics, listener: "enrollment", logger: logger))
        router.get(RouterPath(APIPath.health)) { _, _ in "ok\n" }
        router.get(RouterPath(APIPath.ready)) { [core] _, _ in try await Self.readiness(core) }
        router.get(RouterPath(APIPath.ca)) { [core] _, _ in
            Response(
                status: .ok, headers: [.contentType: "application/x-pem-file"],
                body: .init(byteBuffer: ByteBuffer(string: core.authority.current.certificate.pem))
            )
        }
        router.post(
            RouterPath(APIPath.enroll),
            use: handle { [core] request, context in
                // The source's budget is checked before the body is read; a body that does not
                // parse is an anonymous refusal, counted, not audited one by one.
                let address = context.sourceAddress
                try core.admitEnrollment(from: address)
                let body: EnrollRequest
                do {
                    body = try await decode(EnrollRequest.self, request)
                } catch let error as KeyholdError {
                    try core.refuseAnonymous(error, from: address)
                }
                return try respond(try await core.enroll(body, from: address), status: .created)
            })
        return router
    }

    /// Mutual-TLS listener: every caller presents a certificate this server's CA issued.
    func apiRouter() -> Router<Context> {
        let router = Router(context: Context.self)
        let core = core
        router.add(middleware: RequestRecorder(metrics: core.metrics, listener: "api", logger: logger))
        router.get(RouterPath(APIPath.health)) { _, _ in "ok\n" }

        // Devices.
        route(router, .put, "/v1/keys/:id", [.device]) { request, context, caller in
            let id = try Self.keyID(context)
            return try respond(try await core.escrow(try await decode(EscrowRequest.self, request), keyID: id, by: caller))
        }
        release(router, "/v1/keys/:id", [.device]) { request, context, peer in
            (try await core.release(try Self.keyID(context), to: peer), nil)
        }
        route(router, .get, "/v1/keys/:id/status", [.device]) { _, context, caller in
            try respond(try await core.keyStatus(try Self.keyID(context), by: caller))
        }
        route(router, .post, "/v1/keys/:id/retire", [.device]) { request, context, caller in
            try await core.retire(try Self.keyID(context), try await decode(RetireRequest.self, request), by: caller)
            return Response(status: .noContent)
        }
        route(router, .post, APIPath.leave, [.device]) { request, _, caller in
            try await core.leave(try await decode(LeaveRequest.self, request), by: caller)
            return Response(status: .noContent)
        }
        route(router, .post, APIPath.heartbeat, [.device]) { request, _, caller in
            try respond(try await core.heartbeat(try await decode(HeartbeatRequest.self, request), by: caller))
        }

        // Devices and secondaries.
        route(router, .post, APIPath.certificateRenew, [.device, .server]) { request, _, caller in
            try respond(try await core.renewCertificate(try await decode(CertificateRenewRequest.self, request), by: caller))
        }

        // Secondaries.
        route(router, .post, APIPath.hierarchyPush, [.server]) { request, _, caller in
            try respond(try await core.receivePush(try await decode(PushRequest.self, request, limit: 8 << 20), by: caller))
        }
        route(router, .get, "/v1/hierarchy/explain/:id", [.server]) { request, context, caller in
            let chain = try Self.chain(request)
            let hops = try Self.integer(request, "hops", in: 0...Hierarchy.hopLimit) ?? 0
            return try respond(try await core.explainForSecondary(try Self.keyID(context), chain: chain, hops: hops, by: caller))
        }
        release(router, "/v1/hierarchy/keys/:id", [.server]) { request, context, peer in
            let chain = try Self.chain(request)
            let hops = try Self.integer(request, "hops", in: 0...Hierarchy.hopLimit) ?? 0
            return try await core.lookup(try Self.keyID(context), chain: chain, hops: hops, for: peer)
        }

        // Administrators.
        route(router, .get, APIPath.adminStatus, [.admin]) { _, _, _ in try respond(try await core.status()) }
        route(router, .post, APIPath.adminTLSRenew, [.admin]) { _, _, caller in try respond(try await core.renewTLS(by: caller)) }
        route(router, .get, APIPath.adminMasterKey, [.admin]) { _, _, _ in try respond(try await core.masterKeyStatus()) }
        route(router, .post, APIPath.adminMasterKeyRotate, [.admin]) { request, _, caller in
            try respond(try await core.rotateMasterKey(try await decode(MasterKeyRotateRequest.self, request), by: caller))
        }
        route(router, .post, APIPath.adminMasterKeyRetireOld, [.admin]) { _, _, caller in
            try respond(try await core.retireOldMasterKeys(by: caller))
        }
        route(router, .get, APIPath.adminCA, [.admin]) { _, _, _ in try respond(try await core.caStatus()) }
        route(router, .post, APIPath.adminCARotate, [.admin]) { _, _, caller in try respond(try await core.rotateCA(by: caller)) }
        route(router, .post, APIPath.adminCARetireOld, [.admin]) { _, _, caller in try respond(try await core.retireOldCA(by: caller)) }
        route(router, .get, APIPath.adminAudit, [.admin]) { request, _, _ in
            let after = try Self.integer(request, "after", in: 0...Int.max) ?? 0
            let limit = try Self.integer(request, "limit", in: 1...10_000) ?? 1000
            return try respond(try await core.audit(after: Int64(after), limit: limit))
        }
        route(router, .get, APIPath.adminKeys, [.admin]) { request, _, _ in
            let after = try request.uri.queryParameters.get("after").map { text -> KeyID in
                guard let id = KeyID(String(text)) else {
                    throw KeyholdError(.invalidRequest, "after is not a key id", hint: "pass the 'next' of the previous page")
                }
                return id
            }
            let limit = try Self.integer(request, "limit", in: 1...10_000) ?? 1000
            return try respond(try await core.keys(after: after, limit: limit))
        }
        route(router, .post, APIPath.adminKeysExport, [.admin]) { [logger] request, _, caller in
            let body = try await decode(ExportRequest.self, request)
            try await core.checkExport(body)
            // From here on the answer is the file: a failure closes the connection before the
            // final chunk, so the client sees an incomplete transfer, never a short file.
            return Response(
                status: .ok, headers: [.contentType: "application/octet-stream"],
                body: ResponseBody { writer in
                    do {
                        try await core.export(body, by: caller) { bytes in try await writer.write(ByteBuffer(bytes: bytes)) }
                    } catch {
                        logger.error("export failed mid-stream", metadata: ["error": "\(error)"])
                        throw error
                    }
                    try await writer.finish(nil)
                })
        }
        route(router, .post, APIPath.adminKeysImport, [.admin]) { request, _, caller in
            guard let field = HTTPField.Name(TransferPassword.header), let encoded = request.headers[field],
                let bytes = Data(base64Encoded: encoded), let password = String(data: bytes, encoding: .utf8)
            else {
                throw KeyholdError(
                    .invalidRequest, "the import names no password (header \(TransferPassword.header), base64)",
                    hint: "use 'keyhold-server key import'"
                )
            }
            let spool = try await Spool.receive(request.body, into: core.spoolDirectory, limit: 8 << 30)
            defer { try? FileManager.default.removeItem(atPath: spool) }
            return try respond(try await core.importFile(at: spool, password: password, by: caller))
        }
        for (suffix, blocked) in [("block", true), ("unblock", false)] {
            route(router, .post, "/v1/admin/keys/:id/\(suffix)", [.admin]) { _, context, caller in
                try await core.block(try Self.keyID(context), blocked: blocked, by: caller)
                return Response(status: .noContent)
            }
        }
        route(router, .post, APIPath.adminKeysOfflineResponse, [.admin]) { request, _, caller in
            try respond(try await core.respondOffline(try await decode(OfflineRespondRequest.self, request), by: caller))
        }
        route(router, .post, "/v1/admin/keys/:id/reveal", [.admin]) { request, context, caller in
            let id = try Self.keyID(context)
            return try respond(try await core.reveal(id, reason: try await decode(RevealRequest.self, request).reason, by: caller))
        }
        route(router, .post, "/v1/admin/keys/:id/destroy", [.admin]) { request, context, caller in
            let id = try Self.keyID(context)
            return try respond(try await core.destroyKey(id, try await decode(KeyDestroyRequest.self, request), by: caller))
        }
        route(router, .get, APIPath.adminClients, [.admin]) { _, _, _ in try respond(try await core.clients()) }
        route(router, .get, APIPath.adminAdministrators, [.admin]) { _, _, _ in try respond(try await core.administrators()) }
        route(router, .post, APIPath.adminAdministrators, [.admin]) { request, _, caller in
            try respond(try await core.addAdministrator(try await decode(AdministratorCreateRequest.self, request), by: caller), status: .created)
        }
        route(router, .post, "/v1/admin/administrators/:id/revoke", [.admin]) { _, context, caller in
            guard let text = context.parameters.get("id"), let id = ClientID(text) else {
                throw KeyholdError(.invalidRequest, "the path does not name a valid client id", hint: "ids are lowercase UUIDs")
            }
            try await core.revokeAdministrator(id, by: caller)
            return Response(status: .noContent)
        }
        route(router, .post, "/v1/admin/clients/:id/revoke", [.admin]) { _, context, caller in
            guard let text = context.parameters.get("id"), let id = ClientID(text) else {
                throw KeyholdError(.invalidRequest, "the path does not name a valid client id", hint: "ids are lowercase UUIDs")
            }
            try await core.revoke(id, by: caller)
            return Response(status: .noContent)
        }
        route(router, .post, "/v1/admin/clients/:id/delete", [.admin]) { _, context, caller in
            guard let text = context.parameters.get("id"), let id = ClientID(text) else {
                throw KeyholdError(.invalidRequest, "the path does not name a valid client id", hint: "ids are lowercase UUIDs")
            }
            return try respond(try await core.deleteClient(id, by: caller))
        }
        route(router, .post, APIPath.adminTokens, [.admin]) { request, _, caller in
            try respond(try await core.createToken(try await decode(TokenCreateRequest.self, request), by: caller), status: .created)
        }
        route(router, .get, APIPath.adminTokens, [.admin]) { _, _, _ in try respond(try await core.tokens()) }
        route(router, .post, "/v1/admin/tokens/:id/revoke", [.admin]) { _, context, caller in
            guard let text = context.parameters.get("id"), let id = TokenID(text) else {
                throw KeyholdError(.invalidRequest, "the path does not name a valid token id", hint: "see 'keyhold-server token list'")
            }
            try await core.revokeToken(id, by: caller)
            return Response(status: .noContent)
        }
        route(router, .post, APIPath.adminPrimary, [.admin]) { request, _, _ in
            try respond(try await core.hierarchy.join(tokenText: try await decode(JoinRequest.self, request).token))
        }
        route(router, .delete, APIPath.adminPrimary, [.admin]) { _, _, _ in
            try await core.hierarchy.leave()
            return Response(status: .noContent)
        }
        route(router, .post, APIPath.adminHierarchy, [.admin]) { request, _, caller in
            try respond(try await core.setHierarchy(try await decode(HierarchyOptionRequest.self, request), by: caller))
        }
        route(router, .get, APIPath.adminReleases, [.admin]) { request, _, _ in
            let states: Set<ApprovalState>
            switch request.uri.queryParameters.get("state").map({ String($0) }) ?? "open" {
            case "open": states = ApprovalState.open
            case "all": states = Set(ApprovalState.allCases)
            case let name:
                guard let state = ApprovalState(rawValue: name) else {
                    throw KeyholdError(
                        .invalidRequest, "state=\(name) is not open, all or one of \(ApprovalState.allCases.map(\.rawValue).joined(separator: ", "))",
                        hint: "see docs/spec/protocol.md")
                }
                states = [state]
            }
            let limit = try Self.integer(request, "limit", in: 1...10_000) ?? 1000
            return try respond(try await core.approvals(states: states, limit: limit))
        }
        for decision in ["approve", "deny"] {
            route(router, .post, "/v1/admin/releases/:id/\(decision)", [.admin]) { request, context, caller in
                guard let text = context.parameters.get("id"), let id = ApprovalID(text) else {
                    throw KeyholdError(.invalidRequest, "the path does not name a valid request id", hint: "ids are lowercase UUIDs")
                }
                let body = try await decode(ApprovalDecisionRequest.self, request)
                return try respond(try await core.decide(id, approve: decision == "approve", reason: body.reason, by: caller))
            }
        }
        route(router, .post, APIPath.adminHierarchySync, [.admin]) { _, _, _ in try respond(try await core.hierarchy.sync()) }
        route(router, .get, APIPath.adminHierarchyTree, [.admin]) { _, _, _ in try respond(try await core.hierarchyTree()) }
        route(router, .get, "/v1/admin/explain/:id", [.admin]) { request, context, _ in
            let device = try request.uri.queryParameters.get("device").map { text -> ClientID in
                guard let id = ClientID(text) else { throw KeyholdError(.invalidRequest, "device is not a device id", hint: "ids are UUIDs") }
                return id
            }
            return try respond(try await core.explain(try Self.keyID(context), device: device))
        }
        return router
    }

    // MARK: Route kinds

    /// A route that `roles` may call, for authenticated callers.
    private func route(
        _ router: Router<Context>, _ method: HTTPRequest.Method, _ path: String, _ roles: Set<ClientRole>,
        _ body: @escaping @Sendable (Request, Context, Caller) async throws -> Response
    ) {
        router.on(
            RouterPath(path), method: method,
            use: handle { [core] request, context in
                let peer = try await Self.peer(request, context, roles)
                return try await body(request, context, try await core.authenticate(peer))
            })
    }

    /// A key release that `roles` may call: the enrollment is checked in the release statement.
    /// Malformed requests authenticate first, so a refused caller hears why it is refused.
    private func release(
        _ router: Router<Context>, _ path: String, _ roles: Set<ClientRole>,
        _ body: @escaping @Sendable (Request, Context, Peer) async throws -> (KeyMaterial, hops: Int?)
    ) {
        router.get(
            RouterPath(path),
            use: handle { [core] request, context in
                let peer = try await Self.peer(request, context, roles)
                let route = peer.role == .server ? "secondary" : "device"
                let key: KeyMaterial
                let hops: Int?
                do {
                    (key, hops) = try await body(request, context, peer)
                    core.metrics.release(route: route, result: "ok")
                } catch let error as KeyholdError {
                    core.metrics.release(route: route, result: error.code.rawValue)
                    if error.code == .invalidRequest { _ = try await core.authenticate(peer) }
                    throw error
                }
                var response: Response
                if let json = key.wireJSON() {
                    response = Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: json)))
                } else {
                    response = try respond(key)
                }
                if let hops, let field = HTTPField.Name(APIPath.hopsHeader) { response.headers[field] = String(hops) }
                return response
            })
    }

    /// The peer of the connection, if its certificate names one of `roles`.
    private static func peer(_ request: Request, _ context: Context, _ roles: Set<ClientRole>) async throws -> Peer {
        guard let peer = await context.peer(for: request) else {
            throw KeyholdError(
                .unauthenticated, "the client certificate names no Keyhold identity", hint: "use the certificate this server issued at enrollment"
            )
        }
        guard roles.contains(peer.role) else {
            throw KeyholdError(
                .forbidden, "a \(peer.role) certificate may not use this endpoint",
                hint: "use a \(roles.map(\.rawValue).sorted().joined(separator: " or ")) certificate"
            )
        }
        return peer
    }

    // MARK: Helpers

    /// Wraps a handler so every thrown error becomes a JSON error response with its status.
    private func handle(
        _ body: @escaping @Sendable (Request, Context) async throws -> Response
    ) -> @Sendable (Request, Context) async throws -> Response {
        { [logger] request, context in
            do {
                return try await body(request, context)
            } catch let error as KeyholdError {
                return try respond(ErrorBody(error), status: HTTPResponse.Status(code: ErrorStatus.httpStatus(for: error.code)))
            } catch let limited as RateLimited {
                var response = try respond(ErrorBody(limited.error), status: .tooManyRequests)
                response.headers[.retryAfter] = "\(limited.retryAfter)"
                return response
            } catch {
                logger.error("request failed", metadata: ["path": "\(request.uri.path)", "error": "\(error)"])
                let internalError = KeyholdError(.internalError, "the server failed to handle the request", hint: "see the server's log")
                return try respond(ErrorBody(internalError), status: .internalServerError)
            }
        }
    }

    private static func keyID(_ context: Context) throws -> KeyID {
        guard let text = context.parameters.get("id"), let id = KeyID(text) else {
            throw KeyholdError(.invalidRequest, "the path does not name a valid key id", hint: "key ids are lowercase UUIDs")
        }
        return id
    }

    /// The `chain` query parameter of a hierarchy request: the servers already on its route.
    private static func chain(_ request: Request) throws -> [ServerID] {
        try (request.uri.queryParameters.get("chain") ?? "").split(separator: ",").map { part -> ServerID in
            guard let id = ServerID(String(part)) else {
                throw KeyholdError(.invalidRequest, "chain holds an invalid server id", hint: "see docs/spec/hierarchy.md")
            }
            return id
        }
    }

    /// The query parameter `name` as an integer in `range`, or nil when absent.
    private static func integer(_ request: Request, _ name: String, in range: ClosedRange<Int>) throws -> Int? {
        guard let text = request.uri.queryParameters.get(name) else { return nil }
        guard let value = Int(String(text)), range.contains(value) else {
            throw KeyholdError(
                .invalidRequest, "the query parameter \(name)=\(text) is not an integer from \(range.lowerBound) to \(range.upperBound)",
                hint: "see docs/spec/protocol.md"
            )
        }
        return value
    }
}

/// A JSON answer.
func respond<T: Encodable>(_ value: T, status: HTTPResponse.Status = .ok) throws -> Response {
    let data = try WireFormat.encoder().encode(value)
    return Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
}

/// Decodes a JSON body of at most `limit` bytes (1 MiB; pushes of up to 10000 keys get 8 MiB).
func decode<T: Decodable>(_ type: T.Type, _ request: Request, limit: Int = 1 << 20) async throws -> T {
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

/// Uploaded files, written to a private file in the data directory as they arrive.
enum Spool {
    static func receive(_ body: RequestBody, into directory: String, limit: Int) async throws -> String {
        let path = "\(directory)/import-\(UUID().uuidString.lowercased()).spool"
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw KeyholdError(
                .ioFailed, "cannot create a spool file in \(directory): errno \(errno)", hint: "check the data directory's free space and permissions"
            )
        }
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
