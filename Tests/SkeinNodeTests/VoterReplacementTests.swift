import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import Testing

/// A voter gone for good is replaced by a new node with `skein voters replace`, as a person
/// would do it: the new node catches up, every partition's voters become the survivors plus
/// the new node, and the cluster then survives the loss of one more original node with every
/// acknowledged write readable.
@Suite(.serialized) struct VoterReplacementTests {
    typealias NodeProcess = ClusterProcessTests.NodeProcess

    struct Partition: Decodable { let id: Int; let leader: String?; let voters: [String]; let learners: [String] }
    struct View: Decodable { let partitions: [Partition] }

    static func view(_ node: NodeProcess) async -> View? {
        guard let response = try? await HTTPClient.shared.execute(HTTPClientRequest(url: "http://127.0.0.1:\(node.client)/v1/cluster"), timeout: .seconds(2)),
              response.status == .ok, let body = try? await response.body.collect(upTo: 1 << 20) else { return nil }
        return try? JSONDecoder().decode(View.self, from: Data(body.readableBytesView))
    }

    static func request(_ method: HTTPMethod, _ node: NodeProcess, _ path: String, _ body: String? = nil) async -> (Int, String) {
        var request = HTTPClientRequest(url: "http://127.0.0.1:\(node.client)\(path)")
        request.method = method
        if let body { request.body = .bytes(ByteBuffer(string: body)) }
        guard let response = try? await HTTPClient.shared.execute(request, timeout: .seconds(10)),
              let data = try? await response.body.collect(upTo: 1 << 20) else { return (0, "") }
        return (Int(response.status.code), String(buffer: data))
    }

    /// Writes until acknowledged (a write refused while leaders settle did not happen).
    static func write(_ key: String, _ value: String, via nodes: [NodeProcess]) async throws {
        let deadline = ContinuousClock.now + .seconds(20)
        var last = (0, "")
        var attempt = 0
        while ContinuousClock.now < deadline {
            last = await request(.PUT, nodes[attempt % nodes.count], "/v1/kv/\(key)", value)
            if last.0 == 204 { return }
            attempt += 1
            try await Task.sleep(for: .milliseconds(100))
        }
        Issue.record("write \(key) not acknowledged: \(last)")
        throw CancellationError()
    }

    static func read(_ key: String, via node: NodeProcess) async throws -> String? {
        let deadline = ContinuousClock.now + .seconds(20)
        var last = (0, "")
        while ContinuousClock.now < deadline {
            last = await request(.GET, node, "/v1/kv/\(key)")
            if last.0 == 200 { return last.1 }
            if last.0 == 404 { return nil }
            try await Task.sleep(for: .milliseconds(100))
        }
        Issue.record("read \(key) through \(node.name) failed: \(last)")
        return nil
    }

    @Test func aDeadVoterIsReplacedByANewNode() async throws {
        await ProcessGate.shared.enter()
        defer { ProcessGate.shared.leave() }
        let cluster = try ClusterProcessTests.ProcessCluster(4, voters: 3)
        defer { cluster.killAll() }
        let nodes = cluster.nodes, seeds = cluster.seeds, secret = cluster.secret
        let extra = ["--partitions", "4"]
        try cluster.startVoters(extra: extra)
        try await KeyValueClusterTests.waitForLeaders(Array(nodes.prefix(3)), partitions: 4)
        for i in 0..<40 { try await Self.write("before-\(i)", "v\(i)", via: Array(nodes.prefix(3))) }

        // n3 dies for good; n4 starts empty with the same seed list (a non-voter).
        nodes[2].signal(SIGKILL)
        _ = nodes[2].process.map { $0.waitUntilExit() }
        try nodes[3].start(seeds: seeds, secret: secret, extra: extra)
        let n3 = "127.0.0.1:\(nodes[2].peer)", n4 = "127.0.0.1:\(nodes[3].peer)"

        // Bad requests are refused with a reason, and change nothing.
        let badJSON = await Self.request(.POST, nodes[0], "/v1/cluster/voters", "{\"remove\": 3}")
        #expect(badJSON.0 == 400 && badJSON.1.contains("invalid_body"))
        let same = await Self.request(.POST, nodes[0], "/v1/cluster/voters", #"{"remove":"\#(n3)","add":"\#(n3)"}"#)
        #expect(same.0 == 400)
        let stranger = await Self.request(.POST, nodes[0], "/v1/cluster/voters", #"{"remove":"\#(n3)","add":"127.0.0.1:1"}"#)
        #expect(stranger.0 == 409 && stranger.1.contains("add_not_alive"))

        // The new node must be seen alive by the node we ask; the command then does the rest.
        var replaced: (status: Int32, output: String) = (-1, "")
        let deadline = ContinuousClock.now + .seconds(60)
        while ContinuousClock.now < deadline {
            replaced = try await run(ProcessTests.binary, ["voters", "replace", "--node", "127.0.0.1:\(nodes[0].client)",
                                                           "--remove", n3, "--add", n4, "--timeout", "60"])
            if replaced.status == 0 || !replaced.output.contains("add_not_alive") && !replaced.output.contains("no live member") { break }
            try await Task.sleep(for: .milliseconds(300))
        }
        #expect(replaced.status == 0, "skein voters replace: \(replaced.output)\nlogs:\n\(nodes.map { "== \($0.name)\n\($0.log.suffix(3000))" }.joined(separator: "\n"))")
        #expect(replaced.output.contains("done: \(n4) replaced \(n3)"))
        let expected = ["127.0.0.1:\(nodes[0].peer)", "127.0.0.1:\(nodes[1].peer)", n4].sorted()
        for node in [nodes[0], nodes[1], nodes[3]] {
            var voters: [[String]] = []
            let until = ContinuousClock.now + .seconds(10)
            while ContinuousClock.now < until {
                voters = (await Self.view(node))?.partitions.map(\.voters) ?? []
                if voters.count == 4, voters.allSatisfy({ $0 == expected }) { break }
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect(voters.count == 4 && voters.allSatisfy { $0 == expected }, "\(node.name) sees voters \(voters)")
        }
        // Asking again is a no-op that succeeds.
        let again = try await run(ProcessTests.binary, ["voters", "replace", "--node", "127.0.0.1:\(nodes[3].client)", "--remove", n3, "--add", n4])
        #expect(again.status == 0, "\(again.output)")

        for i in 0..<20 { try await Self.write("after-\(i)", "w\(i)", via: [nodes[0], nodes[1], nodes[3]]) }
        // Now n1 dies too: n2 and n4 are a majority of the new voters and hold everything.
        nodes[0].signal(SIGKILL)
        _ = nodes[0].process.map { $0.waitUntilExit() }
        for i in 0..<40 {
            let value = try await Self.read("before-\(i)", via: i % 2 == 0 ? nodes[3] : nodes[1])
            #expect(value == "v\(i)", "before-\(i)")
        }
        for i in 0..<20 {
            let value = try await Self.read("after-\(i)", via: i % 2 == 0 ? nodes[1] : nodes[3])
            #expect(value == "w\(i)", "after-\(i)")
        }
        try await Self.write("last", "x", via: [nodes[3], nodes[1]])
        #expect(try await Self.read("last", via: nodes[3]) == "x")
    }
}
