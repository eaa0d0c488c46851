// swift-tools-version:6.1
import PackageDescription

/// One set of settings for every target: Swift 6 language mode (strict concurrency) plus the
/// upcoming features that keep dependencies explicit.
let swiftSettings: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("InternalImportsByDefault"),
    .enableUpcomingFeature("MemberImportVisibility"),
]

let package = Package(
    name: "keyhold",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "keyhold", targets: ["keyhold"]),
        .executable(name: "keyhold-server", targets: ["keyhold-server"]),
        .executable(name: "keyhold-agent", targets: ["keyhold-agent"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-crypto.git", from: "4.5.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
    ],
    targets: [
        // Key ids, secret bytes, key records, errors. No I/O and no third-party dependency, so the
        // header fuzzer can compile it with plain swiftc.
        .target(name: "KeyholdCore", swiftSettings: swiftSettings),
        // The Keyhold file container: header + Tink-compatible AES-256-GCM-HKDF streaming body.
        .target(
            name: "KeyholdFormat",
            dependencies: [
                "KeyholdCore",
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: swiftSettings
        ),
        // One glibc allocator setting for the streaming commands (see KeyholdCLI/Keyhold.swift).
        .target(name: "CKeyholdAllocator"),
        // The `keyhold` command tree.
        .target(
            name: "KeyholdCLI",
            dependencies: [
                "KeyholdCore",
                "KeyholdFormat",
                "CKeyholdAllocator",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(name: "keyhold", dependencies: ["KeyholdCLI"], swiftSettings: swiftSettings),
        .executableTarget(
            name: "keyhold-server",
            dependencies: ["KeyholdCore", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "keyhold-agent",
            dependencies: ["KeyholdCore", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            swiftSettings: swiftSettings
        ),
        // Helpers shared by the test suites: vector files, repository paths, running the real executables.
        .target(name: "KeyholdTestSupport", path: "Tests/KeyholdTestSupport", swiftSettings: swiftSettings),
        .testTarget(name: "KeyholdCoreTests", dependencies: ["KeyholdCore"], swiftSettings: swiftSettings),
        .testTarget(
            name: "KeyholdFormatTests",
            dependencies: [
                "KeyholdCore",
                "KeyholdFormat",
                "KeyholdTestSupport",
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "KeyholdCLITests",
            dependencies: ["KeyholdCore", "KeyholdFormat", "KeyholdTestSupport"],
            swiftSettings: swiftSettings
        ),
    ]
)
