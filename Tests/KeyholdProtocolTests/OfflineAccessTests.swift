import Crypto
import Foundation
import KeyholdCore
import KeyholdProtocol
import KeyholdTestSupport
import Testing

/// Offline request and response codes (docs/spec/offline-access.md), against vectors made with
/// Python's `cryptography` and its own base32 and check code (scripts/gen-offline-vectors.py).
@Suite struct OfflineAccessTests {
    static let exchanges = try! TestVector.load(suite: "offline-access").filter { $0.name.hasSuffix("-exchange") }
    static let mistyped = try! TestVector.load(suite: "offline-access").filter { !$0.name.hasSuffix("-exchange") }

    @Test(arguments: exchanges)
    func requestAndResponseMatchAnIndependentImplementation(_ vector: TestVector) throws {
        let f = vector.fields
        let request = try OfflineRequest(code: try #require(f["request_code"]))
        #expect(request.bytes == TestVector.hex(f["request"] ?? ""))
        #expect(request.keyID.description == f["key_id"] && request.deviceID.description == f["device_id"])
        #expect(request.requestIDText == f["request_id"])
        #expect(request.code == f["request_code"], "the text form is the same both ways")

        let ephemeral = try Curve25519.KeyAgreement.PrivateKey(rawRepresentation: TestVector.hex(f["response_private"] ?? ""))
        let secret = try SecretKey(bytes: TestVector.hex(f["secret"] ?? ""))
        let expiry = Date(timeIntervalSince1970: TimeInterval(try #require(Int(f["expiry"] ?? ""))))
        let sealed = try OfflineResponse.seal(secret, to: request, expiry: expiry, ephemeral: ephemeral)
        #expect(sealed.bytes == TestVector.hex(f["response"] ?? ""))
        #expect(sealed.code == f["response_code"])

        let response = try OfflineResponse(code: try #require(f["response_code"]))
        let device = try Curve25519.KeyAgreement.PrivateKey(rawRepresentation: TestVector.hex(f["device_private"] ?? ""))
        let opened = try response.open(request, with: device, now: expiry.addingTimeInterval(-1))
        #expect(opened.constantTimeEquals(secret))
    }

    @Test func aResponseOpensOnlyForItsRequestItsDeviceAndBeforeItsExpiry() throws {
        let (request, device) = OfflineRequest.make(keyID: .random(), deviceID: .random())
        let secret = SecretKey.generate()
        let expiry = Date().addingTimeInterval(3600)
        let response = try OfflineResponse.seal(secret, to: request, expiry: expiry)
        #expect(try response.open(request, with: device).constantTimeEquals(secret))

        func code(_ body: () throws -> Void) -> KeyholdError.Code? {
            do { try body() } catch let error as KeyholdError { return error.code } catch { return nil }
            return nil
        }
        // Another device (another private key) with the same request: it does not open.
        #expect(code { _ = try response.open(request, with: Curve25519.KeyAgreement.PrivateKey()) } == .authenticationFailed)
        // Another request of the same device for another key: refused by its id, and by the AEAD.
        var other = request
        other.keyID = .random()
        #expect(code { _ = try response.open(other, with: device) } == .authenticationFailed)
        let (second, secondKey) = OfflineRequest.make(keyID: request.keyID, deviceID: request.deviceID)
        #expect(code { _ = try response.open(second, with: secondKey) } == .invalidCode)
        // Expired.
        #expect(code { _ = try response.open(request, with: device, now: expiry) } == .invalidCode)
        // A later expiry written into the code no longer authenticates.
        var bytes = response.bytes
        bytes[12] ^= 0x01
        #expect(code { _ = try OfflineResponse(bytes: bytes).open(request, with: device, now: Date()) } == .authenticationFailed)
        // A request code is not a response code, and the other way round.
        #expect(code { _ = try OfflineResponse(code: request.code) } == .invalidCode)
        #expect(code { _ = try OfflineRequest(code: response.code) } == .invalidCode)
    }

    @Test(arguments: mistyped)
    func aMistypedCharacterOrGroupIsReportedWithItsGroup(_ vector: TestVector) throws {
        let group = try #require(vector.fields["group"])
        do {
            _ = try OfflineRequest(code: try #require(vector.fields["code"]))
            Issue.record("a mistyped code was accepted")
        } catch let error as KeyholdError {
            #expect(error.code == .invalidCode && error.message.hasPrefix("group \(group) of "), "\(error.message)")
        }
        #expect(throws: Never.self) { try OfflineRequest(code: vector.fields["fixed"] ?? "") }
    }

    @Test func readingForgivesCaseLookalikesAndLineBreaks() throws {
        let (request, _) = OfflineRequest.make(keyID: .random(), deviceID: .random())
        let loose = request.code.lowercased().replacingOccurrences(of: "0", with: "o").replacingOccurrences(of: "1", with: "l")
            .replacingOccurrences(of: "-", with: "-\n ")
        #expect(try OfflineRequest(code: loose) == request)
        let short = request.code.split(separator: "-").dropLast().joined(separator: "-")
        #expect(throws: KeyholdError.self) { try OfflineRequest(code: short) }
    }
}
