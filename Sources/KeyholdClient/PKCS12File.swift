import CNIOBoringSSL
import Foundation
import KeyholdCore

/// A PKCS#12 (RFC 7292) bundle of a client certificate, its private key and the CA, for a
/// browser or another TLS client to import (`keyhold-server admin add --p12`). Made by
/// BoringSSL's `PKCS12_create` (the copy swift-nio-ssl builds), never by hand: key and
/// certificates encrypted with PBES2 (AES-256-CBC, PBKDF2-HMAC-SHA256), the MAC key derived
/// with as many iterations, so that the file's password is as slow to guess through the MAC
/// as through the key.
public enum PKCS12File {
    /// KDF iterations for the key, the certificates and the MAC (OWASP's figure for
    /// PBKDF2-HMAC-SHA256).
    public static let iterations: Int32 = 600_000

    /// The DER bundle of `certificatePEM` and `keyPEM`, with `caPEM` as its chain, under
    /// `password`; `name` becomes the friendly name browsers show.
    public static func make(certificatePEM: String, keyPEM: String, caPEM: String, name: String, password: String) throws -> [UInt8] {
        guard !password.utf8.contains(0) else {
            throw KeyholdError(.usage, "the PKCS#12 password contains a NUL character", hint: "choose another password")
        }
        let key = try parse(keyPEM, "private key") { PEM_read_bio_PrivateKey($0, nil, nil, nil) }
        defer { EVP_PKEY_free(key) }
        let certificate = try parse(certificatePEM, "certificate") { PEM_read_bio_X509($0, nil, nil, nil) }
        defer { X509_free(certificate) }
        let ca = try parse(caPEM, "CA certificate") { PEM_read_bio_X509($0, nil, nil, nil) }
        guard let chain = sk_X509_new_null() else { throw failure("cannot allocate the certificate chain") }
        // The chain owns `ca` once pushed; freeing the chain frees it.
        defer { sk_X509_pop_free(chain, X509_free) }
        guard sk_X509_push(chain, ca) != 0 else {
            X509_free(ca)
            throw failure("cannot build the certificate chain")
        }
        guard let bundle = PKCS12_create(password, name, key, certificate, chain, 0, 0, iterations, iterations, 0) else {
            throw failure("BoringSSL could not make the PKCS#12 bundle")
        }
        defer { PKCS12_free(bundle) }
        var out: UnsafeMutablePointer<UInt8>? = nil
        let length = i2d_PKCS12(bundle, &out)
        guard length > 0, let out else { throw failure("BoringSSL could not encode the PKCS#12 bundle") }
        defer { OPENSSL_free(out) }
        return Array(UnsafeBufferPointer(start: out, count: Int(length)))
    }

    private static func parse<T>(_ pem: String, _ what: String, _ parse: (OpaquePointer) -> T?) throws -> T {
        var bytes = Array(pem.utf8)
        let value: T? = bytes.withUnsafeMutableBytes { raw in
            guard let bio = BIO_new_mem_buf(raw.baseAddress, Int(raw.count)) else { return nil }
            defer { BIO_free(bio) }
            return parse(bio)
        }
        guard let value else { throw failure("the \(what) is not valid PEM") }
        return value
    }

    private static func failure(_ message: String) -> KeyholdError {
        ERR_clear_error()
        return KeyholdError(.internalError, message, hint: "report this bug")
    }
}
