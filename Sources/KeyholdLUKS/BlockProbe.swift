import CBlkid
import Foundation
import KeyholdCore

/// What libblkid finds on a device or image file.
public enum DriveContent: Sendable, Equatable {
    /// A LUKS header (`TYPE=crypto_LUKS`), with its UUID and version.
    case luks(uuid: String, version: String)
    /// Another file system or signature (`TYPE=…`).
    case filesystem(type: String)
    /// A partition table (`PTTYPE=…`).
    case partitionTable(type: String)
    /// Nothing recognised.
    case empty

    /// What the drive holds, in words for an error message.
    public var summary: String {
        switch self {
        case .luks(let uuid, let version): return "LUKS\(version) (UUID \(uuid))"
        case .filesystem(let type): return "a \(type) file system"
        case .partitionTable(let type): return "a \(type) partition table"
        case .empty: return "no recognised content"
        }
    }
}

/// libblkid, the way udev identifies devices (`ID_FS_TYPE`).
public enum BlockProbe {
    /// What libblkid finds on `path`.
    public static func probe(_ path: String) throws -> DriveContent {
        guard let probe = blkid_new_probe_from_filename(path) else {
            throw LUKSCall.error(errno == 0 ? EIO : errno, "open for probing", path)
        }
        defer { blkid_free_probe(probe) }
        blkid_probe_enable_superblocks(probe, 1)
        blkid_probe_set_superblocks_flags(probe, keyhold_BLKID_SUBLKS_TYPE | keyhold_BLKID_SUBLKS_UUID | keyhold_BLKID_SUBLKS_VERSION)
        blkid_probe_enable_partitions(probe, 1)
        blkid_probe_set_partitions_flags(probe, 1 << 3)  // BLKID_PARTS_MAGIC
        let rc = blkid_do_safeprobe(probe)
        if rc == 1 { return .empty }
        if rc == -2 { return .filesystem(type: "ambiguous (several signatures)") }
        if rc < 0 { throw LUKSCall.error(EIO, "probe", path) }
        func value(_ name: String) -> String? {
            var data: UnsafePointer<CChar>?
            var length = 0
            guard blkid_probe_lookup_value(probe, name, &data, &length) == 0, let data else { return nil }
            return String(cString: data)
        }
        if let type = value("TYPE") {
            if type == "crypto_LUKS" { return .luks(uuid: value("UUID") ?? "", version: value("VERSION") ?? "") }
            return .filesystem(type: type)
        }
        if let table = value("PTTYPE") { return .partitionTable(type: table) }
        return .empty
    }
}
