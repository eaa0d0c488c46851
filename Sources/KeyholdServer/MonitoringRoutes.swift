import Foundation
import Hummingbird
import KeyholdCore
import KeyholdProtocol
import KeyholdStore
import Logging
import NIOCore

/// Health, readiness and metrics (docs/operations.md, "Watching it run").
extension ServerAPI {
    /// The plain-HTTP metrics listener: `/metrics`, `/v1/health`, `/v1/ready`. It serves no key
    /// and no identity, so it needs no TLS; bind it to an address only the scraper reaches.
    func metricsRouter() -> Router<Context> {
        let router = Router(context: Context.self)
        router.add(middleware: RequestRecorder(metrics: core.metrics, listener: "metrics", logger: logger))
        let core = core
        router.get(RouterPath(APIPath.health)) { _, _ in "ok\n" }
        router.get(RouterPath(APIPath.ready)) { _, _ in try await Self.readiness(core) }
        router.get(RouterPath(APIPath.metrics)) { _, _ in
            core.metrics.refresh(try await Self.scrapeState(core))
            return Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: .init(byteBuffer: ByteBuffer(bytes: core.metrics.text())))
        }
        return router
    }

    /// `200 ready` when the database answers and every listener accepts connections (the
    /// migrations ran before any listener started), else `503` with the reason.
    static func readiness(_ core: ServerCore) async throws -> Response {
        var reason: String?
        if !(await core.addresses.allBound) { reason = "not every listener accepts connections yet" }
        if let problem = await core.masterKeyRotation?.problem { reason = problem }
        do {
            _ = try await core.repository.setting(Hierarchy.cursorSetting)
        } catch {
            reason = "the database does not answer: \(error)"
        }
        guard let reason else { return Response(status: .ok, body: .init(byteBuffer: ByteBuffer(string: "ready\n"))) }
        return Response(status: .serviceUnavailable, body: .init(byteBuffer: ByteBuffer(string: "not ready: \(PrintableText.escaped(reason))\n")))
    }

    /// The state the gauges show, read when a scrape arrives.
    static func scrapeState(_ core: ServerCore) async throws -> ScrapeState {
        let clients = try await core.repository.listClients(role: .device)
        var devices = Dictionary(uniqueKeysWithValues: EnrollmentState.allCases.map { ($0.rawValue, 0) })
        for client in clients { devices[client.state.rawValue, default: 0] += 1 }
        // The CA, the TLS certificate, and the administrators' certificate that expires first (the
        // one whose alert comes first).
        var expiry: [String: Date] = [:]
        for certificate in await core.ownCertificates(administrators: try await core.repository.listClients(role: .admin))
        where ["ca", "tls", "administrator"].contains(certificate.kind) {
            expiry[certificate.kind] = min(expiry[certificate.kind] ?? .distantFuture, certificate.expires)
        }
        let statistics = core.repository.statistics
        return ScrapeState(
            devices: devices, keys: try await core.repository.keyCount(),
            driftedKeys: try await core.repository.driftedEscrowCheckCount(), databaseInFlight: statistics.inFlight,
            databaseConnections: statistics.connections, certificateExpiry: expiry,
            hierarchy: try await core.hierarchy.gauges())
    }
}

/// Times every request, counts it by listener, method, route template (the path with `{id}` in
/// it, never the ids) and status, and logs it at `info` in one line with the caller's identity
/// (`device:ID`, `admin:ID`, … or `anonymous`) — never a body, a secret or a query string.
struct RequestRecorder<Context: PeerContext>: RouterMiddleware {
    let metrics: ServerMetrics
    let listener: String
    let logger: Logger

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let start = ContinuousClock.now
        do {
            let response = try await next(request, context)
            await record(request, context, status: response.status.code, since: start)
            return response
        } catch {
            await record(request, context, status: (error as? any HTTPResponseError)?.status.code ?? 500, since: start)
            throw error
        }
    }

    private func record(_ request: Request, _ context: Context, status: Int, since start: ContinuousClock.Instant) async {
        let duration = ContinuousClock.now - start
        let route = context.endpointPath ?? "unmatched"
        metrics.request(listener: listener, method: request.method.rawValue, route: route, status: status, duration: duration)
        guard logger.logLevel <= .info else { return }
        let actor = await context.peer(for: request)?.actor.description ?? "anonymous"
        let milliseconds = duration / .milliseconds(1)
        logger.info(
            "request",
            metadata: [
                "listener": "\(listener)", "method": "\(request.method.rawValue)", "route": "\(route)", "status": "\(status)",
                "duration_ms": "\(String(format: "%.3f", milliseconds))", "actor": "\(actor)",
            ])
    }
}
