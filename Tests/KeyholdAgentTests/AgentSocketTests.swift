import Foundation
import KeyholdAgentClient
import KeyholdCore
import KeyholdProtocol
import KeyholdTestSupport
import Logging
import ServiceLifecycle
import Testing

@testable import KeyholdAgent

#if canImport(Glibc)
import Glibc
#endif

/// The agent's service in process: its SwiftNIO socket, its limits and its locks.
@Suite struct AgentSocketTests {
    /// Runs a (not enrolled) agent in `folder` while `body` runs, then shuts it down.
    static func withAgent<T: Sendable>(
        in folder: URL, socket: String? = nil, _ body: @Sendable (AgentSettings) async throws -> T
    ) async throws -> T {
        let settings = AgentSettings(
            stateDirectory: folder.appendingPathComponent("state").path, socket: socket ?? folder.appendingPathComponent("agent.sock").path,
            group: "keyhold", heartbeat: .seconds(3600)
        )
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let group = ServiceGroup(configuration: .init(services: [KeyholdAgentService(settings: settings, logger: logger)], logger: logger))
        return try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            defer { Task { await group.triggerGracefulShutdown() } }
            let deadline = ContinuousClock.now + .seconds(60)
            while (try? await Self.send(.status, to: settings.socket)) == nil {
                guard ContinuousClock.now < deadline else { throw TestFailure("the agent did not answer") }
                try await Task.sleep(for: .milliseconds(20))
            }
            let result = try await body(settings)
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
            return result
        }
    }

    static func send(_ request: AgentRequest, to socket: String) async throws -> AgentResponse {
        try await withCheckedThrowingContinuation { c in
            DispatchQueue.global().async { c.resume(with: Result { try AgentClient(path: socket, timeout: 60).send(request) }) }
        }
    }

    /// The error an exchange of raw bytes gets back.
    static func rawError(_ socket: String, _ bytes: Data) async throws -> ErrorBody? {
        let answer = try await RawSocket.exchange(socket, bytes)
        guard case .failure(let e) = try WireFormat.decoder().decode(AgentResponse.self, from: answer) else { return nil }
        return e
    }

    @Test func statusAnswersAndTheSocketIsReachableByEveryone() async throws {
        let folder = try Paths.temporaryFolder("agent-socket")
        defer { try? FileManager.default.removeItem(at: folder) }
        try await Self.withAgent(in: folder) { settings in
            let status = try await Self.send(.status, to: settings.socket).status()
            #expect(!status.enrolled && status.cachedKeys == 0 && status.version == KeyholdVersion.current)
            let mode = try FileManager.default.attributesOfItem(atPath: settings.socket)[.posixPermissions] as? Int
            #expect(mode == 0o666)
        }
        #expect(!FileManager.default.fileExists(atPath: folder.appendingPathComponent("agent.sock").path), "the socket goes with the agent")
    }

    @Test func malformedOversizedAndSilentRequestsAreAnsweredWithAnError() async throws {
        let folder = try Paths.temporaryFolder("agent-limits")
        defer { try? FileManager.default.removeItem(at: folder) }
        try await Self.withAgent(in: folder) { settings in
            let unknown = try await Self.rawError(settings.socket, Data(#"{"op":"format-disk"}"#.utf8) + [0x0A])
            #expect(unknown?.code == .invalidRequest)
            let missing = try await Self.rawError(settings.socket, Data(#"{"op":"key"}"#.utf8) + [0x0A])
            #expect(missing?.code == .invalidRequest)
            let oversized = try await Self.rawError(settings.socket, Data(repeating: 0x20, count: AgentSocket.requestLimit + 10))
            #expect(oversized?.code == .invalidRequest && oversized?.message.contains("longer than 64 KiB") == true)
            // A client that ends its input after the request (socat, nc -N) still gets the answer.
            let halfClosed = try await withCheckedThrowingContinuation { (c: CheckedContinuation<Data, any Error>) in
                DispatchQueue.global().async {
                    c.resume(
                        with: Result {
                            let fd = try RawSocket.connect(settings.socket)
                            defer { close(fd) }
                            _ = Array(#"{"op":"status"}"#.utf8).withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, 0) }
                            shutdown(fd, Int32(SHUT_WR))
                            return RawSocket.readToEnd(fd)
                        })
                }
            }
            let answer = try WireFormat.decoder().decode(AgentResponse.self, from: halfClosed)
            #expect(try answer.status().version == KeyholdVersion.current)
            // A connection that sends nothing is answered and closed after the request timeout.
            let start = ContinuousClock.now
            let silent = try await Self.rawError(settings.socket, Data())
            #expect(silent?.message.contains("no complete request line within 5 seconds") == true, "\(String(describing: silent))")
            #expect(ContinuousClock.now - start < .seconds(15))
            // Not enrolled: a key request says so.
            await #expect(throws: KeyholdError.self) { _ = try await Self.send(.fileKey, to: settings.socket) }
        }
    }

    @Test func aSecondAgentOnTheSameStateDirectoryOrSocketIsRefused() async throws {
        let folder = try Paths.temporaryFolder("agent-twice")
        let other = try Paths.temporaryFolder("agent-twice-2")
        defer {
            try? FileManager.default.removeItem(at: folder)
            try? FileManager.default.removeItem(at: other)
        }
        try await Self.withAgent(in: folder) { settings in
            var logger = Logger(label: "test")
            logger.logLevel = .critical
            var sameState = settings
            sameState.socket = other.appendingPathComponent("second.sock").path
            await #expect { try await KeyholdAgentService(settings: sameState, logger: logger).run() } throws: { error in
                (error as? KeyholdError)?.message.contains("keyhold-agent (pid \(getpid())) is already running on the state directory") == true
            }
            var sameSocket = settings
            sameSocket.stateDirectory = other.appendingPathComponent("state").path
            await #expect { try await KeyholdAgentService(settings: sameSocket, logger: logger).run() } throws: { error in
                (error as? KeyholdError)?.message == "another keyhold-agent already listens on \(settings.socket)"
            }
            // The first agent still answers, on its socket.
            let status = try await Self.send(.status, to: settings.socket).status()
            #expect(status.version == KeyholdVersion.current)
        }
    }

    @Test func anUnbindableSocketEndsTheServiceWithTheReason() async throws {
        let folder = try Paths.temporaryFolder("agent-nobind")
        defer { try? FileManager.default.removeItem(at: folder) }
        let settings = AgentSettings(stateDirectory: folder.appendingPathComponent("state").path, socket: "/proc/keyhold-test.sock")
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        await #expect { try await KeyholdAgentService(settings: settings, logger: logger).run() } throws: { error in
            let e = error as? KeyholdError
            return e?.message.hasPrefix("cannot listen on /proc/keyhold-test.sock: ") == true && e?.hint.isEmpty == false
        }
    }

    @Test func thePolicyAdmitsRootAndTheGroupAndLimitsMembers() {
        let policy = SocketPolicy(group: "nogroup")
        let root = PeerCredentials(uid: 0, gid: 0, pid: 1)
        #expect(policy.admits(root))
        #expect(AgentOperation.allCases.allSatisfy { policy.allows($0, root) })
        // 'nobody' is in 'nogroup' (its primary group); 'daemon' is not.
        let nobody = PeerCredentials(uid: 65534, gid: 65534, pid: 2)
        #expect(policy.admits(nobody))
        #expect(
            AgentOperation.allCases.filter { policy.allows($0, nobody) } == [.status, .fileKey, .key, .offlineRequest, .offlineKey, .rotateFileKey])
        #expect(!policy.admits(PeerCredentials(uid: 1, gid: 1, pid: 3)))
        #expect(!SocketPolicy(group: "no-such-group-here").admits(nobody))
    }
}
