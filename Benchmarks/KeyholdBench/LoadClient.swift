import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

/// A lean load generator: `connections` keep-alive mutual-TLS HTTP/1.1 connections on SwiftNIO
/// event loops, each sending its next GET as soon as the previous answer ends. It spends far less
/// CPU per request than a general-purpose client, which matters when client, server and database
/// share two cores: what the client burns, the server cannot use.
enum LoadClient {
    struct Outcome {
        var latenciesMs: [Double]
        var errors: Int
        var seconds: Double
    }

    static func run(
        host: String, port: Int, caPEM: String, certificatePEM: String, keyPEM: String,
        connections: Int, seconds: Double, path: @escaping @Sendable () -> String
    ) async throws -> Outcome {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMBytes(Array(caPEM.utf8)))
        tls.certificateChain = try NIOSSLCertificate.fromPEMBytes(Array(certificatePEM.utf8)).map { .certificate($0) }
        tls.privateKey = .privateKey(try NIOSSLPrivateKey(bytes: Array(keyPEM.utf8), format: .pem))
        tls.certificateVerification = .noHostnameVerification
        let context = try NIOSSLContext(configuration: tls)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: System.coreCount)
        do {
            let outcome = try await measure(
                group: group, context: context, host: host, port: port, connections: connections, seconds: seconds, path: path)
            try? await group.shutdownGracefully()
            return outcome
        } catch {
            try? await group.shutdownGracefully()
            throw error
        }
    }

    private static func measure(
        group: MultiThreadedEventLoopGroup, context: NIOSSLContext, host: String, port: Int,
        connections: Int, seconds: Double, path: @escaping @Sendable () -> String
    ) async throws -> Outcome {

        let start = NIODeadline.now()
        let end = start + .milliseconds(Int64(seconds * 1000))
        var futures: [EventLoopFuture<(latencies: [Double], errors: Int)>] = []
        for _ in 0..<connections {
            let loop = group.next()
            let done = loop.makePromise(of: (latencies: [Double], errors: Int).self)
            let bootstrap = ClientBootstrap(group: loop).channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: context, serverHostname: nil))
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(Driver(host: host, end: end, path: path, done: done))
                }
            }
            bootstrap.connect(host: host, port: port).whenFailure { done.fail($0) }
            futures.append(done.futureResult)
        }
        var latencies: [Double] = []
        var errors = 0
        for f in futures {
            let r = try await f.get()
            latencies += r.latencies
            errors += r.errors
        }
        let elapsed = Double((NIODeadline.now() - start).nanoseconds) / 1e9
        return Outcome(latenciesMs: latencies.sorted(), errors: errors, seconds: elapsed)
    }

    /// One connection: request, wait for the whole answer, record, repeat until the deadline.
    private final class Driver: ChannelInboundHandler, RemovableChannelHandler {
        typealias InboundIn = HTTPClientResponsePart
        typealias OutboundOut = HTTPClientRequestPart

        let host: String
        let end: NIODeadline
        let path: @Sendable () -> String
        let done: EventLoopPromise<(latencies: [Double], errors: Int)>
        var latencies: [Double] = []
        var errors = 0
        var sent = NIODeadline.now()
        var ok = false
        var finished = false

        init(host: String, end: NIODeadline, path: @escaping @Sendable () -> String, done: EventLoopPromise<(latencies: [Double], errors: Int)>) {
            self.host = host
            self.end = end
            self.path = path
            self.done = done
            latencies.reserveCapacity(100_000)
        }

        func channelActive(context: ChannelHandlerContext) {
            send(context)
        }

        private func send(_ context: ChannelHandlerContext) {
            var head = HTTPRequestHead(version: .http1_1, method: .GET, uri: path())
            head.headers.add(name: "Host", value: host)
            sent = .now()
            context.write(wrapOutboundOut(.head(head)), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let head):
                ok = head.status == .ok
            case .body:
                break
            case .end:
                let now = NIODeadline.now()
                latencies.append(Double((now - sent).nanoseconds) / 1e6)
                if !ok { errors += 1 }
                if now < end {
                    send(context)
                } else {
                    finish(.success((latencies, errors)))
                    context.close(promise: nil)
                }
            }
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            finish(.failure(error))
            context.close(promise: nil)
        }

        func channelInactive(context: ChannelHandlerContext) {
            finish(.failure(ChannelError.ioOnClosedChannel))
        }

        private func finish(_ result: Swift.Result<(latencies: [Double], errors: Int), any Error>) {
            guard !finished else { return }
            finished = true
            done.completeWith(result)
        }
    }
}
