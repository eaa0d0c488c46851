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
        .package(url: "https://github.com/apple/swift-certificates.git", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-asn1.git", from: "1.7.4"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.10.0"),
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.2"),
        .package(url: "https://github.com/apple/swift-http-types.git", from: "1.8.0"),
        .package(url: "https://github.com/LebJe/TOMLKit.git", from: "0.6.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
    ],
    targets: [
        // Key ids, secret bytes, key records, errors. No I/O and no third-party dependency, so the
        // header fuzzer can compile it with plain swiftc.
        .target(name: "KeyholdCore", swiftSettings: swiftSettings),
        // libsystemd (Debian's libsystemd-dev), for sd_notify: readiness, watchdog, reload, stop.
        .systemLibrary(name: "CSystemd", pkgConfig: "libsystemd", providers: [.apt(["libsystemd-dev"])]),
        // The one gate into failing system calls, atomic file replacement, process locks, sd_notify.
        .target(name: "KeyholdSystem", dependencies: ["KeyholdCore", "CSystemd"], swiftSettings: swiftSettings),
        // The Keyhold file container: header + Tink-compatible AES-256-GCM-HKDF streaming body.
        .target(
            name: "KeyholdFormat",
            dependencies: [
                "KeyholdCore",
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: swiftSettings
        ),
        // libcryptsetup and libblkid (Debian's -dev packages), wrapped only by KeyholdLUKS.
        .systemLibrary(name: "CCryptsetup", pkgConfig: "libcryptsetup", providers: [.apt(["libcryptsetup-dev"])]),
        .systemLibrary(name: "CBlkid", pkgConfig: "blkid", providers: [.apt(["libblkid-dev"])]),
        // LUKS2 volumes, the keyhold token and device probing; every C error becomes a KeyholdError here.
        .target(name: "KeyholdLUKS", dependencies: ["KeyholdCore", "CCryptsetup", "CBlkid"], swiftSettings: swiftSettings),
        // Password-protected key export files: age v1 (scrypt recipient) around a streamed JSON document.
        .target(
            name: "KeyholdExport",
            dependencies: [
                "KeyholdCore",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "CryptoExtras", package: "swift-crypto"),
            ],
            swiftSettings: swiftSettings
        ),
        // Wire messages, the audit vocabulary, roles, API paths, error statuses and runtime.json,
        // shared by agent, server and CLI.
        .target(
            name: "KeyholdProtocol", dependencies: ["KeyholdCore", "KeyholdSystem", .product(name: "Crypto", package: "swift-crypto")],
            swiftSettings: swiftSettings),
        // Repository protocols, records and the in-memory driver; the drivers below implement them.
        .target(name: "KeyholdStore", dependencies: ["KeyholdCore", "KeyholdProtocol"], swiftSettings: swiftSettings),
        .target(
            name: "KeyholdStoreSQLite",
            dependencies: ["KeyholdCore", "KeyholdProtocol", "KeyholdStore", .product(name: "GRDB", package: "GRDB.swift")],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "KeyholdStorePostgres",
            dependencies: [
                "KeyholdCore", "KeyholdProtocol", "KeyholdStore",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // Mutual-TLS HTTPS client for the server's API (admin CLI, agents, secondaries).
        .target(
            name: "KeyholdClient",
            dependencies: [
                "KeyholdCore", "KeyholdProtocol",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: swiftSettings
        ),
        // The client of the agent's local socket (the keyhold CLI, the unlock unit, tests, the demo).
        .target(name: "KeyholdAgentClient", dependencies: ["KeyholdCore", "KeyholdProtocol", "KeyholdSystem"], swiftSettings: swiftSettings),
        // Strict TOML configuration files (TOMLKit): config.toml and agent.toml.
        .target(
            name: "KeyholdConfig",
            dependencies: ["KeyholdCore", "KeyholdProtocol", .product(name: "TOMLKit", package: "TOMLKit")],
            swiftSettings: swiftSettings
        ),
        // The administration server as a service: CA and enrollment, escrow, release, audit,
        // hierarchy, transfers, its API. It takes a Repository; it knows no driver and no CLI.
        .target(
            name: "KeyholdServer",
            dependencies: [
                "KeyholdCore", "KeyholdProtocol", "KeyholdStore", "KeyholdClient", "KeyholdExport", "KeyholdSystem",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            swiftSettings: swiftSettings
        ),
        // The daemons' log lines (text or JSON, one write per line, a level SIGHUP can change) and
        // their conversation with systemd.
        .target(
            name: "KeyholdLogging",
            dependencies: [
                "KeyholdCore", "KeyholdSystem",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // The commit and date a build was made from (`--version`), stamped by the plugin below.
        .plugin(name: "BuildStamp", capability: .buildTool()),
        .target(name: "KeyholdBuildStamp", swiftSettings: swiftSettings, plugins: ["BuildStamp"]),
        // How every executable parses, runs and reports errors (`NAME: error:` + `hint:`), progress, passwords.
        .target(
            name: "KeyholdCommandLine",
            dependencies: [
                "KeyholdBuildStamp", "KeyholdCore", "KeyholdSystem", .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: swiftSettings
        ),
        // `keyhold-server`: the administrator's commands, `init` and `run` (which chooses the database
        // driver and builds the service group).
        .target(
            name: "KeyholdServerCommands",
            dependencies: [
                "KeyholdServer", "KeyholdCore", "KeyholdProtocol", "KeyholdStore", "KeyholdStoreSQLite", "KeyholdStorePostgres",
                "KeyholdClient", "KeyholdCommandLine", "KeyholdConfig", "KeyholdExport", "KeyholdSystem", "KeyholdLogging",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // SO_PEERCRED and group membership for the agent's local socket.
        .target(name: "CKeyholdPeer"),
        // The device agent's services: state directory, sealed key cache, escrow-first keys, heartbeat,
        // the local socket (SwiftNIO).
        .target(
            name: "KeyholdAgent",
            dependencies: [
                "KeyholdCore", "KeyholdProtocol", "KeyholdClient", "KeyholdAgentClient", "KeyholdSystem", "CKeyholdPeer",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // `keyhold-agent run`: agent.toml, flags, the service group.
        .target(
            name: "KeyholdAgentCommands",
            dependencies: [
                "KeyholdAgent", "KeyholdCore", "KeyholdCommandLine", "KeyholdConfig", "KeyholdLogging",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // One way to launch servers, agents and programs, for the tests, the demo and the benchmarks:
        // readiness is a real request answered, never a fixed sleep.
        .target(name: "KeyholdLauncher", dependencies: ["KeyholdCore", "KeyholdProtocol", "KeyholdAgentClient"], swiftSettings: swiftSettings),
        // One glibc allocator setting for the streaming commands (see KeyholdCLI/Keyhold.swift).
        .target(name: "CKeyholdAllocator"),
        // The `keyhold` command tree.
        .target(
            name: "KeyholdCLI",
            dependencies: [
                "KeyholdCore",
                "KeyholdFormat",
                "KeyholdProtocol",
                "KeyholdCommandLine",
                "KeyholdSystem",
                "KeyholdLUKS",
                "KeyholdAgentClient",
                "KeyholdLauncher",
                "CKeyholdAllocator",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(name: "keyhold", dependencies: ["KeyholdCLI"], swiftSettings: swiftSettings),
        .executableTarget(name: "keyhold-server", dependencies: ["KeyholdServerCommands"], swiftSettings: swiftSettings),
        .executableTarget(name: "keyhold-agent", dependencies: ["KeyholdAgentCommands"], swiftSettings: swiftSettings),
        // Helpers shared by the test suites: vector files, repository paths, running the real executables.
        .target(
            name: "KeyholdTestSupport",
            dependencies: ["KeyholdCore", "KeyholdProtocol", "KeyholdClient", "KeyholdAgentClient", "KeyholdLauncher"],
            path: "Tests/KeyholdTestSupport",
            swiftSettings: swiftSettings
        ),
        // Load generator for `make bench` (key release over mutual TLS; storage limit on SQLite).
        .executableTarget(
            name: "keyhold-bench",
            dependencies: [
                "KeyholdCore", "KeyholdProtocol", "KeyholdClient", "KeyholdStore", "KeyholdStoreSQLite", "KeyholdLauncher",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            path: "Benchmarks/KeyholdBench",
            swiftSettings: swiftSettings
        ),
        .testTarget(name: "KeyholdCoreTests", dependencies: ["KeyholdCore"], swiftSettings: swiftSettings),
        .testTarget(
            name: "KeyholdProtocolTests", dependencies: ["KeyholdCore", "KeyholdProtocol", "KeyholdTestSupport"], swiftSettings: swiftSettings),
        .testTarget(name: "KeyholdExportTests", dependencies: ["KeyholdCore", "KeyholdExport", "KeyholdTestSupport"], swiftSettings: swiftSettings),
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
            name: "KeyholdStoreTests",
            dependencies: ["KeyholdCore", "KeyholdProtocol", "KeyholdStore", "KeyholdStoreSQLite", "KeyholdStorePostgres", "KeyholdTestSupport"],
            swiftSettings: swiftSettings
        ),
        // In process: ServerCore and the routers on the in-memory repository (HummingbirdTesting).
        .testTarget(
            name: "KeyholdServerTests",
            dependencies: [
                "KeyholdCore", "KeyholdProtocol", "KeyholdStore", "KeyholdServer", "KeyholdClient", "KeyholdTestSupport",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: swiftSettings
        ),
        // In process: the agent's socket, policy and key cache.
        .testTarget(
            name: "KeyholdAgentTests",
            dependencies: [
                "KeyholdCore", "KeyholdProtocol", "KeyholdAgent", "KeyholdAgentClient", "KeyholdTestSupport",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // The configuration files, through the real parser.
        .testTarget(
            name: "KeyholdConfigTests",
            dependencies: ["KeyholdCore", "KeyholdConfig", "KeyholdTestSupport"],
            swiftSettings: swiftSettings
        ),
        // Real servers and agents as processes: TLS, enrollment, the hierarchy, drives, transfers, moves.
        .testTarget(
            name: "KeyholdEndToEndTests",
            dependencies: [
                "KeyholdCore", "KeyholdProtocol", "KeyholdClient", "KeyholdFormat", "KeyholdSystem", "KeyholdTestSupport",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Crypto", package: "swift-crypto"),
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
