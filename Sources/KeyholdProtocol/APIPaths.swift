/// The server's HTTP paths (docs/spec/protocol.md).
public enum APIPath {
    // Enrollment listener (no client certificate).

    /// `GET`: "ok" (both listeners).
    public static let health = "/v1/health"
    /// `GET`: ready to serve (database reachable, migrations applied, listeners up), else `503` with the reason.
    public static let ready = "/v1/ready"
    /// `GET` on the metrics listener: the Prometheus exposition.
    public static let metrics = "/metrics"
    /// `GET`: the CA certificate, which the token's fingerprint pins (enrollment listener).
    public static let ca = "/v1/ca"
    /// `POST`: redeem a token for a certificate (enrollment listener).
    public static let enroll = "/v1/enroll"

    // Mutual-TLS listener: devices.

    /// The keys' collection.
    public static let keys = "/v1/keys"
    /// `PUT`: escrow key `id`; `GET`: release it.
    public static func key(_ id: String) -> String { "/v1/keys/\(id)" }
    /// `POST`: retire drive key `id`, replaced by a new one (`keyhold drive rekey`).
    public static func keyRetire(_ id: String) -> String { "/v1/keys/\(id)/retire" }
    /// `GET`: whether key `id` is blocked or marked for rotation (no secret).
    public static func keyStatus(_ id: String) -> String { "/v1/keys/\(id)/status" }
    /// `POST`: a device's heartbeat.
    public static let heartbeat = "/v1/heartbeat"
    /// `POST`: a device or secondary renews its client certificate.
    public static let certificateRenew = "/v1/certificate/renew"
    /// `POST`: a device says it moved to another server.
    public static let leave = "/v1/leave"

    // Administrators (admin certificate).

    /// `GET`: the server's status.
    public static let adminStatus = "/v1/admin/status"
    /// `POST`: renew the server's TLS certificate now.
    public static let adminTLSRenew = "/v1/admin/tls/renew"
    /// `GET`: the master-key versions and the rewrap's progress.
    public static let adminMasterKey = "/v1/admin/master-key"
    /// `POST`: prepare or make current a new master-key version (the rewrap follows).
    public static let adminMasterKeyRotate = "/v1/admin/master-key/rotate"
    /// `POST`: retire the versions older than the current one, once no key uses them.
    public static let adminMasterKeyRetireOld = "/v1/admin/master-key/retire-old"
    /// `GET`: the CA, and during a rotation who still holds a certificate from the previous one.
    public static let adminCA = "/v1/admin/ca"
    /// `POST`: a new CA, cross-signed by the current one (the overlap begins).
    public static let adminCARotate = "/v1/admin/ca/rotate"
    /// `POST`: end the overlap once no active client holds a certificate from the previous CA.
    public static let adminCARetireOld = "/v1/admin/ca/retire-old"
    /// `GET`: the audit trail (`after`, `limit`).
    public static let adminAudit = "/v1/admin/audit"
    /// `GET`: key metadata (`after`, `limit`).
    public static let adminKeys = "/v1/admin/keys"
    /// `POST`: block key `id` (`…/unblock` releases it again).
    public static func adminKeyBlock(_ id: String) -> String { "/v1/admin/keys/\(id)/block" }
    /// `POST`: reveal key `id` to the administrator, with a reason (audited; marks it for rotation).
    public static func adminKeyReveal(_ id: String) -> String { "/v1/admin/keys/\(id)/reveal" }
    /// `POST`: destroy key `id` now, with a reason (its secret is erased; audited).
    public static func adminKeyDestroy(_ id: String) -> String { "/v1/admin/keys/\(id)/destroy" }
    /// `POST`: answer an offline request code (docs/spec/offline-access.md).
    public static let adminKeysOfflineResponse = "/v1/admin/keys/offline-response"
    /// `POST`: an export file, streamed.
    public static let adminKeysExport = "/v1/admin/keys/export"
    /// `POST`: import an export file (the body).
    public static let adminKeysImport = "/v1/admin/keys/import"
    /// `GET`: the enrolled devices and secondaries.
    public static let adminClients = "/v1/admin/clients"
    /// `POST`: revoke client `id`.
    public static func adminClientRevoke(_ id: String) -> String { "/v1/admin/clients/\(id)/revoke" }
    /// `POST`: delete revoked or moved client `id` (its keys are destroyed after the retention).
    public static func adminClientDelete(_ id: String) -> String { "/v1/admin/clients/\(id)/delete" }
    /// `GET`: the administrators.
    public static let adminAdministrators = "/v1/admin/administrators"
    /// `POST`: revoke administrator `id` (never the last active one).
    public static func adminAdministratorRevoke(_ id: String) -> String { "/v1/admin/administrators/\(id)/revoke" }
    /// `POST`: a new enrollment token; `GET`: every token, without its secret.
    public static let adminTokens = "/v1/admin/tokens"
    /// `POST`: revoke token `id` at once (its remaining uses are refused).
    public static func adminTokenRevoke(_ id: String) -> String { "/v1/admin/tokens/\(id)/revoke" }
    /// `POST`: join a primary; `DELETE`: forget it.
    public static let adminPrimary = "/v1/admin/primary"
    /// `POST`: set "use hierarchy to obtain encryption keys".
    public static let adminHierarchy = "/v1/admin/hierarchy"
    /// `GET`: the requests for release approval (`state`, `limit`).
    public static let adminReleases = "/v1/admin/releases"
    /// `POST`: approve (`approve`) or deny (`deny`) request `id`.
    public static func adminRelease(_ id: String, _ decision: String) -> String { "/v1/admin/releases/\(id)/\(decision)" }
    /// `POST`: push to the primary now.
    public static let adminHierarchySync = "/v1/admin/hierarchy/sync"
    /// `GET`: this server, its primary link and its secondaries (``HierarchyTree``).
    public static let adminHierarchyTree = "/v1/admin/hierarchy/tree"

    // Secondaries (server certificate).

    /// `POST`: a batch of keys from a secondary.
    public static let hierarchyPush = "/v1/hierarchy/push"
    /// `GET`: a secondary's lookup of key `id` (`chain`, `hops`).
    public static func hierarchyKey(_ id: String) -> String { "/v1/hierarchy/keys/\(id)" }
    /// `GET`: the hops from the answering server up, for key `id` (``ExplainHop``s; metadata only).
    public static func hierarchyExplain(_ id: String) -> String { "/v1/hierarchy/explain/\(id)" }
    /// `GET`: why a device can or cannot get key `id` (``KeyExplanation``; `device` optional).
    public static func adminExplain(_ id: String) -> String { "/v1/admin/explain/\(id)" }
    /// The header of a lookup's answer: how many servers above the asking one held the key (1:
    /// the primary itself). Absent from older servers' answers, which count as 1.
    public static let hopsHeader = "Keyhold-Hops"
}
