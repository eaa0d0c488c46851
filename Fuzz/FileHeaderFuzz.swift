// libFuzzer target for the Keyhold file header parser (`make fuzz`).
//
// Property: parsing never traps; whatever parses re-encodes to exactly the bytes it was parsed
// from (no malleability: every accepted header has one encoding), and `FileLayout` never traps on
// any file size.
import KeyholdCore

/// libFuzzer's entry point: parses `data` as a file header; any trap is a finding.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzFileHeader(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    guard let header = try? FileHeader(parsing: bytes) else { return 0 }
    let encoded = header.encoded
    if encoded != Array(bytes.prefix(FileHeader.length)) {
        fatalError("round trip changed the header bytes")
    }
    if let reparsed = try? FileHeader(parsing: encoded), reparsed == header {
    } else {
        fatalError("re-encoded header does not parse to the same value")
    }
    // Derive file sizes from the remaining input and check the layout arithmetic never traps.
    for tail in bytes.dropFirst(FileHeader.length).prefix(8) {
        _ = try? FileLayout(header: header, fileSize: Int(tail) << 20 | size)
    }
    return 0
}
