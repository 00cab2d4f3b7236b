// swift-tools-version:6.2
import PackageDescription

let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
]

/// The cluster cores and their simulations are optimized even in debug builds: the
/// simulation runs thousands of seeds per `swift test`, which needs optimized code, and the
/// cores are small enough to build quickly either way.
let optimizedInDebug: [SwiftSetting] = [.unsafeFlags(["-O"], .when(configuration: .debug))]

let package = Package(
    name: "skein",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "SkeinPipeline", targets: ["SkeinPipeline"]),
        .library(name: "SkeinCluster", targets: ["SkeinCluster"]),
        .library(name: "SkeinStore", targets: ["SkeinStore"]),
        .library(name: "SkeinWorkflow", targets: ["SkeinWorkflow"]),
        .library(name: "SkeinNode", targets: ["SkeinNode"]),
        .library(name: "SkeinExamples", targets: ["SkeinExamples"]),
        .executable(name: "skein", targets: ["skein"]),
        .executable(name: "skein-baseline", targets: ["SkeinBaseline"]),
    ],
    dependencies: [
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-http2.git", from: "1.46.0"),
        .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.35.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-distributed-tracing.git", from: "1.7.3"),
        .package(url: "https://github.com/apple/swift-configuration.git", from: "1.4.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
        .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.10.0"),
        .package(url: "https://github.com/apple/swift-http-types.git", from: "1.8.0"),
        .package(url: "https://github.com/apple/swift-system.git", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-crypto.git", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-collections.git", from: "1.6.0"),
        // OTLP/HTTP span export only: the gRPC exporter would add grpc-swift to every build.
        .package(url: "https://github.com/swift-otel/swift-otel.git", from: "1.6.0", traits: ["OTLPHTTP"]),
    ],
    targets: [
        // Pure pipeline core: steps, decisions, slots, views, router, errors, timelines. No I/O.
        .target(
            name: "SkeinPipeline",
            dependencies: [
                .product(name: "HTTPTypes", package: "swift-http-types"),
            ],
            swiftSettings: swiftSettings
        ),
        // Pure cluster core: membership (SWIM + Lifeguard), message types and codec. No I/O.
        .target(
            name: "SkeinCluster",
            swiftSettings: swiftSettings + optimizedInDebug
        ),
        // Pure workflow core: flow builder, definition hash, instance state machine, codec. No I/O.
        .target(
            name: "SkeinWorkflow",
            dependencies: [
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: swiftSettings
        ),
        // The node's own SQLite database (GRDB, WAL): local key-value and SQL.
        .target(
            name: "SkeinStore",
            dependencies: [
                "SkeinPipeline",
                "SkeinCluster",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "GRDBSQLite", package: "GRDB.swift"),
            ],
            swiftSettings: swiftSettings
        ),
        // The imperative shell: HTTP server, effect handlers, tracing, configuration.
        .target(
            name: "SkeinNode",
            dependencies: [
                "SkeinPipeline",
                "SkeinCluster",
                "SkeinStore",
                "SkeinWorkflow",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdHTTP2", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "NIOFoundationEssentialsCompat", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "Instrumentation", package: "swift-distributed-tracing"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Configuration", package: "swift-configuration"),
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "OTel", package: "swift-otel"),
            ],
            swiftSettings: swiftSettings
        ),
        // Applications built on the library, bundled into `skein node`.
        .target(
            name: "SkeinExamples",
            dependencies: [
                "SkeinPipeline",
                "SkeinWorkflow",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            path: "examples",
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "skein",
            dependencies: [
                "SkeinNode",
                "SkeinExamples",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // Bare Hummingbird hello-world: the baseline `cluster/bench pipeline` runs beside Skein.
        .executableTarget(
            name: "SkeinBaseline",
            dependencies: [
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdHTTP2", package: "hummingbird"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "SkeinPipelineTests",
            dependencies: ["SkeinPipeline"],
            exclude: ["CompileFail"]
        ),
        .testTarget(
            name: "SkeinClusterTests",
            dependencies: [
                "SkeinCluster",
                "SkeinWorkflow",
                .product(name: "HeapModule", package: "swift-collections"),
            ],
            swiftSettings: optimizedInDebug
        ),
        .testTarget(
            name: "SkeinWorkflowTests",
            dependencies: ["SkeinWorkflow"]
        ),
        .testTarget(
            name: "SkeinNodeTests",
            dependencies: [
                "SkeinNode",
                "SkeinExamples",
                "SkeinStore",
                "skein",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "InMemoryTracing", package: "swift-distributed-tracing"),
            ]
        ),
    ]
)
