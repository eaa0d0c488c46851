import AsyncHTTPClient
import Foundation
import KeyholdCore
import KeyholdProtocol
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import NIOSSL
import SwiftASN1
import X509

/// A JSON-over-HTTPS client for a Keyhold server, with mutual TLS when given a certificate.
///
/// The server is trusted only through `caPEM` (its own CA), never the system trust store. Every call
/// has a bounded timeout; errors become ``KeyholdError``s with the server's code, message and hint,
/// or `unreachable` when no answer came.
public final class APIClient: Sendable {
    private let http: HTTPClient
    private let base: String
    private let timeout: TimeAmount
    /// When this client's certificate expires, and what to do then: every request checks it first,
    /// so an expired certificate is named as such rather than as a failed TLS handshake.
    private let certificateExpires: Date?
    private let expiredHint: String

    /// - Parameters:
    ///   - address: `host:port` of the server.
    ///   - caPEM: the server's CA certificate.
    ///   - certificatePEM/keyPEM: this client's certificate and key (omit for the enrollment listener).
    ///   - verifyHostname: check the server certificate's names (on for the API; the enrollment
    ///     listener is reached before names are known to match, and is pinned by the CA alone).
    public init(
        address: String, caPEM: String, certificatePEM: String? = nil, keyPEM: String? = nil,
        verifyHostname: Bool = true, timeout: Duration = .seconds(15), maximumConnections: Int = 8,
        expiredHint: String = "have this client's certificate issued again by the server"
    ) throws {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMBytes(Array(caPEM.utf8)))
        tls.certificateVerification = verifyHostname ? .fullVerification : .noHostnameVerification
        if let certificatePEM, let keyPEM {
            tls.certificateChain = try NIOSSLCertificate.fromPEMBytes(Array(certificatePEM.utf8)).map { .certificate($0) }
            tls.privateKey = .privateKey(try NIOSSLPrivateKey(bytes: Array(keyPEM.utf8), format: .pem))
        }
        let seconds = Int64(timeout.components.seconds)
        var config = HTTPClient.Configuration(tlsConfiguration: tls)
        config.timeout = .init(connect: .seconds(min(seconds, 10)), read: .seconds(seconds))
        config.connectionPool.concurrentHTTP1ConnectionsPerHostSoftLimit = maximumConnections
        self.http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: config)
        self.base = "https://\(address)"
        self.timeout = .seconds(seconds)
        self.certificateExpires = certificatePEM.flatMap { try? Certificate(pemEncoded: $0) }?.notValidAfter
        self.expiredHint = expiredHint
    }

    /// Throws `certificate_expired` once this client's certificate has expired.
    private func checkCertificate() throws {
        guard let certificateExpires, certificateExpires <= Date() else { return }
        throw KeyholdError(
            .certificateExpired,
            "this client's certificate for \(base.dropFirst("https://".count)) expired at \(ISO8601DateFormatter().string(from: certificateExpires)) (it was not renewed in time)",
            hint: expiredHint)
    }

    /// Fetches the CA certificate from an enrollment listener without trusting it yet: the caller
    /// must compare its fingerprint with the one in the token before using it.
    public static func fetchCA(address: String, timeout: Duration = .seconds(10)) async throws -> String {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.certificateVerification = .none
        let http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: .init(tlsConfiguration: tls))
        let request = HTTPClientRequest(url: "https://\(address)\(APIPath.ca)")
        do {
            let response = try await http.execute(request, timeout: .seconds(Int64(timeout.components.seconds)))
            let body = try await response.body.collect(upTo: 64 * 1024)
            try? await http.shutdown()
            guard response.status == .ok else {
                throw KeyholdError(.unreachable, "\(address) answered \(response.status.code) for its CA", hint: "check the address in the token")
            }
            return String(buffer: body)
        } catch let error as KeyholdError {
            throw error
        } catch {
            try? await http.shutdown()
            throw Self.unreachable(address, error)
        }
    }

    /// GET `path` and decode the answer.
    public func get<R: Decodable>(_ path: String, as: R.Type = R.self) async throws -> R {
        try decode(try await send(path, method: .GET, body: nil).data)
    }

    /// GET `path`, decode the answer, and return the answer's header `name` too (nil when absent).
    public func get<R: Decodable>(_ path: String, as: R.Type = R.self, header name: String) async throws -> (R, String?) {
        let (data, headers) = try await send(path, method: .GET, body: nil)
        return (try decode(data), headers.first(name: name))
    }

    /// PUT a JSON body and decode the answer.
    public func put<B: Encodable, R: Decodable>(_ path: String, _ body: B, as: R.Type = R.self) async throws -> R {
        try decode(try await send(path, method: .PUT, body: try WireFormat.encoder().encode(body)).data)
    }

    /// POST a JSON body and decode the answer.
    public func post<B: Encodable, R: Decodable>(_ path: String, _ body: B, as: R.Type = R.self) async throws -> R {
        try decode(try await send(path, method: .POST, body: try WireFormat.encoder().encode(body)).data)
    }

    /// DELETE, expecting no content back.
    public func delete(_ path: String) async throws {
        _ = try await send(path, method: .DELETE, body: nil)
    }

    /// POST with a JSON body, expecting no content back.
    public func post<B: Encodable>(_ path: String, _ body: B) async throws {
        _ = try await send(path, method: .POST, body: try WireFormat.encoder().encode(body))
    }

    /// POST without a body, expecting no content back.
    public func post(_ path: String) async throws {
        _ = try await send(path, method: .POST, body: nil)
    }

    /// POSTs a JSON body and streams the binary answer into `receive`, a piece at a time. Throws
    /// when the transfer ends early (the server failed mid-way): the caller must then discard what
    /// it received.
    public func download<B: Encodable>(_ path: String, _ body: B, receive: ([UInt8]) async throws -> Void) async throws {
        try checkCertificate()
        var request = HTTPClientRequest(url: base + path)
        request.method = .POST
        request.headers.add(name: "content-type", value: "application/json")
        request.body = .bytes(ByteBuffer(data: try WireFormat.encoder().encode(body)))
        let response: HTTPClientResponse
        do {
            response = try await http.execute(request, timeout: timeout)
        } catch {
            throw Self.unreachable(String(base.dropFirst("https://".count)), error)
        }
        guard response.status == .ok else {
            let data = Data(buffer: (try? await response.body.collect(upTo: 1 << 20)) ?? ByteBuffer())
            throw Self.failure(response.status.code, data)
        }
        do {
            for try await piece in response.body { try await receive(Array(piece.readableBytesView)) }
        } catch let error as KeyholdError {
            throw error
        } catch {
            throw KeyholdError(
                .unreachable, "the transfer from the server ended early: \(error)", hint: "see the server's log, then run the command again")
        }
    }

    /// POSTs the file at `file` as the body (streamed, with `headers`) and decodes the JSON answer.
    /// `progress` gets the bytes sent so far.
    public func upload<R: Decodable>(
        _ path: String, file: String, headers: [(String, String)], as: R.Type = R.self, progress: @escaping @Sendable (Int) -> Void = { _ in }
    ) async throws -> R {
        try checkCertificate()
        guard let attributes = try? FileManager.default.attributesOfItem(atPath: file), let size = attributes[.size] as? Int,
            FileManager.default.isReadableFile(atPath: file)
        else {
            throw KeyholdError(.ioFailed, "cannot read \(file)", hint: "check the path and its permissions")
        }
        var request = HTTPClientRequest(url: base + path)
        request.method = .POST
        request.headers.add(name: "content-type", value: "application/octet-stream")
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        request.body = .stream(FileChunks(path: file, progress: progress), length: .known(Int64(size)))
        let response: HTTPClientResponse
        let data: Data
        do {
            response = try await http.execute(request, timeout: timeout)
            data = Data(buffer: try await response.body.collect(upTo: 64 << 20))
        } catch let error as KeyholdError {
            throw error
        } catch {
            throw Self.unreachable(String(base.dropFirst("https://".count)), error)
        }
        guard (200..<300).contains(Int(response.status.code)) else { throw Self.failure(response.status.code, data) }
        return try decode(data)
    }

    /// Closes the client's connections; call once, when done.
    public func shutdown() async {
        try? await http.shutdown()
    }

    /// Runs `body` with this client, then shuts the client down, also when `body` throws.
    public func using<T>(_ body: (APIClient) async throws -> T) async throws -> T {
        do {
            let result = try await body(self)
            await shutdown()
            return result
        } catch {
            await shutdown()
            throw error
        }
    }

    private func decode<R: Decodable>(_ data: Data) throws -> R {
        do {
            return try WireFormat.decoder().decode(R.self, from: data)
        } catch {
            throw KeyholdError(.internalError, "the server's answer is not a valid \(R.self)", hint: "check that client and server versions match")
        }
    }

    private func send(_ path: String, method: HTTPMethod, body: Data?) async throws -> (data: Data, headers: HTTPHeaders) {
        try checkCertificate()
        var request = HTTPClientRequest(url: base + path)
        request.method = method
        if let body {
            request.headers.add(name: "content-type", value: "application/json")
            request.body = .bytes(ByteBuffer(data: body))
        }
        let response: HTTPClientResponse
        let data: Data
        do {
            response = try await http.execute(request, timeout: timeout)
            data = Data(buffer: try await response.body.collect(upTo: 64 << 20))
        } catch {
            throw Self.unreachable(String(base.dropFirst("https://".count)), error)
        }
        // 202 is `pending_approval`: an error body for a request that is queued, not answered.
        guard (200..<300).contains(Int(response.status.code)), response.status.code != 202 else { throw Self.failure(response.status.code, data) }
        return (data, response.headers)
    }

    /// The error an unsuccessful answer carries.
    static func failure(_ status: UInt, _ data: Data) -> KeyholdError {
        if let e = try? WireFormat.decoder().decode(ErrorBody.self, from: data) { return e.error }
        return KeyholdError(.internalError, "the server answered HTTP \(status)", hint: "see the server's log")
    }

    static func unreachable(_ address: String, _ error: any Error) -> KeyholdError {
        let text = "\(error)"
        if text.contains("certificate") || text.contains("handshake") || text.contains("TLS") || text.contains("SSL") {
            return KeyholdError(
                .unreachable, "the TLS handshake with \(address) failed: \(text)",
                hint: "check that this client's certificate was issued by that server and is not revoked")
        }
        return KeyholdError(
            .unreachable, "cannot reach the Keyhold server at \(address): \(text)", hint: "check that the server is running and the address is right")
    }
}

/// A file as a sequence of 1 MiB buffers, for streamed uploads.
struct FileChunks: AsyncSequence, Sendable {
    typealias Element = ByteBuffer
    let path: String
    let progress: @Sendable (Int) -> Void

    struct AsyncIterator: AsyncIteratorProtocol {
        let handle: FileHandle?
        let progress: @Sendable (Int) -> Void
        var sent = 0

        mutating func next() async throws -> ByteBuffer? {
            guard let handle else { throw KeyholdError(.ioFailed, "cannot open the file to send", hint: "check the path and its permissions") }
            guard let data = try handle.read(upToCount: 1 << 20), !data.isEmpty else {
                try? handle.close()
                return nil
            }
            sent += data.count
            progress(sent)
            return ByteBuffer(data: data)
        }
    }

    func makeAsyncIterator() -> AsyncIterator { AsyncIterator(handle: FileHandle(forReadingAtPath: path), progress: progress) }
}
