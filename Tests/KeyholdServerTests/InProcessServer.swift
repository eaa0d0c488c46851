import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import KeyholdCore
import KeyholdProtocol
import KeyholdStore
import KeyholdTestSupport
import Logging
import NIOCore

@testable import KeyholdServer

/// The context of the in-process router tests: the caller is named by the `x-test-peer` header
/// (`ROLE ID FINGERPRINT`). The server's own context takes the caller from the TLS certificate
/// instead; this one exists only in the test target.
struct TestContext: PeerContext {
    var coreContext: CoreRequestContextStorage
    static let header = HTTPField.Name("x-test-peer")!

    init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
    }

    func peer(for request: Request) async -> Peer? {
        guard let text = request.headers[Self.header] else { return nil }
        let parts = text.split(separator: " ").map(String.init)
        guard parts.count == 3, let role = ClientRole(rawValue: parts[0]), let id = ClientID(parts[1]) else { return nil }
        return Peer(role: role, id: id, fingerprint: parts[2])
    }

    var sourceAddress: String { "127.0.0.1" }
}

/// A server core on the in-memory repository, with its CA and master key made in memory and a
/// temporary data directory for the hierarchy's state.
struct InProcessServer {
    let core: ServerCore
    let repository: MemoryRepository
    let serverID: ServerID

    static func make(
        useHierarchy: Bool = false, releasePolicy: ReleasePolicy = .any, approvalLifetime: TimeInterval = 86_400
    ) async throws -> InProcessServer {
        let serverID = ServerID.random()
        let repository = MemoryRepository()
        let dir = DataDirectory(try Paths.temporaryFolder("core").path)
        let master = MasterKey(.generate())
        let (authority, _) = try CertificateAuthority.create(serverID: serverID, name: "core")
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let hierarchy = try Hierarchy(serverID: serverID, repository: repository, masterKey: master, dir: dir, logger: logger)
        try await hierarchy.setEnabled(useHierarchy)
        var settings = ServerSettings(
            serverID: serverID, listen: try HostPort("127.0.0.1:8443"), enrollListen: try HostPort("127.0.0.1:8444"), databaseDescription: "memory"
        )
        settings.releasePolicy = releasePolicy
        settings.approvalLifetime = approvalLifetime
        let core = ServerCore(
            serverID: serverID, repository: repository, masterKey: master, authority: CertificateAuthorities(authority, directory: dir),
            databaseDescription: "memory",
            hierarchy: hierarchy, addresses: BoundAddresses(settings), directory: dir, refusals: RefusalLedger(),
            enrollLimiter: RateLimiter(settings.enrollRate), releaseLimiter: RateLimiter(settings.releaseRate),
            releaseWatch: ReleaseWatch(settings.releaseAlert), releasePolicy: settings.releasePolicy,
            approvalLifetime: settings.approvalLifetime, logger: logger
        )
        return InProcessServer(core: core, repository: repository, serverID: serverID)
    }

    /// An enrollment of `role` stored directly, and the peer that presents its certificate.
    func enroll(_ role: ClientRole, state: EnrollmentState = .active) async throws -> Peer {
        let id = ClientID.random()
        let fingerprint = Hex.lowercase(SecureRandom.bytes(count: 32))
        try await repository.insertClient(EnrolledClient(id: id, role: role, name: "\(role)", certificateFingerprint: fingerprint, state: state))
        return Peer(role: role, id: id, fingerprint: fingerprint)
    }

    /// The mutual-TLS API's router, as an application for HummingbirdTesting.
    func apiApplication() -> some ApplicationProtocol {
        Application(router: ServerAPI<TestContext>(core: core, logger: core.logger).apiRouter())
    }
}

extension Peer {
    /// The header that names this peer to the test context.
    var header: HTTPFields { [TestContext.header: "\(role) \(id) \(fingerprint)"] }
}

/// A new key for `peer` (a device) and its escrow body.
func escrowBody(for peer: Peer, serverID: ServerID) throws -> (KeyMaterial, ByteBuffer) {
    let key = KeyMaterial(
        record: KeyRecord(kind: .file, originServerID: serverID, originDeviceID: DeviceID(enrollment: peer.id), label: "t"), secret: .generate()
    )
    return (key, ByteBuffer(bytes: try WireFormat.encoder().encode(EscrowRequest(key: key))))
}

/// The error an answer carries.
func errorCode(_ response: TestResponse) -> KeyholdError.Code? {
    (try? WireFormat.decoder().decode(ErrorBody.self, from: Data(response.body.readableBytesView)))?.code
}
