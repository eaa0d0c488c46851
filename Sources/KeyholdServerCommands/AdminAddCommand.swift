import ArgumentParser
import Foundation
import KeyholdClient
import KeyholdCommandLine
import KeyholdCore
import KeyholdProtocol
import KeyholdSystem

extension AdminCommand {
    /// `keyhold-server admin add NAME`: a certificate for a person, made over the API by an
    /// administrator; the new key pair is made here and written next to the certificate.
    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Issue an administrator certificate for a person (NAME.pem, NAME.key; --p12 for a browser).",
            discussion: """
                The key pair is made on this machine and never sent. The new administrator acts with \
                'keyhold-server --admin-cert NAME.pem --admin-key NAME.key …' (or KEYHOLD_ADMIN_CERT and \
                KEYHOLD_ADMIN_KEY); every action is audited under their id and name.
                Example: keyhold-server admin add alice --out-dir /root/alice --p12 /root/alice/alice.p12
                """)
        @OptionGroup var data: DataDirOption
        @Argument(help: "The person's name or login (1…64 printable characters).") var name: String
        @Option(help: ArgumentHelp("Where to write NAME.pem and NAME.key (default: the current directory).", valueName: "dir"))
        var outDir: String = "."
        @Option(help: ArgumentHelp("Also write a PKCS#12 bundle (certificate, key, CA) to this file, for a browser.", valueName: "file"))
        var p12: String?
        @Option(help: ArgumentHelp("Read the PKCS#12 bundle's password from this file (default: ask).", valueName: "file"))
        var p12PasswordFile: String?

        func run() async throws {
            let stem = String(name.map { $0.isLetter || $0.isNumber || "._@-".contains($0) ? $0 : "_" })
            guard !stem.isEmpty, !stem.hasPrefix(".") else {
                throw KeyholdError(.usage, "'\(name)' cannot name the certificate files", hint: "use a login-like name, for example 'alice'")
            }
            let folder = URL(fileURLWithPath: outDir)
            let certificatePath = folder.appendingPathComponent("\(stem).pem").path
            let keyPath = folder.appendingPathComponent("\(stem).key").path
            for path in [certificatePath, keyPath] + (p12.map { [$0] } ?? []) where FileManager.default.fileExists(atPath: path) {
                throw KeyholdError(.destinationExists, "\(path) exists", hint: "move it away or choose another --out-dir")
            }
            let password = try p12.map { _ in
                let text = try PasswordInput.read(prompt: "Password for the PKCS#12 bundle: ", confirm: true, file: p12PasswordFile)
                guard text.count >= 8 else {
                    throw KeyholdError(.usage, "the PKCS#12 password must have at least 8 characters", hint: "choose a longer one")
                }
                return text
            }
            let key = try ClientKey(name: name)
            let answer = try await withAdmin(data) {
                try await $0.post(
                    APIPath.adminAdministrators, AdministratorCreateRequest(name: name, csrPEM: key.csrPEM), as: AdministratorCreateResponse.self)
            }
            try key.checkIssued(answer.certificatePEM, caPEM: answer.caPEM)
            try AtomicFileWriter.replace(keyPath, with: Data(key.privateKeyPEM.utf8), mode: 0o600)
            try AtomicFileWriter.replace(certificatePath, with: Data(answer.certificatePEM.utf8), mode: 0o644)
            print("administrator \(answer.id) '\(PrintableText.escaped(name))'")
            print("certificate: \(certificatePath)")
            print("key:         \(keyPath) (keep it secret)")
            if let p12, let password {
                let bundle = try PKCS12File.make(
                    certificatePEM: answer.certificatePEM, keyPEM: key.privateKeyPEM, caPEM: answer.caPEM, name: "Keyhold administrator \(name)",
                    password: password)
                try AtomicFileWriter.replace(p12, with: Data(bundle), mode: 0o600)
                print("PKCS#12:     \(p12)")
            }
        }
    }
}
