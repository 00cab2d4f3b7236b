import AsyncHTTPClient
import Foundation
import NIOCore
import Testing

/// A node whose disk fills up (its data directory on a small tmpfs, so this needs root): its
/// writes fail, the partitions are fenced and `/v1/cluster` says why, clients get 507
/// `storage_full`, and nothing acknowledged is lost. Once there is room again the partitions
/// restart from their storage and take writes; in a cluster the others go on meanwhile.
@Suite(.serialized, .enabled(if: getuid() == 0, "mounting a tmpfs needs root"))
struct StorageFaultProcessTests {
    typealias NodeProcess = ClusterProcessTests.NodeProcess

    struct Storage: Decodable { let fenced: Bool; let error: String; let diskFull: Bool; let attempts: Int }
    struct Partition: Decodable { let id: Int; let leader: String?; let applied: UInt64?; let commit: UInt64?; let storage: Storage? }
    struct View: Decodable { let partitions: [Partition] }

    static func view(_ node: NodeProcess) async -> View? {
        guard let response = try? await HTTPClient.shared.execute(HTTPClientRequest(url: "http://127.0.0.1:\(node.client)/v1/cluster"), timeout: .seconds(2)),
              response.status == .ok, let body = try? await response.body.collect(upTo: 1 << 20) else { return nil }
        return try? JSONDecoder().decode(View.self, from: Data(body.readableBytesView))
    }

    static func put(_ node: NodeProcess, _ key: String, size: Int) async -> (status: Int, body: String) {
        var request = HTTPClientRequest(url: "http://127.0.0.1:\(node.client)/v1/kv/\(key)")
        request.method = .PUT
        request.body = .bytes(ByteBuffer(bytes: [UInt8](repeating: 7, count: size)))
        guard let response = try? await HTTPClient.shared.execute(request, timeout: .seconds(20)) else { return (0, "") }
        let body = (try? await response.body.collect(upTo: 1 << 20)).map { String(buffer: $0) } ?? ""
        return (Int(response.status.code), body)
    }

    static func status(_ node: NodeProcess, _ key: String) async -> Int {
        Int((try? await HTTPClient.shared.execute(HTTPClientRequest(url: "http://127.0.0.1:\(node.client)/v1/kv/\(key)"), timeout: .seconds(20)))?.status.code ?? 0)
    }

    /// A tmpfs of `megabytes` at `path`, most of it taken by a file `filler` that frees it.
    static func smallDisk(_ path: String, megabytes: Int, leaving free: Int) async throws -> String {
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        let mounted = try await run("mount", ["-t", "tmpfs", "-o", "size=\(megabytes)m", "tmpfs", path])
        try #require(mounted.status == 0, "mount: \(mounted.output)")
        let inside = path + "/.filler"
        let made = try await run("dd", ["if=/dev/zero", "of=\(inside)", "bs=1M", "count=\(megabytes - free)"])
        try #require(made.status == 0, "dd: \(made.output)")
        return inside
    }

    @Test("a full disk: 507 storage_full, the partition fenced and shown, nothing acknowledged lost; room again: writes go on")
    func diskFullAlone() async throws {
        await ProcessGate.shared.enter()
        defer { ProcessGate.shared.leave() }
        let cluster = try ClusterProcessTests.ProcessCluster(1)
        let node = cluster.nodes[0]
        let disk = node.data + "/d"
        let filler = try await Self.smallDisk(disk, megabytes: 24, leaving: 5)
        defer {
            cluster.killAll()
            _ = node.process?.waitUntilExit()
            let unmount = Process()
            unmount.executableURL = URL(fileURLWithPath: "/bin/umount")
            unmount.arguments = ["-l", disk]
            try? unmount.run()
            unmount.waitUntilExit()
        }
        let options = ["--partitions", "2"]
        try cluster.startVoters(extra: options)
        let deadline = ContinuousClock.now + .seconds(30)
        while ContinuousClock.now < deadline, await Self.status(node, "probe") != 404 { try await Task.sleep(for: .milliseconds(100)) }

        // Fill it: 64 KiB values until the answer is no longer 204.
        var acknowledged: [String] = []
        var last = (status: 204, body: "")
        for i in 0..<400 {
            last = await Self.put(node, "v\(i)", size: 64 << 10)
            guard last.status == 204 else { break }
            acknowledged.append("v\(i)")
        }
        #expect(last.status == 507, "the write that found the disk full: \(last)")
        #expect(last.body.contains("storage_full"), "\(last.body)")
        #expect(acknowledged.count > 10, "some writes fit: \(acknowledged.count)")
        let fenced = await Self.view(node)?.partitions.compactMap(\.storage) ?? []
        #expect(fenced.contains { $0.fenced && $0.diskFull }, "\(fenced)")
        #expect(node.log.contains("fenced"))

        // Room again: the fenced partitions restart from their storage (within the backoff).
        try FileManager.default.removeItem(atPath: filler)
        var after = 0
        let recovery = ContinuousClock.now + .seconds(60)
        while ContinuousClock.now < recovery {
            after = await Self.put(node, "after", size: 16).status
            if after == 204 { break }
            try await Task.sleep(for: .milliseconds(250))
        }
        #expect(after == 204, "no write took after space was freed; log:\n\(node.log.suffix(2000))")
        for key in acknowledged { #expect(await Self.status(node, key) == 200, "\(key) was acknowledged and is gone") }
        // And after a restart, from the disk.
        node.signal(SIGKILL)
        _ = node.process?.waitUntilExit()
        try cluster.startVoters(extra: options)
        for key in acknowledged + ["after"] {
            var status = 0
            for _ in 0..<100 {
                status = await Self.status(node, key)
                if status != 503 && status != 0 { break }
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect(status == 200, "\(key) after the restart: \(status)")
        }
    }

    @Test("one node's disk full: the others go on writing; once it has room it catches up")
    func diskFullInACluster() async throws {
        await ProcessGate.shared.enter()
        defer { ProcessGate.shared.leave() }
        let cluster = try ClusterProcessTests.ProcessCluster(3)
        let full = cluster.nodes[2], healthy = cluster.nodes[0]
        let disk = full.data + "/d"
        // Room for a few MB; once freed, for the log, the table and the WAL of the catch-up.
        let filler = try await Self.smallDisk(disk, megabytes: 96, leaving: 5)
        defer {
            cluster.killAll()
            _ = full.process?.waitUntilExit()
            let unmount = Process()
            unmount.executableURL = URL(fileURLWithPath: "/bin/umount")
            unmount.arguments = ["-l", disk]
            try? unmount.run()
            unmount.waitUntilExit()
        }
        try cluster.startVoters(extra: ["--partitions", "2"])
        let ready = ContinuousClock.now + .seconds(30)
        while ContinuousClock.now < ready, await Self.status(healthy, "probe") != 404 { try await Task.sleep(for: .milliseconds(100)) }

        // 200 values of 64 KiB: past what the small disk holds; every one must be acknowledged.
        var failed: [Int] = []
        for i in 0..<200 {
            var status = 0
            for _ in 0..<20 {
                status = await Self.put(healthy, "c\(i)", size: 64 << 10).status
                if status == 204 { break }
                try await Task.sleep(for: .milliseconds(100))
            }
            if status != 204 { failed.append(i) }
        }
        #expect(failed.isEmpty, "writes the healthy majority did not take: \(failed.prefix(10))")
        let fenced = await Self.view(full)?.partitions.compactMap(\.storage) ?? []
        #expect(fenced.contains { $0.diskFull }, "the full node shows no fault: \(fenced)")

        try FileManager.default.removeItem(atPath: filler)
        let commits = await Self.view(healthy)?.partitions.map { $0.commit ?? 0 } ?? []
        let caughtUp = ContinuousClock.now + .seconds(60)
        var applied: [UInt64] = []
        while ContinuousClock.now < caughtUp {
            applied = await Self.view(full)?.partitions.map { $0.applied ?? 0 } ?? []
            if applied.count == commits.count, zip(applied, commits).allSatisfy({ $0 >= $1 }) { break }
            try await Task.sleep(for: .milliseconds(250))
        }
        #expect(applied.count == commits.count && zip(applied, commits).allSatisfy { $0 >= $1 },
                "the node did not catch up after space was freed: applied \(applied), commit \(commits); log:\n\(full.log.suffix(2000))")
    }
}
