import Foundation
import HummingbirdCore
import Logging
import NIOCore
import NIOSSL
import NIOTLS
import SwiftASN1
import Synchronization
import X509

/// The limits of one listener (docs/operations.md, "Connection limits"). A connection over a cap
/// is closed as soon as it is accepted, before any TLS byte is read.
public struct ConnectionLimits: Sendable, Equatable {
    /// Connections the listener holds at once.
    public var maxConnections: Int
    /// Connections one source address may hold at once (see ``perAddressUntilHandshake``).
    public var maxPerAddress: Int
    /// When true the per-address cap counts only connections still in their TLS handshake (the
    /// API listener: devices behind one NAT share an address, and an authenticated connection is
    /// bounded by the total cap and the idle timeout). When false it counts every connection (the
    /// enrollment listener, where nobody is authenticated).
    public var perAddressUntilHandshake: Bool
    /// Time a connection has to finish its TLS handshake.
    public var handshakeTimeout: Duration
    /// Time a connection may stay open without a request.
    public var idleTimeout: Duration

    /// Limits for a listener.
    public init(maxConnections: Int, maxPerAddress: Int, perAddressUntilHandshake: Bool, handshakeTimeout: Duration, idleTimeout: Duration) {
        self.maxConnections = maxConnections
        self.maxPerAddress = maxPerAddress
        self.perAddressUntilHandshake = perAddressUntilHandshake
        self.handshakeTimeout = handshakeTimeout
        self.idleTimeout = idleTimeout
    }

    /// The mutual-TLS API listener's defaults.
    public static let apiDefault = ConnectionLimits(
        maxConnections: 4096, maxPerAddress: 64, perAddressUntilHandshake: true, handshakeTimeout: .seconds(10), idleTimeout: .seconds(120))
    /// The enrollment listener's defaults.
    public static let enrollmentDefault = ConnectionLimits(
        maxConnections: 256, maxPerAddress: 8, perAddressUntilHandshake: false, handshakeTimeout: .seconds(10), idleTimeout: .seconds(30))
    /// The metrics listener's (a scraper or two, a load balancer's checks).
    public static let metricsDefault = ConnectionLimits(
        maxConnections: 64, maxPerAddress: 16, perAddressUntilHandshake: false, handshakeTimeout: .seconds(10), idleTimeout: .seconds(60))
}

/// The open connections of one listener, shared by its event loops.
final class ConnectionCounter: Sendable {
    private struct State {
        var total = 0
        var perAddress: [String: Int] = [:]
        var refusedSinceLog = 0
        var lastLog = ContinuousClock.now - .seconds(3600)
    }

    let name: String
    let limits: ConnectionLimits
    private let logger: Logger
    private let state = Mutex(State())

    init(name: String, limits: ConnectionLimits, logger: Logger) {
        self.name = name
        self.limits = limits
        self.logger = logger
    }

    /// Takes a place for a new connection from `address`, or refuses it (false).
    func admit(_ address: String) -> Bool {
        let (admitted, report) = state.withLock { s -> (Bool, Int?) in
            if s.total < limits.maxConnections, s.perAddress[address, default: 0] < limits.maxPerAddress {
                s.total += 1
                s.perAddress[address, default: 0] += 1
                return (true, nil)
            }
            s.refusedSinceLog += 1
            let now = ContinuousClock.now
            guard now - s.lastLog >= .seconds(60) else { return (false, nil) }
            defer {
                s.refusedSinceLog = 0
                s.lastLog = now
            }
            return (false, s.refusedSinceLog)
        }
        if let report {
            // At most one line a minute, however many connections are refused.
            logger.warning(
                "refusing connections over the listener's caps",
                metadata: [
                    "listener": "\(name)", "refused": "\(report)", "max_connections": "\(limits.maxConnections)",
                    "max_per_address": "\(limits.maxPerAddress)",
                ])
        }
        return admitted
    }

    /// The connection from `address` finished its handshake.
    func handshakeCompleted(_ address: String) {
        guard limits.perAddressUntilHandshake else { return }
        state.withLock { Self.release(address, in: &$0.perAddress) }
    }

    /// An admitted connection closed.
    func closed(_ address: String, handshakeCompleted: Bool) {
        state.withLock { s in
            s.total -= 1
            if !(limits.perAddressUntilHandshake && handshakeCompleted) { Self.release(address, in: &s.perAddress) }
        }
    }

    /// Connections open now (for tests and status).
    var open: Int { state.withLock { $0.total } }

    private static func release(_ address: String, in counts: inout [String: Int]) {
        let left = counts[address, default: 1] - 1
        counts[address] = left > 0 ? left : nil
    }
}

/// The first handler of every accepted connection: takes a place in the listener's counter or
/// closes the connection at once, and closes a connection whose TLS handshake does not finish in
/// time.
final class ConnectionGuardHandler: ChannelInboundHandler {
    typealias InboundIn = NIOAny

    private let counter: ConnectionCounter
    private let plain: Bool
    private var address = ""
    private var admitted = false
    private var handshaken = false
    private var timer: Scheduled<Void>?

    /// `plain`: no TLS, so the connection counts as handshaken once admitted.
    init(counter: ConnectionCounter, plain: Bool = false) {
        self.counter = counter
        self.plain = plain
    }

    func channelActive(context: ChannelHandlerContext) {
        address = context.channel.remoteAddress?.ipAddress ?? "unknown"
        guard counter.admit(address) else {
            context.close(promise: nil)
            return
        }
        admitted = true
        if plain {
            handshakeCompleted()
            context.fireChannelActive()
            return
        }
        let channel = context.channel
        timer = context.eventLoop.scheduleTask(in: .nanoseconds(Int64(counter.limits.handshakeTimeout.nanoseconds))) {
            channel.close(promise: nil)
        }
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        if admitted {
            admitted = false
            counter.closed(address, handshakeCompleted: handshaken)
        }
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // A refused connection is closing; nothing it sent is read.
        if admitted { context.fireChannelRead(data) }
    }

    /// Called by ``HandshakeWatcher`` (same channel, same event loop).
    func handshakeCompleted() {
        guard admitted, !handshaken else { return }
        handshaken = true
        timer?.cancel()
        timer = nil
        counter.handshakeCompleted(address)
    }
}

/// Sits after the TLS handler and tells the guard when the handshake completed.
final class HandshakeWatcher: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny

    private let guardHandler: ConnectionGuardHandler

    init(_ guardHandler: ConnectionGuardHandler) { self.guardHandler = guardHandler }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .handshakeCompleted = event as? TLSUserEvent { guardHandler.handshakeCompleted() }
        context.fireUserInboundEventTriggered(event)
    }
}

/// An HTTP/1.1-over-TLS child channel whose connections pass the listener's ``ConnectionCounter``
/// first: the guard, then TLS, then Hummingbird's HTTP/1 pipeline (with the idle timeout).
struct GuardedTLSChannel: ServerChildChannel {
    typealias Value = HTTP1Channel.Value

    let base: HTTP1Channel
    /// Nil for the plain-HTTP metrics listener: then there is no handshake to wait for.
    let sslContext: TLSContextSource?
    let counter: ConnectionCounter

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        channel.eventLoop.makeCompletedFuture {
            let guardHandler = ConnectionGuardHandler(counter: counter, plain: sslContext == nil)
            try channel.pipeline.syncOperations.addHandler(guardHandler)
            if let sslContext {
                try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: sslContext.current))
                try channel.pipeline.syncOperations.addHandler(HandshakeWatcher(guardHandler))
            }
        }.flatMap {
            base.setup(channel: channel, logger: logger)
        }
    }

    func handle(value: Value, logger: Logger) async {
        await base.handle(value: value, logger: logger)
    }

    /// The builder Hummingbird's `Application` takes.
    static func builder(tls: TLSContextSource?, counter: ConnectionCounter) throws -> HTTPServerBuilder {
        let context = tls
        let idle = TimeAmount.nanoseconds(Int64(counter.limits.idleTimeout.nanoseconds))
        return HTTPServerBuilder { responder in
            GuardedTLSChannel(
                base: HTTP1Channel(responder: responder, configuration: .init(idleTimeout: idle)), sslContext: context, counter: counter)
        }
    }
}

/// A listener's TLS context, replaceable while it runs: each new connection takes the current
/// one (a CA rotation changes which client certificates the API listener accepts).
final class TLSContextSource: Sendable {
    private let context: Mutex<NIOSSLContext>

    /// The context of `configuration`.
    init(_ configuration: TLSConfiguration) throws { context = Mutex(try NIOSSLContext(configuration: configuration)) }

    /// The context new connections use.
    var current: NIOSSLContext { context.withLock { $0 } }

    /// Uses `configuration` from the next connection on.
    func replace(_ configuration: TLSConfiguration) throws {
        let next = try NIOSSLContext(configuration: configuration)
        context.withLock { $0 = next }
    }
}

/// The API listener's TLS: its configuration and the CAs whose client certificates it accepts,
/// rebuilt when they change.
struct APITLS: Sendable {
    let source: TLSContextSource
    let base: TLSConfiguration

    /// A configuration `base` that accepts client certificates of `cas`.
    init(base: TLSConfiguration, trusting cas: [Certificate]) throws {
        self.base = base
        source = try TLSContextSource(try Self.configuration(base, cas))
    }

    /// Accepts client certificates of `cas` from the next connection on.
    func reload(trusting cas: [Certificate]) throws { try source.replace(try Self.configuration(base, cas)) }

    private static func configuration(_ base: TLSConfiguration, _ cas: [Certificate]) throws -> TLSConfiguration {
        var configuration = base
        configuration.trustRoots = .certificates(
            try cas.map { ca in
                var der = DER.Serializer()
                try der.serialize(ca)
                return try NIOSSLCertificate(bytes: der.serializedBytes, format: .der)
            })
        return configuration
    }
}

extension Duration {
    /// The duration in whole nanoseconds (saturating).
    var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        let (product, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        if overflow { return seconds < 0 ? .min : .max }
        return product.addingReportingOverflow(attoseconds / 1_000_000_000).overflow ? .max : product + attoseconds / 1_000_000_000
    }
}
