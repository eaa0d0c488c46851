/// The server's HTTP paths (docs/spec/protocol.md).
public enum APIPath {
    // Enrollment listener (no client certificate).
    public static let health = "/v1/health"
    public static let ca = "/v1/ca"
    public static let enroll = "/v1/enroll"
    // Mutual-TLS listener.
    public static let keys = "/v1/keys"
    public static func key(_ id: String) -> String { "/v1/keys/\(id)" }
    public static let heartbeat = "/v1/heartbeat"
    public static let leave = "/v1/leave"
    // Administrators (admin certificate).
    public static let adminStatus = "/v1/admin/status"
    public static let adminAudit = "/v1/admin/audit"
    public static let adminKeys = "/v1/admin/keys"
    public static func adminKeyBlock(_ id: String) -> String { "/v1/admin/keys/\(id)/block" }
    public static let adminKeysExport = "/v1/admin/keys/export"
    public static let adminKeysImport = "/v1/admin/keys/import"
    public static let adminClients = "/v1/admin/clients"
    public static func adminClientRevoke(_ id: String) -> String { "/v1/admin/clients/\(id)/revoke" }
    public static let adminTokens = "/v1/admin/tokens"
    public static let adminPrimary = "/v1/admin/primary"
    public static let adminHierarchy = "/v1/admin/hierarchy"
    public static let adminHierarchySync = "/v1/admin/hierarchy/sync"
    // Secondaries (server certificate).
    public static let hierarchyPush = "/v1/hierarchy/push"
    public static func hierarchyKey(_ id: String) -> String { "/v1/hierarchy/keys/\(id)" }
}
