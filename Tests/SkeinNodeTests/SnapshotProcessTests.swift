import AsyncHTTPClient
import Foundation
import NIOCore
import Testing

/// Real processes, one partition: a node that was down while the partition compacted comes
/// back, catches up by a streamed snapshot, and is then the vote the leader needs, so writes
/// commit only because it did. With state past the 64 MiB that once capped a snapshot, and
/// with the node killed (SIGKILL, from inside the transaction) while staging a chunk, while
/// installing, and while compacting: it restarts, opens cleanly, and catches up.
@Suite(.serialized) struct SnapshotProcessTests {
    typealias NodeProcess = ClusterProcessTests.NodeProcess

    struct Log: Decodable { let compactions: Int; let snapshotsInstalled: Int; let snapshotBytesReceived: Int; let snapshotBytesSent: Int }
    struct Partition: Decodable { let id: Int; let leader: String?; let commit: UInt64?; let applied: UInt64? }
    struct View: Decodable { let node: String; let partitions: [Partition]; let log: Log? }

    static func view(_ node: NodeProcess) async -> View? {
        guard let response = try? await HTTPClient.shared.execute(HTTPClientRequest(url: "http://127.0.0.1:\(node.client)/v1/cluster"), timeout: .seconds(2)),
              response.status == .ok, let body = try? await response.body.collect(upTo: 1 << 20) else { return nil }
        return try? JSONDecoder().decode(View.self, from: Data(body.readableBytesView))
    }

    /// Polls `node`'s view until `condition` holds; fails (with the node's log tail) after `limit`.
    static func wait(_ node: NodeProcess, _ what: String, within limit: Duration = .seconds(90), _ condition: (View) -> Bool) async throws {
        let deadline = ContinuousClock.now + limit
        while ContinuousClock.now < deadline {
            if let v = await view(node), condition(v) { return }
            try await Task.sleep(for: .milliseconds(200))
        }
        Issue.record("\(node.name): \(what) did not happen within \(limit); log:\n\(node.log.suffix(3000))")
        throw CancellationError()
    }

    /// PUTs `value` under `key` through `node`, trying again on 503 until `limit`.
    static func put(_ node: NodeProcess, _ key: String, _ value: [UInt8], within limit: Duration = .seconds(30)) async -> Int {
        let deadline = ContinuousClock.now + limit
        var status = 0
        while ContinuousClock.now < deadline {
            var request = HTTPClientRequest(url: "http://127.0.0.1:\(node.client)/v1/kv/\(key)")
            request.method = .PUT
            request.body = .bytes(ByteBuffer(bytes: value))
            status = Int((try? await HTTPClient.shared.execute(request, timeout: .seconds(20)))?.status.code ?? 0)
            if status == 204 { return status }
            try? await Task.sleep(for: .milliseconds(100))
        }
        return status
    }

    static func get(_ node: NodeProcess, _ key: String) async -> [UInt8]? {
        for _ in 0..<100 {
            if let response = try? await HTTPClient.shared.execute(HTTPClientRequest(url: "http://127.0.0.1:\(node.client)/v1/kv/\(key)"), timeout: .seconds(20)) {
                if response.status == .ok, let body = try? await response.body.collect(upTo: 2 << 20) { return Array(body.readableBytesView) }
                if response.status == .notFound { return nil }
            }
            try? await Task.sleep(for: .milliseconds(100))
        }
        return nil
    }

    /// Writes `count` values of `size` bytes, 8 at a time, keys `prefix-0`…; all must be acknowledged.
    static func write(_ node: NodeProcess, _ prefix: String, count: Int, size: Int) async {
        let failed = await withTaskGroup(of: Int.self) { group in
            for lane in 0..<8 {
                group.addTask {
                    var failed = 0
                    for i in stride(from: lane, to: count, by: 8) where await put(node, "\(prefix)-\(i)", Self.value(i, size: size)) != 204 {
                        failed += 1
                    }
                    return failed
                }
            }
            return await group.reduce(0, +)
        }
        #expect(failed == 0, "\(failed) of \(count) writes were not acknowledged")
    }

    static func value(_ i: Int, size: Int) -> [UInt8] { (0..<size).map { UInt8(truncatingIfNeeded: $0 &+ i) } }

    /// The flow every test here shares: three nodes, one partition; a follower is killed, the
    /// partition takes `count` writes of `size` bytes and compacts; the follower restarts (with
    /// `environment`, which may kill it again on the way: then `died` says where, and it is
    /// started once more without). It must install a snapshot; then the other follower is
    /// killed and writes must still commit, which takes the returned node's vote.
    func catchUp(count: Int, size: Int, extra: [String], environment: [String: String] = [:], died: Bool = false,
                 afterRestart: (NodeProcess, NodeProcess) async -> Void = { _, _ in }) async throws -> (follower: View, leader: View) {
        await ProcessGate.shared.enter()
        defer { ProcessGate.shared.leave() }
        let cluster = try ClusterProcessTests.ProcessCluster(3)
        defer { cluster.killAll() }
        let nodes = cluster.nodes
        let options = ["--partitions", "1"] + extra
        try cluster.startVoters(extra: options)
        try await Self.wait(nodes[0], "a leader") { $0.partitions.first?.leader != nil }
        let leaderName = try #require(await Self.view(nodes[0])?.partitions.first?.leader)
        let leader = try #require(nodes.first { $0.name == leaderName })
        let followers = nodes.filter { $0 !== leader }
        let lagging = followers[0], other = followers[1]

        lagging.signal(SIGKILL)
        _ = lagging.process?.waitUntilExit()
        await Self.write(leader, "bulk", count: count, size: size)
        try await Self.wait(leader, "a compaction") { ($0.log?.compactions ?? 0) >= 1 }

        try lagging.start(seeds: cluster.seeds, secret: cluster.secret, extra: options, environment: environment)
        await afterRestart(lagging, leader)
        if died {
            // The hook kills the node inside the transaction it names.
            let process = try #require(lagging.process)
            let deadline = ContinuousClock.now + .seconds(90)
            while process.isRunning, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(100)) }
            #expect(!process.isRunning, "the node did not reach the crash point; log:\n\(lagging.log.suffix(3000))")
            #expect(process.terminationReason == .uncaughtSignal && process.terminationStatus == SIGKILL)
            try lagging.start(seeds: cluster.seeds, secret: cluster.secret, extra: options)
        }
        if !died || environment["SKEIN_TEST_CRASH_AT"] != "compact" {
            try await Self.wait(lagging, "a snapshot install") { ($0.log?.snapshotsInstalled ?? 0) >= 1 }
        }
        let target = try #require(await Self.view(leader)?.partitions.first?.commit)
        try await Self.wait(lagging, "applying the leader's commit index \(target)") { ($0.partitions.first?.applied ?? 0) >= target }

        other.signal(SIGKILL)
        _ = other.process?.waitUntilExit()
        for i in 0..<10 {
            #expect(await Self.put(lagging, "after-\(i)", Self.value(i, size: 16), within: .seconds(60)) == 204, "a write needing the caught-up node's vote did not commit")
        }
        for i in [0, count / 2, count - 1] {
            #expect(await Self.get(lagging, "bulk-\(i)") == Self.value(i, size: size), "bulk-\(i) is wrong after the catch-up")
        }
        #expect(await Self.get(lagging, "after-9") == Self.value(9, size: 16))
        #expect(!lagging.log.contains("critical"), "\(lagging.log.suffix(2000))")
        return (try #require(await Self.view(lagging)), try #require(await Self.view(leader)))
    }

    @Test("a follower catches up from a snapshot of more than 64 MiB, streamed in chunks")
    func largeState() async throws {
        let (follower, leader) = try await catchUp(count: 72, size: 1_000_000, extra: ["--log-compact-bytes", "16777216"])
        #expect((follower.log?.snapshotBytesReceived ?? 0) >= 72_000_000, "\(String(describing: follower.log))")
        #expect((leader.log?.snapshotBytesSent ?? 0) >= 72_000_000)
    }

    @Test("a follower killed while staging a chunk, or installing, or compacting, restarts cleanly and catches up",
          arguments: ["stage", "install", "compact"])
    func killedMidway(point: String) async throws {
        // 1,500 values of 2 KB: a snapshot of three chunks, so one is staged after another.
        let extra = ["--log-compact-entries", "300"]
        if point == "compact" {
            // The follower installs, then compacts once 300 entries arrived on top.
            _ = try await catchUp(count: 1_500, size: 2_000, extra: extra, environment: ["SKEIN_TEST_CRASH_AT": point], died: true) { _, leader in
                await Self.write(leader, "more", count: 400, size: 16)
            }
        } else {
            _ = try await catchUp(count: 1_500, size: 2_000, extra: extra, environment: ["SKEIN_TEST_CRASH_AT": point], died: true)
        }
    }
}
