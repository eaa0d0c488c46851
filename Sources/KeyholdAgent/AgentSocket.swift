import CKeyholdPeer
import Foundation
import KeyholdAgentClient
import KeyholdCore
import KeyholdProtocol
import KeyholdSystem
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle

#if canImport(Glibc)
import Glibc
#endif

/// Who may do what on the local socket: root everything; members of `group` may encrypt and
/// decrypt files and read the status; anyone else nothing.
struct SocketPolicy: Sendable {
    /// The group whose members may use files through the agent.
    var group: String

    /// Whether a caller may use the socket at all (checked before its request is read).
    /// Blocking (the name service): call it off the event loop.
    func admits(_ peer: PeerCredentials) -> Bool {
        peer.uid == 0 || keyhold_user_in_group(peer.uid, peer.gid, group) == 1
    }

    /// Whether an admitted caller may run `operation`.
    func allows(_ operation: AgentOperation, _ peer: PeerCredentials) -> Bool {
        peer.uid == 0 || !operation.needsRoot
    }
}

/// The kernel's account of the process at the other end of a connection (`SO_PEERCRED`).
struct PeerCredentials: Sendable {
    let uid: UInt32
    let gid: UInt32
    let pid: Int32
}

/// The local API on SwiftNIO (docs/spec/agent-socket.md): a Unix socket (mode 0666; callers are
/// told apart by `SO_PEERCRED`), one JSON request line and one JSON response line per connection.
///
/// A connection costs no thread: its caller's credentials are read when it is accepted and checked
/// before its request is read (a caller who is neither root nor in the group is answered and closed
/// at once); a request must arrive whole, at most ``requestLimit`` bytes, within ``requestTimeout``.
final class AgentSocket: Service, Sendable {
    /// The most bytes a request line may have.
    static let requestLimit = 64 * 1024
    /// How long a connection may take to send its request.
    static let requestTimeout: TimeAmount = .seconds(5)

    let path: String
    let agent: Agent
    let policy: SocketPolicy
    let logger: Logger

    init(path: String, agent: Agent, policy: SocketPolicy, logger: Logger) {
        self.path = path
        self.agent = agent
        self.policy = policy
        self.logger = logger
    }

    func run() async throws {
        try await NIOThreadPool.singleton.runIfActive { try self.prepare() }
        let server: NIOAsyncChannel<NIOAsyncChannel<ByteBuffer, ByteBuffer>, Never>
        do {
            server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .serverChannelOption(.backlog, value: 256)
                // A client may shut down its side once it has sent its request (socat, nc -N) and
                // still read the answer.
                .childChannelOption(.allowRemoteHalfClosure, value: true)
                .bind(unixDomainSocketPath: path, cleanupExistingSocketFile: false) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(
                            RequestLineHandler(limit: AgentSocket.requestLimit, timeout: AgentSocket.requestTimeout)
                        )
                        return try AgentSocket.wrap(channel)
                    }
                }
        } catch {
            throw KeyholdError(
                .configuration, "cannot listen on \(path): \(Self.reason(error))",
                hint: "check that its folder exists and is writable by the agent, or give another socket (--socket, socket in agent.toml)"
            )
        }
        defer { unlink(path) }
        guard chmod(path, 0o666) == 0 else {
            throw KeyholdError(
                .configuration, "cannot make \(path) reachable: \(String(cString: strerror(errno)))", hint: "check the folder's owner and permissions"
            )
        }
        logger.info("listening", metadata: ["socket": "\(path)"])
        SystemdNotify.ready(status: "listening on \(path)")
        do {
            try await cancelWhenGracefulShutdown {
                try await withThrowingDiscardingTaskGroup { group in
                    try await server.executeThenClose { inbound in
                        for try await connection in inbound {
                            group.addTask { await self.serve(connection) }
                        }
                    }
                }
            }
        } catch is CancellationError where Task.isShuttingDownGracefully {
            // The end of a graceful shutdown: the listener was closed on purpose.
        }
    }

    /// A connection as an async channel that closes itself when dropped unserved. A connection
    /// accepted while the listener closes (at shutdown) is dropped by the listener's stream
    /// without being served; NIO's non-deprecated wrapper traps on that ("Deinited
    /// NIOAsyncWriter without calling finish()", seen in AgentSocketTests), which would crash the
    /// agent as it stops. Served connections are still closed by `executeThenClose`.
    fileprivate static func wrap(_ channel: any Channel) throws -> NIOAsyncChannel<ByteBuffer, ByteBuffer> {
        try (DeinitTeardown.self as any ChannelWrapping.Type).wrap(channel)
    }

    /// Makes the socket's folder and clears a stale socket file; refuses when another agent answers there.
    private func prepare() throws {
        let folder = (path as NSString).deletingLastPathComponent
        if !folder.isEmpty {
            try? FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        }
        guard let type = (try? FileManager.default.attributesOfItem(atPath: path))?[.type] as? FileAttributeType else { return }
        guard type == .typeSocket else {
            throw KeyholdError(.configuration, "\(path) exists and is not a socket", hint: "remove it or give another socket (--socket)")
        }
        if AgentClient.someoneListens(at: path) {
            throw KeyholdError(
                .configuration, "another keyhold-agent already listens on \(path)",
                hint: "stop it first ('systemctl stop keyhold-agent'), or give this one another socket (--socket)"
            )
        }
        unlink(path)  // a socket file nobody listens on: left by an agent that was killed
    }

    private static func reason(_ error: any Error) -> String {
        if let io = error as? IOError { return String(cString: strerror(io.errnoCode)).lowercased() }
        return "\(error)"
    }

    // MARK: One connection

    private func serve(_ connection: NIOAsyncChannel<ByteBuffer, ByteBuffer>) async {
        do {
            let peer = try await Self.credentials(of: connection.channel)
            let admitted = try await NIOThreadPool.singleton.runIfActive { [policy] in policy.admits(peer) }
            try await connection.executeThenClose { inbound, outbound in
                let response: AgentResponse
                if admitted {
                    response = await answer(inbound, from: peer)
                } else {
                    // Answered without reading anything it sent.
                    logger.notice("refused a caller outside the group", metadata: ["uid": "\(peer.uid)", "pid": "\(peer.pid)"])
                    response = .failure(ErrorBody(Self.refusal(peer, group: policy.group, operation: nil)))
                }
                var data = (try? WireFormat.encoder().encode(response)) ?? Data()
                data.append(0x0A)
                defer { data.withUnsafeMutableBytes { SecretKey.wipe($0) } }
                try await outbound.write(ByteBuffer(bytes: data))
            }
        } catch {
            logger.debug("connection ended", metadata: ["error": "\(error)"])
        }
    }

    private func answer(_ inbound: NIOAsyncChannelInboundStream<ByteBuffer>, from peer: PeerCredentials) async -> AgentResponse {
        do {
            var lines = inbound.makeAsyncIterator()
            guard let line = try await lines.next() else {
                throw KeyholdError(
                    .invalidRequest, "the connection closed before a complete request line", hint: "send one JSON object followed by a newline")
            }
            let request: AgentRequest
            do {
                request = try WireFormat.decoder().decode(AgentRequest.self, from: Data(line.readableBytesView))
            } catch {
                throw KeyholdError(.invalidRequest, "the request is not valid JSON for the agent: \(error)", hint: "see docs/spec/agent-socket.md")
            }
            guard policy.allows(request.operation, peer) else {
                logger.notice("refused", metadata: ["op": "\(request.operation)", "uid": "\(peer.uid)", "pid": "\(peer.pid)"])
                throw Self.refusal(peer, group: policy.group, operation: request.operation)
            }
            return try await agent.handle(request)
        } catch let error as KeyholdError {
            return .failure(ErrorBody(error))
        } catch let error as RequestLineError {
            return .failure(ErrorBody(error.keyholdError))
        } catch {
            return .failure(ErrorBody(KeyholdError(.internalError, "the agent failed: \(error)", hint: "see the agent's log")))
        }
    }

    private static func refusal(_ peer: PeerCredentials, group: String, operation: AgentOperation?) -> KeyholdError {
        guard let operation else {
            return KeyholdError(
                .forbidden, "user \(peer.uid) may not use the Keyhold agent: only root and members of the group '\(group)' may",
                hint: "ask an administrator to add you to the '\(group)' group (or run as root)"
            )
        }
        return KeyholdError(.forbidden, "user \(peer.uid) may not '\(operation)' through the Keyhold agent", hint: "'\(operation)' needs root")
    }

    /// `SO_PEERCRED` of an accepted connection.
    private static func credentials(of channel: any Channel) async throws -> PeerCredentials {
        guard let provider = channel as? any SocketOptionProvider else {
            throw KeyholdError(.internalError, "the connection offers no socket options", hint: "report this bug")
        }
        let cred: keyhold_ucred = try await read(provider).get()
        return PeerCredentials(uid: cred.uid, gid: cred.gid, pid: cred.pid)
    }

    // Kept out of line (not public, not inlinable), as NIO asks for unsafeGetSocketOption calls.
    private static func read(_ provider: any SocketOptionProvider) -> EventLoopFuture<keyhold_ucred> {
        provider.unsafeGetSocketOption(level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(keyhold_so_peercred))
    }
}

/// Why a request line could not be read.
enum RequestLineError: Error {
    case tooLarge(Int)
    case timedOut(TimeAmount)

    var keyholdError: KeyholdError {
        switch self {
        case .tooLarge(let limit):
            return KeyholdError(.invalidRequest, "the request is longer than \(limit / 1024) KiB", hint: "send one JSON object followed by a newline")
        case .timedOut(let timeout):
            return KeyholdError(
                .invalidRequest, "no complete request line within \(timeout.nanoseconds / 1_000_000_000) seconds",
                hint: "send one JSON object followed by a newline"
            )
        }
    }
}

/// Collects the first line of a connection (at most `limit` bytes, within `timeout`) and passes it
/// on without its newline; anything after it is ignored. The end of the client's input also ends
/// the line. Too long or too late is an error.
final class RequestLineHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private let limit: Int
    private let timeout: TimeAmount
    private var buffer = ByteBuffer()
    private var done = false
    private var timer: Scheduled<Void>?

    init(limit: Int, timeout: TimeAmount) {
        self.limit = limit
        self.timeout = timeout
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(in: timeout) {
            let (handler, context) = loopBound.value
            handler.fail(context, .timedOut(handler.timeout))
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !done else { return }
        var piece = unwrapInboundIn(data)
        buffer.writeBuffer(&piece)
        if let newline = buffer.readableBytesView.firstIndex(of: 0x0A) {
            done = true
            timer?.cancel()
            let line = buffer.getSlice(at: buffer.readerIndex, length: newline - buffer.readerIndex) ?? ByteBuffer()
            buffer = ByteBuffer()
            context.fireChannelRead(wrapInboundOut(line))
        } else if buffer.readableBytes > limit {
            fail(context, .tooLarge(limit))
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .some(.inputClosed) = event as? ChannelEvent, !done, buffer.readableBytes > 0 {
            done = true
            timer?.cancel()
            let line = buffer
            buffer = ByteBuffer()
            context.fireChannelRead(wrapInboundOut(line))
        }
        context.fireUserInboundEventTriggered(event)
    }

    private func fail(_ context: ChannelHandlerContext, _ error: RequestLineError) {
        guard !done else { return }
        done = true
        timer?.cancel()
        buffer = ByteBuffer()
        context.fireErrorCaught(error)
    }
}

/// Indirection so the one deliberate use of NIO's deprecated deinit-based wrapper warns once, here.
private protocol ChannelWrapping {
    static func wrap(_ channel: any Channel) throws -> NIOAsyncChannel<ByteBuffer, ByteBuffer>
}

private enum DeinitTeardown: ChannelWrapping {
    @available(*, deprecated, message: "uses NIO's deinit-based teardown on purpose (see AgentSocket.wrap)")
    static func wrap(_ channel: any Channel) throws -> NIOAsyncChannel<ByteBuffer, ByteBuffer> {
        try NIOAsyncChannel<ByteBuffer, ByteBuffer>(synchronouslyWrapping: channel)
    }
}
