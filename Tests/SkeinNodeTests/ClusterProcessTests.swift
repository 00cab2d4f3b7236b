import AsyncHTTPClient
import Foundation
import Testing

/// Real `skein` processes on loopback: convergence from one seed list, SIGKILL detection,
/// rejoining with a new generation, and the peer port's refusal of unproven requests.
@Suite(.serialized) struct ClusterProcessTests {
    struct Member: Decodable { let name, peer, state: String; let incarnation: UInt64; let generation: UInt64 }
    struct View: Decodable { let node: String; let generation: UInt64; let members: [Member] }

    /// A node process with its ports, data directory and log.
    final class NodeProcess: @unchecked Sendable {
        let name: String
        let client: Int
        let peer: Int
        let data: String
        var process: Process?

        init(name: String, client: Int, peer: Int, data: String) {
            self.name = name; self.client = client; self.peer = peer; self.data = data
        }

        func start(seeds: [Int], secret: String, extra: [String] = [], environment: [String: String] = [:]) throws {
            let log = data + "/node.log"
            if !FileManager.default.fileExists(atPath: log) { FileManager.default.createFile(atPath: log, contents: nil) }
            let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
            try handle.seekToEnd()
            let process = Process()
            process.executableURL = URL(fileURLWithPath: ProcessTests.binary)
            process.arguments = ["node", "--name", name, "--listen", "127.0.0.1:\(client)", "--peer", "127.0.0.1:\(peer)",
                                 "--seeds", seeds.map { "127.0.0.1:\($0)" }.joined(separator: ","), "--data", data + "/d",
                                 "--log-level", "info"] + extra
            process.environment = environment.merging(["SKEIN_CLUSTER_SECRET": secret]) { _, secret in secret }
            process.standardOutput = handle
            process.standardError = handle
            process.standardInput = FileHandle.nullDevice
            try process.run()
            self.process = process
        }

        func signal(_ sig: Int32) {
            if let process { kill(process.processIdentifier, sig) }
        }

        var log: String { (try? String(contentsOfFile: data + "/node.log", encoding: .utf8)) ?? "" }
    }

    /// Node processes n1…nN on free ports with fresh data directories (not started yet), one
    /// cluster secret, and the peer ports of the first `voters` nodes as everyone's seeds.
    struct ProcessCluster {
        let nodes: [NodeProcess]
        let seeds: [Int]
        let secret = "test-secret-\(UUID().uuidString)"

        init(_ count: Int, voters: Int? = nil) throws {
            let ports = ClusterProcessTests.freePorts(2 * count)
            let root = temporaryDirectory()
            nodes = (0..<count).map { NodeProcess(name: "n\($0 + 1)", client: ports[$0], peer: ports[count + $0], data: root + "/n\($0 + 1)") }
            for node in nodes { try FileManager.default.createDirectory(atPath: node.data, withIntermediateDirectories: true) }
            seeds = nodes.prefix(voters ?? count).map(\.peer)
        }

        /// Starts the seed nodes.
        func startVoters(extra: [String] = [], environment: [String: String] = [:]) throws {
            for node in nodes.prefix(seeds.count) { try node.start(seeds: seeds, secret: secret, extra: extra, environment: environment) }
        }

        func killAll() { for node in nodes { node.signal(SIGKILL) } }
    }

    /// Ports nobody listens on right now (bound to port 0, then released).
    static func freePorts(_ count: Int) -> [Int] {
        var sockets: [Int32] = []
        var ports: [Int] = []
        for _ in 0..<count {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            address.sin_port = 0
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            withUnsafeMutablePointer(to: &address) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { _ = bind(fd, $0, length) }
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { _ = getsockname(fd, $0, &length) }
            }
            ports.append(Int(UInt16(bigEndian: address.sin_port)))
            sockets.append(fd)
        }
        for fd in sockets { close(fd) }
        return ports
    }

    static func view(_ node: NodeProcess) async -> View? {
        guard let response = try? await HTTPClient.shared.execute(HTTPClientRequest(url: "http://127.0.0.1:\(node.client)/v1/cluster"), timeout: .seconds(1)),
              response.status == .ok, let body = try? await response.body.collect(upTo: 1 << 20) else { return nil }
        return try? JSONDecoder().decode(View.self, from: Data(body.readableBytesView))
    }

    /// Polls until `condition` holds for every node's view, or fails after `timeout`.
    static func waitUntil(_ nodes: [NodeProcess], within timeout: Duration, _ what: String,
                          _ condition: @escaping (View) -> Bool) async throws -> Duration {
        let clock = ContinuousClock()
        let start = clock.now
        var last: [String: String] = [:]
        while clock.now - start < timeout {
            var all = true
            for node in nodes {
                guard let view = await view(node) else { all = false; last[node.name] = "no answer"; continue }
                last[node.name] = view.members.map { "\($0.name)#\($0.generation)=\($0.state)" }.joined(separator: " ")
                if !condition(view) { all = false }
            }
            if all { return clock.now - start }
            try await Task.sleep(for: .milliseconds(50))
        }
        Issue.record("not within \(timeout): \(what); views: \(last); logs:\n\(nodes.map { "== \($0.name)\n\($0.log.suffix(3000))" }.joined(separator: "\n"))")
        throw CancellationError()
    }

    @Test func threeNodesConvergeDetectAKillAndWelcomeTheRestart() async throws {
        await ProcessGate.shared.enter()
        defer { ProcessGate.shared.leave() }
        let cluster = try ProcessCluster(3)
        defer { cluster.killAll() }
        let nodes = cluster.nodes, seeds = cluster.seeds, secret = cluster.secret
        try cluster.startVoters()

        _ = try await Self.waitUntil(nodes, within: .seconds(30), "every node sees three alive members") { view in
            view.members.count == 3 && view.members.allSatisfy { $0.state == "alive" }
        }
        let oldGeneration = try #require(await Self.view(nodes[1])).generation

        nodes[1].signal(SIGKILL)
        let detected = try await Self.waitUntil([nodes[0], nodes[2]], within: .seconds(10), "n2 is dead on both survivors") { view in
            view.members.first { $0.name == "n2" }?.state == "dead"
        }
        print("cluster process test: SIGKILL of n2 seen as dead by both survivors after \(detected)")

        try nodes[1].start(seeds: seeds, secret: secret)
        _ = try await Self.waitUntil(nodes, within: .seconds(30), "n2 is back, alive, with a new generation, on every node") { view in
            guard let n2 = view.members.first(where: { $0.name == "n2" }) else { return false }
            return n2.state == "alive" && n2.generation > oldGeneration && view.members.allSatisfy { $0.state == "alive" }
        }

        // The peer port refuses a request that does not prove the secret, and changes nothing.
        let body = temporaryDirectory() + "/body"
        FileManager.default.createFile(atPath: body, contents: Data([1, 0]))
        let unproven = try await run("nghttp", ["-v", "-d", body, "http://127.0.0.1:\(nodes[0].peer)/v1/peer/membership"])
        #expect(unproven.output.contains(":status: 401"), "\(unproven.output)")
        let forged = try await run("nghttp", ["-v", "-d", body, "-H", "skein-auth: t=\(Int(Date().timeIntervalSince1970 * 1000)),n=1,m=AAAA",
                                              "http://127.0.0.1:\(nodes[0].peer)/v1/peer/membership"])
        #expect(forged.output.contains(":status: 401"), "\(forged.output)")
        #expect(nodes[0].log.contains("refused a peer request"))

        // SIGTERM: the node leaves, and the others say `left`, not `dead`.
        nodes[2].signal(SIGTERM)
        _ = try await Self.waitUntil([nodes[0], nodes[1]], within: .seconds(10), "n3 has left") { view in
            view.members.first { $0.name == "n3" }?.state == "left"
        }
    }
}
