import ArgumentParser
import AsyncHTTPClient
import NIOCore
import NIOHTTP1
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
        subcommands: [NodeCommand.self, ClusterCommand.self, VotersCommand.self]
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
    @Option(help: help("eventLoops")) var eventLoops: String?
    @Option(help: help("partitions")) var partitions: String?
    @Option(help: help("logCompactEntries")) var logCompactEntries: String?
    @Option(help: help("logCompactBytes")) var logCompactBytes: String?
    @Option(help: help("otlpEndpoint")) var otlpEndpoint: String?
    @Option(help: help("otlpProtocol")) var otlpProtocol: String?
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
            ("traceBuffer", traceBuffer), ("logLevel", logLevel), ("computeThreads", computeThreads), ("eventLoops", eventLoops),
            ("partitions", partitions), ("logCompactEntries", logCompactEntries), ("logCompactBytes", logCompactBytes),
            ("otlpEndpoint", otlpEndpoint), ("otlpProtocol", otlpProtocol),
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
            var handler = DeferredMetadataLogHandler(StreamLogHandler.standardError(label: label))
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "skein")
        do {
            let node = try SkeinNode(settings: settings, applications: [BlogApplication()], workflows: try BundledWorkflows.all(), logger: logger)
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

/// `skein cluster`: a node's view of the cluster, for people (or `--json`).
struct ClusterCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cluster",
        abstract: "Print a node's view of the cluster: members, their state, and partition leaders."
    )

    @Option(help: ArgumentHelp("Client address of any node.", valueName: "HOST:PORT")) var node = "127.0.0.1:8080"
    @Flag(help: "Print the JSON of GET /v1/cluster as it is.") var json = false

    struct View: Decodable {
        struct Member: Decodable { let name, peer, client, state: String; let incarnation: UInt64; let generation: UInt64? }
        struct Partition: Decodable { let id: Int; let leader: String?; let epoch: Int; let replicas: [String] }
        struct Traffic: Decodable { let bytesIn, bytesOut: Int }
        let node: String
        let generation: UInt64?
        let members: [Member]
        let partitions: [Partition]
        let gossip: Traffic?
    }

    func run() async throws {
        let body: Data
        do {
            var request = HTTPClientRequest(url: "http://\(node)/v1/cluster")
            request.method = .GET
            let response = try await HTTPClient.shared.execute(request, timeout: .seconds(3))
            guard response.status == .ok else { fail("\(node) answered \(response.status.code) to GET /v1/cluster") }
            body = Data(try await response.body.collect(upTo: 4 << 20).readableBytesView)
        } catch {
            fail("cannot reach \(node) (\(error))")
        }
        if json {
            print(String(decoding: body, as: UTF8.self))
            return
        }
        guard let view = try? JSONDecoder().decode(View.self, from: body) else { fail("\(node) answered something that is not a cluster view") }
        var header = "node \(view.node)"
        if let generation = view.generation { header += " (generation \(generation))" }
        if let gossip = view.gossip { header += "; peer traffic in \(gossip.bytesIn / 1024) KiB, out \(gossip.bytesOut / 1024) KiB" }
        print(header)
        var leads: [String: [Int]] = [:]
        for p in view.partitions { if let leader = p.leader { leads[leader, default: []].append(p.id) } }
        var rows: [[String]] = [["MEMBER", "STATE", "INCARNATION", "GENERATION", "CLIENT", "PEER", "LEADS PARTITIONS"]]
        for m in view.members {
            let generation: String = m.generation.map { String($0) } ?? "-"
            let led: String = leads[m.name].map { ids in ids.map { String($0) }.joined(separator: ",") } ?? "-"
            rows.append([m.name, m.state, String(m.incarnation), generation, m.client, m.peer, led])
        }
        let widths = (0..<rows[0].count).map { c in rows.map { $0[c].count }.max()! }
        for row in rows {
            print(zip(row, widths).map { $0.padding(toLength: $1, withPad: " ", startingAt: 0) }.joined(separator: "  "))
        }
        if view.partitions.isEmpty {
            print("partitions: none reported (replication is starting)")
        } else {
            let leaderless: [String] = view.partitions.filter { $0.leader == nil }.map { String($0.id) }
            let epochs: [Int] = view.partitions.map(\.epoch)
            let lowest: Int = epochs.min() ?? 0
            let highest: Int = epochs.max() ?? 0
            let replicas: String = view.partitions[0].replicas.joined(separator: ",")
            let leadership: String = leaderless.isEmpty ? "every partition has a leader" : "without a leader: " + leaderless.joined(separator: ",")
            print("partitions: \(view.partitions.count), epochs \(lowest)–\(highest), replicas \(replicas); \(leadership)")
        }
    }

    func fail(_ line: String) -> Never {
        FileHandle.standardError.write(Data("skein: \(line)\n".utf8))
        Foundation.exit(1)
    }
}
