import ArgumentParser
import Foundation
import KeyholdAgentClient
import KeyholdCommandLine
import KeyholdCore
import KeyholdLUKS
import KeyholdProtocol
import KeyholdSystem

#if canImport(Glibc)
import Glibc
#endif

/// `keyhold drive encrypt|unlock|lock|info`: LUKS2 drives opened by escrowed keys
/// (docs/spec/luks2-token.md).
struct DriveCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "drive",
        abstract: "Encrypt removable drives with escrowed keys (LUKS2), unlock and lock them.",
        subcommands: [Encrypt.self, Unlock.self, Lock.self, Info.self, Rekey.self]
    )

    /// Where `unlock` notes which mapping belongs to which device, so `lock` finds it after the
    /// device is gone (a removed stick cannot be read any more).
    static let runtimeFolder = ProcessInfo.processInfo.environment["KEYHOLD_RUNTIME_DIR"] ?? "/run/keyhold/drives"

    static func requireRoot(_ what: String) throws {
        guard geteuid() == 0 else {
            throw KeyholdError(.forbidden, "\(what) needs root (it writes to the device and talks to the agent as root)", hint: "run it with sudo")
        }
    }

    static func requireExisting(_ device: String) throws -> stat {
        var st = stat()
        guard stat(device, &st) == 0 else { throw SystemCall.error("find", path: device, errno: errno) }
        let type = st.st_mode & S_IFMT
        guard type == S_IFBLK || type == S_IFREG else {
            throw KeyholdError(
                .usage, "\(device) is neither a block device nor an image file", hint: "give a drive such as /dev/sdb, or an image file")
        }
        return st
    }

    /// Refuses a block device that is mounted (itself or a partition) or held by a mapping.
    static func requireUnused(_ device: String, _ st: stat) throws {
        guard st.st_mode & S_IFMT == S_IFBLK else { return }
        let major = st.st_rdev >> 8 & 0xfff
        let minor = (st.st_rdev & 0xff) | (st.st_rdev >> 12 & 0xfff00)
        let name =
            (try? FileManager.default.destinationOfSymbolicLink(atPath: "/sys/dev/block/\(major):\(minor)")).map {
                ($0 as NSString).lastPathComponent
            } ?? ""
        var numbers: Set<String> = ["\(major):\(minor)"]
        let sys = "/sys/class/block/\(name)"
        for child in (try? FileManager.default.contentsOfDirectory(atPath: sys)) ?? []
        where FileManager.default.fileExists(atPath: "\(sys)/\(child)/partition") {
            if let dev = try? String(contentsOfFile: "\(sys)/\(child)/dev", encoding: .utf8) {
                numbers.insert(dev.trimmingCharacters(in: .whitespacesAndNewlines))
            }
            if let holders = try? FileManager.default.contentsOfDirectory(atPath: "\(sys)/\(child)/holders"), !holders.isEmpty {
                throw KeyholdError(
                    .deviceBusy, "\(device) is in use: partition \(child) is held by \(holders.joined(separator: ", "))",
                    hint: "close it first (cryptsetup close, or keyhold drive lock)")
            }
        }
        if let holders = try? FileManager.default.contentsOfDirectory(atPath: "\(sys)/holders"), !holders.isEmpty {
            throw KeyholdError(
                .deviceBusy, "\(device) is in use by \(holders.joined(separator: ", "))",
                hint: "close it first (cryptsetup close, or keyhold drive lock)")
        }
        let mountinfo = (try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? ""
        for line in mountinfo.split(separator: "\n") {
            let fields = line.split(separator: " ")
            if fields.count > 4, numbers.contains(String(fields[2])) {
                throw KeyholdError(.deviceBusy, "\(device) is mounted on \(fields[4])", hint: "unmount it first ('umount \(fields[4])')")
            }
        }
    }

    /// The drive key as LUKS sees it: its 32 raw bytes are the passphrase (so
    /// `cryptsetup open --key-file` with those bytes works too).
    static func passphrase(_ key: KeyFile) -> [UInt8] {
        key.secret.withUnsafeBytes { Array($0) }
    }

    struct Encrypt: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Format a drive (or image file) as LUKS2 opened by a new escrowed key (root).",
            discussion: """
                The drive key is made by the agent and escrowed with its server before anything is written. \
                The drive's current content is lost: a drive holding a file system or partition table is refused unless \
                --erase is given. A recovery passphrase adds a second keyslot for use without the server.
                Example:
                  sudo keyhold drive encrypt /dev/sdb --erase --label "backup stick"
                """
        )
        @Argument(help: "The block device (e.g. /dev/sdb) or image file.") var device: String
        @Flag(help: "Destroy what the drive holds now (file system, partition table, another LUKS header).") var erase = false
        @Flag(help: "Also add a keyslot opened by a recovery passphrase, asked twice on the terminal.") var recoveryPassphrase = false
        @Option(help: ArgumentHelp("Read the recovery passphrase from this file instead.", valueName: "file")) var recoveryPassphraseFile: String?
        @Option(help: "A label for the drive key (default: the device path).") var label: String?
        @OptionGroup var agent: AgentOptions

        func run() throws {
            try DriveCommand.requireRoot("keyhold drive encrypt")
            let st = try DriveCommand.requireExisting(device)
            try DriveCommand.requireUnused(device, st)
            if st.st_mode & S_IFMT == S_IFREG, st.st_size < 32 << 20 {
                throw KeyholdError(.usage, "\(device) is smaller than 32 MiB", hint: "LUKS2 needs 16 MiB for its header; use a larger image")
            }
            let content = try BlockProbe.probe(device)
            if content != .empty, !erase {
                throw KeyholdError(
                    .destinationExists, "\(device) holds \(content.summary); encrypting it destroys that",
                    hint: "copy what you need elsewhere, then run again with --erase")
            }
            var recovery: [UInt8]?
            if recoveryPassphrase || recoveryPassphraseFile != nil {
                let text = try PasswordInput.read(prompt: "Recovery passphrase for \(device): ", confirm: true, file: recoveryPassphraseFile)
                try TransferPassword.checkNew(text)
                recovery = Array(text.utf8)
            }
            defer { recovery?.withUnsafeMutableBytes { SecretKey.wipe($0) } }

            // 1. Escrow first: nothing touches the drive unless the server acknowledged the key.
            let status = try agent.client().send(.status).status()
            guard status.enrolled, let serverAddress = status.serverAddress else {
                throw KeyholdError(.configuration, "this device is not enrolled with a Keyhold server", hint: "enroll it: 'keyhold enroll TOKEN'")
            }
            print("Escrowing a new drive key with server \(status.serverID?.description ?? "?") at \(serverAddress)…")
            let key = try agent.key(.driveKey(label: label ?? "drive \(device) on \(ProcessInfo.processInfo.hostName)"))
            guard let record = key.record else {
                throw KeyholdError(.internalError, "the agent returned a drive key without its record", hint: "check the agent's version")
            }
            print("  key \(record.id) escrowed (acknowledged after the server's commit)")

            // 2. Format, keyslot, token, recovery keyslot, check; any failure rolls back.
            print("Formatting LUKS2 (AES-256-XTS, random volume key)…")
            let volume = try LUKSVolume.format(device, label: "keyhold")
            var done: [String] = []
            do {
                try TestFault.check("format")
                let slot = try volume.addKeyslot(passphrase: DriveCommand.passphrase(key), kdf: .fullEntropyKey)
                done.append("keyslot \(slot)")
                try TestFault.check("keyslot")
                let tokenID = try volume.addToken(
                    KeyholdToken(keyslot: slot, keyID: record.id, originServerID: record.originServerID, serverAddress: serverAddress))
                done.append("token \(tokenID)")
                try TestFault.check("token")
                print("  keyslot \(slot): the escrowed key (PBKDF2, 1000 iterations: the key is 256 random bits)")
                print("  token \(tokenID): type keyhold, key \(record.id)")
                if let recovery {
                    print("Adding the recovery keyslot (argon2id, a few seconds)…")
                    let r = try volume.addKeyslot(passphrase: recovery, kdf: .passphrase)
                    done.append("keyslot \(r)")
                    try TestFault.check("recovery")
                    print("  keyslot \(r): the recovery passphrase")
                }
                try volume.verify(passphrase: DriveCommand.passphrase(key), keyslot: slot)
            } catch {
                let rollback = (try? volume.eraseHeader()) != nil
                throw KeyholdError(
                    (error as? KeyholdError)?.code ?? .driveFailed,
                    "encrypting \(device) failed after \(done.isEmpty ? "formatting" : done.joined(separator: ", ")): \((error as? KeyholdError)?.message ?? "\(error)"); "
                        + (rollback ? "the half-made LUKS header was erased" : "erasing the half-made header failed too"),
                    hint: "nothing uses the drive; fix the cause and run 'keyhold drive encrypt' again (the escrowed key \(record.id) stays unused)"
                )
            }
            print("Encrypted \(device): LUKS2 UUID \(volume.uuid).")
            print("Unlock with: keyhold drive unlock \(device)   (plugged-in USB drives unlock automatically)")
        }
    }

    struct Unlock: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Unlock a LUKS2 drive with its escrowed key: /dev/mapper/keyhold-<uuid> (root).",
            discussion: """
                A drive that is not LUKS, or LUKS without a keyhold token, is left alone (exit 0). The key comes from the agent's \
                cache, else its server (and so the hierarchy). Whether the escrowed key still opens the drive goes to the server \
                at the next heartbeat (key list: verified or DRIFT). A key an administrator revealed is replaced first, as \
                'keyhold drive rekey' does. Without a server, --offline prints a request code for the help desk and \
                --response CODE unlocks with the key of its answer, once.
                Examples:
                  keyhold drive unlock /dev/sdb
                  keyhold drive unlock /dev/sdb --offline                 (no server: prints a request code)
                  keyhold drive unlock /dev/sdb --response 46DCBP-0VHK54-…
                """
        )
        @Argument(help: "The block device or image file.") var device: String
        @Flag(help: "Only check that the escrowed key opens the drive; activate nothing and change nothing (no device-mapper needed).")
        var verifyOnly = false
        @OptionGroup var access: OfflineAccessOptions
        @OptionGroup var agent: AgentOptions

        func run() throws {
            try DriveCommand.requireRoot("keyhold drive unlock")
            _ = try DriveCommand.requireExisting(device)
            let content = try BlockProbe.probe(device)
            guard case .luks = content else {
                print("left alone: \(device) holds \(content.summary), not LUKS")
                return
            }
            let volume = try LUKSVolume.open(device)
            guard let (_, token) = try volume.keyholdToken(), var slot = token.keyslot else {
                print("left alone: \(device) is LUKS without a keyhold token (not a Keyhold drive)")
                return
            }
            let name = LUKSVolume.mappingName(uuid: volume.uuid)
            if !verifyOnly, LUKSVolume.isActive(name) {
                print("already unlocked: /dev/mapper/\(name)")
                return
            }
            if access.offline {
                try access.refuseRequestWithResponse()
                return try access.printRequest(token.keyID, kind: .drive, agent: agent)
            }
            let code = try access.responseCode()
            var key = try agent.key(code.map { .offlineKey(code: $0, keyID: token.keyID) } ?? .key(token.keyID))

            // The escrow check: does the escrowed key still open the drive? Reported to the
            // server at the agent's next heartbeat (verified, or DRIFT).
            let opens = (try? volume.verify(passphrase: DriveCommand.passphrase(key), keyslot: slot)) != nil
            _ = try? agent.client().send(.driveCheck(token.keyID, opens: opens))
            guard opens else {
                throw KeyholdError(
                    .escrowDrift,
                    "the escrowed key \(token.keyID) no longer opens keyslot \(slot) of \(device): its keyslots were changed outside Keyhold (reported to the server as DRIFT)",
                    hint:
                        "open it with the passphrase that replaced the key (cryptsetup open), copy the data off, and encrypt the drive again ('keyhold drive encrypt --erase')"
                )
            }
            if verifyOnly {
                print("verified: the escrowed key \(token.keyID) opens keyslot \(slot) of \(device) (nothing activated)")
                return
            }

            // Rotation: a key revealed to an administrator (or an interrupted rekey) is replaced
            // before the drive is used; if that fails, the drive unlocks with its current key and
            // the next unlock tries again.
            // (Not with a response code: the server is out of reach; the next online unlock re-keys.)
            if code == nil,
                token.rekeyTo != nil || token.previousKeyID != nil
                    || (try? agent.client().send(.keyStatus(token.keyID)).keyStatus().rotationRequired) == true
            {
                do {
                    print("Key \(token.keyID) was revealed or its replacement is unfinished: re-keying \(device) first.")
                    try DriveCommand.rekey(volume, device: device, agent: agent)
                } catch {
                    let text = (error as? KeyholdError).map { "\($0.message) (hint: \($0.hint))" } ?? "\(error)"
                    FileHandle.standardError.write(
                        Data(
                            "keyhold: warning: re-keying \(device) failed: \(text); it unlocks with its current key and is re-keyed at the next unlock\n"
                                .utf8))
                }
                if let (_, now) = try volume.keyholdToken(), let nowSlot = now.keyslot, now.keyID != token.keyID {
                    key = try agent.key(.key(now.keyID))
                    slot = nowSlot
                }
            }
            guard FileManager.default.fileExists(atPath: "/dev/mapper/control") else {
                throw KeyholdError(
                    .deviceMapperUnavailable, "this machine has no device-mapper (/dev/mapper/control is missing), so \(device) cannot be activated",
                    hint: "load dm-crypt ('modprobe dm-crypt'); 'keyhold drive unlock --verify-only' checks the key without activating"
                )
            }
            try volume.activate(name: name, passphrase: DriveCommand.passphrase(key), keyslot: slot)
            DriveCommand.remember(device: device, mapping: name)
            print("unlocked: \(device) → /dev/mapper/\(name)")
        }
    }

    struct Lock: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Close the mapping of a drive unlocked by Keyhold (root).",
            discussion: """
                Example:
                  sudo keyhold drive lock /dev/sdb
                """)
        @Argument(help: "The block device or image file (it may already be unplugged).") var device: String

        func run() throws {
            try DriveCommand.requireRoot("keyhold drive lock")
            var name: String?
            if FileManager.default.fileExists(atPath: device), case .luks(let uuid, _) = try BlockProbe.probe(device) {
                name = LUKSVolume.mappingName(uuid: uuid)
            }
            // The note names the mapping as it was made (before mapping names were lowercased, a
            // header's uppercase UUID made an uppercase name).
            if name.map({ !LUKSVolume.isActive($0) }) ?? true, let noted = DriveCommand.remembered(device: device) { name = noted }
            guard let name, LUKSVolume.isActive(name) else {
                print("not unlocked: no Keyhold mapping for \(device)")
                DriveCommand.forget(device: device)
                return
            }
            try LUKSVolume.deactivate(name)
            DriveCommand.forget(device: device)
            print("locked: /dev/mapper/\(name) closed")
        }
    }

    struct Info: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show a drive's LUKS2 header summary and its keyhold token.",
            discussion: """
                Example:
                  keyhold drive info /dev/sdb --json
                """)
        @Argument(help: "The block device or image file.") var device: String
        @Flag(help: "Print JSON.") var json = false

        struct Report: Encodable {
            var device: String
            var content: String
            var luks: Bool
            var uuid: String?
            var cipher: String?
            var volumeKeyBits: Int?
            var keyslots: [Int]?
            var tokens: [String]?
            var keyhold: KeyholdToken?
            var mapping: String?
            var unlocked: Bool?

            enum CodingKeys: String, CodingKey {
                case device, content, luks, uuid, cipher, keyslots, tokens, keyhold, mapping, unlocked
                case volumeKeyBits = "volume_key_bits"
            }
        }

        func run() throws {
            _ = try DriveCommand.requireExisting(device)
            let content = try BlockProbe.probe(device)
            var report = Report(device: device, content: content.summary, luks: false)
            if case .luks = content {
                let volume = try LUKSVolume.open(device)
                let name = LUKSVolume.mappingName(uuid: volume.uuid)
                report.luks = true
                report.uuid = volume.uuid
                report.cipher = volume.cipher
                report.volumeKeyBits = volume.volumeKeyBits
                report.keyslots = volume.activeKeyslots
                report.tokens = volume.tokens().map { "\($0.id): \($0.type)" }
                report.keyhold = try volume.keyholdToken()?.token
                report.mapping = "/dev/mapper/\(name)"
                report.unlocked = LUKSVolume.isActive(name)
            }
            if json {
                print(try WireFormat.prettyText(report))
                return
            }
            print("device:      \(device)")
            print("content:     \(report.content)")
            guard report.luks else { return }
            print("cipher:      \(report.cipher ?? "?"), \(report.volumeKeyBits ?? 0)-bit volume key")
            print("keyslots:    \((report.keyslots ?? []).map(String.init).joined(separator: ", "))")
            print("tokens:      \((report.tokens ?? []).map(PrintableText.escaped).joined(separator: ", "))")
            if let t = report.keyhold {
                print("keyhold key: \(t.keyID) (keyslot \(PrintableText.escaped(t.keyslots.joined(separator: ","))))")
                print("escrowed at: server \(t.originServerID) (\(PrintableText.escaped(t.serverAddress)))")
            } else {
                print("keyhold key: none (not a Keyhold drive)")
            }
            print("mapping:     \(report.mapping ?? "") (\(report.unlocked == true ? "unlocked" : "locked"))")
        }
    }

    // MARK: Runtime notes (which mapping a device got)

    static func note(for device: String) -> String {
        "\(runtimeFolder)/" + device.replacingOccurrences(of: "/", with: "_")
    }

    static func remember(device: String, mapping: String) {
        try? FileManager.default.createDirectory(atPath: runtimeFolder, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        try? Data(mapping.utf8).write(to: URL(fileURLWithPath: note(for: device)), options: .atomic)
    }

    static func remembered(device: String) -> String? {
        (try? String(contentsOfFile: note(for: device), encoding: .utf8)).map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
    }

    static func forget(device: String) {
        try? FileManager.default.removeItem(atPath: note(for: device))
    }
}

/// A failure injected on purpose between the steps of `drive encrypt`, so tests can show that
/// every half-made state is rolled back (a real failure there — a full disk, a yanked stick —
/// cannot be produced on demand). `KEYHOLD_TEST_FAULT=drive-encrypt:<step>`; it can only make
/// the command fail, never skip a check.
enum TestFault {
    static func check(_ step: String) throws {
        guard ProcessInfo.processInfo.environment["KEYHOLD_TEST_FAULT"] == "drive-encrypt:\(step)" else { return }
        throw KeyholdError(.driveFailed, "fault injected after the \(step) step (KEYHOLD_TEST_FAULT)", hint: "unset KEYHOLD_TEST_FAULT")
    }

    /// `KEYHOLD_TEST_FAULT=drive-rekey:<step>`: the process kills itself with SIGKILL after that
    /// step of `drive rekey` — as a power cut or `kill -9` would, with no cleanup at all.
    static func crash(_ step: String) {
        guard ProcessInfo.processInfo.environment["KEYHOLD_TEST_FAULT"] == "drive-rekey:\(step)" else { return }
        kill(getpid(), SIGKILL)
    }
}

extension DriveCommand {
    /// `keyhold drive rekey DEVICE`: replaces the drive's escrowed key (docs/spec/luks2-token.md,
    /// "Re-keying"). Each step is one header write, and the token always names a key that opens
    /// the drive; an interrupted run is finished by running the command again.
    struct Rekey: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Replace a drive's escrowed key with a new one (root): after a reveal, or on schedule.",
            discussion: """
                A new key is escrowed first; then a keyslot for it is added, the keyhold token switched to it, \
                the old key's keyslot removed, and the old key retired at the server. Interrupted at any point, \
                the drive still opens with the key its token names; run the command again to finish.
                Example: keyhold drive rekey /dev/sdb
                """)
        @Argument(help: "The block device or image file.") var device: String
        @OptionGroup var agent: AgentOptions

        func run() throws {
            try DriveCommand.requireRoot("keyhold drive rekey")
            _ = try DriveCommand.requireExisting(device)
            guard case .luks = try BlockProbe.probe(device) else {
                throw KeyholdError(.usage, "\(device) is not a LUKS drive", hint: "encrypt it first: 'keyhold drive encrypt \(device)'")
            }
            try DriveCommand.rekey(try LUKSVolume.open(device), device: device, agent: agent)
        }
    }

    /// Replaces the drive's escrowed key (`drive rekey`, and `drive unlock` for a revealed key):
    /// escrow → intent → keyslot → token → old keyslot → retirement, resuming an interrupted run
    /// from what the token notes.
    static func rekey(_ volume: LUKSVolume, device: String, agent: AgentOptions) throws {
        guard let (tokenID, found) = try volume.keyholdToken(), var slot = found.keyslot else {
            throw KeyholdError(.usage, "\(device) has no keyhold token", hint: "only drives made by 'keyhold drive encrypt' are re-keyed")
        }
        var token = found
        let status = try agent.client().send(.status).status()
        guard status.enrolled, let serverAddress = status.serverAddress else {
            throw KeyholdError(.configuration, "this device is not enrolled with a Keyhold server", hint: "enroll it: 'keyhold enroll TOKEN'")
        }
        let current = try agent.key(.key(token.keyID))

        // A run that stopped after switching the token: only the old keyslot and the retirement are left.
        if let previous = token.previousKeyID {
            print("Finishing the rekey of \(device) from key \(previous) to \(token.keyID)…")
            try finish(volume, device: device, tokenID: tokenID, token: &token, slot: slot, previous: previous, agent: agent)
            return
        }

        // 1. The new key: escrowed first (or the one an interrupted run escrowed and noted).
        let new: KeyFile
        if let pending = token.rekeyTo {
            print("Resuming the rekey of \(device) to key \(pending)…")
            new = try agent.key(.key(pending))
        } else {
            print("Escrowing a new drive key with server \(status.serverID?.description ?? "?") at \(serverAddress)…")
            new = try agent.key(.driveKey(label: "drive \(device) on \(ProcessInfo.processInfo.hostName) (replaces \(token.keyID))"))
            TestFault.crash("escrow")
            guard let id = new.record?.id else {
                throw KeyholdError(.internalError, "the agent returned a drive key without its record", hint: "check the agent's version")
            }
            token.rekeyTo = id
            try volume.replaceToken(tokenID, with: token)
            TestFault.crash("intent")
        }
        guard let newID = token.rekeyTo, let origin = new.record?.originServerID else {
            throw KeyholdError(.internalError, "the new key has no record", hint: "check the agent's version")
        }
        print("  key \(newID) escrowed (acknowledged after the server's commit)")

        // 2. A keyslot for it (unless the interrupted run added it already).
        let others = volume.activeKeyslots.filter { $0 != slot }
        let newSlot: Int
        if let existing = volume.keyslot(openedBy: DriveCommand.passphrase(new), among: others) {
            newSlot = existing
        } else {
            newSlot = try volume.addKeyslot(
                passphrase: DriveCommand.passphrase(new), authorisedBy: DriveCommand.passphrase(current), kdf: .fullEntropyKey)
            TestFault.crash("keyslot")
        }
        try volume.verify(passphrase: DriveCommand.passphrase(new), keyslot: newSlot)
        print("  keyslot \(newSlot): the new key")

        // 3. The token names the new key from now on (one header write).
        let previous = token.keyID
        token = KeyholdToken(keyslot: newSlot, keyID: newID, originServerID: origin, serverAddress: serverAddress)
        token.previousKeyID = previous
        try volume.replaceToken(tokenID, with: token)
        TestFault.crash("token")
        print("  token \(tokenID): key \(newID)")
        slot = newSlot
        try finish(volume, device: device, tokenID: tokenID, token: &token, slot: slot, previous: previous, agent: agent)
    }

    /// Steps 4 and 5: removes the keyslot `previous` opens, has the server retire it, and
    /// clears the token's note of it.
    private static func finish(
        _ volume: LUKSVolume, device: String, tokenID: Int, token: inout KeyholdToken, slot: Int, previous: KeyID, agent: AgentOptions
    ) throws {
        let old = try agent.key(.key(previous))
        if let oldSlot = volume.keyslot(openedBy: DriveCommand.passphrase(old), among: volume.activeKeyslots.filter { $0 != slot }) {
            try volume.destroyKeyslot(oldSlot)
            TestFault.crash("old-keyslot")
            print("  keyslot \(oldSlot) (key \(previous)) removed")
        }
        _ = try agent.client().send(.retireKey(previous, replacedBy: token.keyID)).status()
        TestFault.crash("retire")
        print("  key \(previous) retired at the server (released by no server from now on)")
        token.previousKeyID = nil
        try volume.replaceToken(tokenID, with: token)
        // The new key opens the drive: the server shows it verified from the next heartbeat.
        _ = try? agent.client().send(.driveCheck(token.keyID, opens: true))
        print("Re-keyed \(device): it opens with key \(token.keyID) only.")
    }
}
