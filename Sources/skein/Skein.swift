import ArgumentParser
import Foundation
import Logging
import ServiceLifecycle
import UnixSignals
import SkeinExamples
import SkeinNode

@main
struct Skein: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "skein",
        abstract: "A cluster node for trace-first HTTP services and durable workflows.",
        subcommands: [NodeCommand.self]
    )
}

/// `skein node`: run one node hosting the bundled example applications.
struct NodeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "node",
        abstract: "Run a node with the bundled example applications.",
        discussion: """
            Every setting has one name used three ways: a flag (--max-body-size), an environment \
            variable (SKEIN_MAX_BODY_SIZE) and a key of the --config JSON file ("maxBodySize"). \
            Flags win over the environment, which wins over the file.
            """
    )

    @Option(help: help("name")) var name: String?
    @Option(help: help("listen")) var listen: String?
    @Option(help: help("peer")) var peer: String?
    @Option(help: help("seeds")) var seeds: String?
    @Option(help: help("data")) var data: String?
    @Option(help: help("clusterSecret")) var clusterSecret: String?
    @Option(help: help("maxBodySize")) var maxBodySize: String?
    @Option(help: help("slowRequestMs")) var slowRequestMs: String?
    @Option(help: help("traceBuffer")) var traceBuffer: String?
    @Option(help: help("logLevel")) var logLevel: String?
    @Option(help: help("computeThreads")) var computeThreads: String?
    @Option(help: ArgumentHelp("A JSON file of settings, keyed by the names in quotes above.", valueName: "FILE"))
    var config: String?

    static func help(_ key: String) -> ArgumentHelp {
        let doc = NodeSettings.documentation.first { $0.key == key }!
        return ArgumentHelp("\(doc.help) [\(NodeSettings.environmentName(key)), \"\(key)\"]", valueName: doc.kind)
    }

    func run() async throws {
        var flags: [String: String] = [:]
        let given: [(String, String?)] = [
            ("name", name), ("listen", listen), ("peer", peer), ("seeds", seeds), ("data", data),
            ("clusterSecret", clusterSecret), ("maxBodySize", maxBodySize), ("slowRequestMs", slowRequestMs),
            ("traceBuffer", traceBuffer), ("logLevel", logLevel), ("computeThreads", computeThreads),
        ]
        for case let (key, value?) in given { flags[key] = value }

        let settings: NodeSettings
        do {
            settings = try await NodeSettings.load(flags: flags, configFile: config)
        } catch {
            fail(error.description)
        }
        let level = settings.logLevel
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "skein")
        do {
            let node = try SkeinNode(settings: settings, applications: [BlogApplication()], logger: logger)
            let group = ServiceGroup(configuration: .init(
                services: [node], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
            try await group.run()
        } catch let error as NodeStartError {
            fail(error.description)
        } catch {
            fail("\(error)")
        }
    }

    /// One line on standard error, exit status 1.
    func fail(_ line: String) -> Never {
        FileHandle.standardError.write(Data("skein: \(line)\n".utf8))
        Foundation.exit(1)
    }
}
