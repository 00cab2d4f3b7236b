import Foundation
@testable import SkeinNode
import SkeinPipeline
import SkeinStore
import Testing

/// `/v1/kv/{key}` on one node (its own single-voter partitions): the round trip, bad input,
/// the stored partition count, and a data directory deleted under a running node.
@Suite struct KeyValueTests {
    @Test func putGetDeleteAndBinaryValues() async throws {
        let node = try await TestNode.start()
        defer { Task { await node.stop() } }
        #expect(try await node.request("PUT", "/v1/kv/greeting", body: "hello").status == 204)
        let got = try await node.request("GET", "/v1/kv/greeting")
        #expect(got.status == 200)
        #expect(got.text == "hello")
        // Keys with a tag, slashes and escapes.
        #expect(try await node.request("PUT", "/v1/kv/user%7B42%7D/profile%20card", body: "x").status == 204)
        #expect(try await node.request("GET", "/v1/kv/user%7B42%7D/profile%20card").text == "x")
        // An empty value is a value: 200 with no bytes, not 404.
        #expect(try await node.request("PUT", "/v1/kv/empty", body: "").status == 204)
        let empty = try await node.request("GET", "/v1/kv/empty")
        #expect(empty.status == 200)
        #expect(empty.body.isEmpty)
        #expect(try await node.request("DELETE", "/v1/kv/greeting").status == 204)
        let gone = try await node.request("GET", "/v1/kv/greeting")
        #expect(gone.status == 404)
        #expect(gone.error?["what"] as? String == "key_not_found")
        let cluster = try #require(try await node.request("GET", "/v1/cluster").json() as? [String: Any])
        let partitions = try #require(cluster["partitions"] as? [[String: Any]])
        #expect(partitions.count == 16)
        #expect(partitions.allSatisfy { $0["leader"] as? String == "n1" })
    }

    /// `--event-loops 1`: the ports, the peer connections and replication share the node's
    /// one loop; writes and reads still go through, and the node stops gracefully.
    @Test func aNodeOnItsOwnSingleEventLoopServesAndStops() async throws {
        let node = try await TestNode.start { $0.eventLoops = 1 }
        try await node.waitForPartitions()
        for i in 0..<20 {
            #expect(try await node.request("PUT", "/v1/kv/one-loop-\(i)", body: "v\(i)").status == 204)
        }
        for i in 0..<20 {
            #expect(try await node.request("GET", "/v1/kv/one-loop-\(i)").text == "v\(i)")
        }
        await node.stop()
    }

    @Test func keysArePercentDecodedAsFoundationDecodesThem() {
        for raw in ["plain", "a%20b", "user%7B42%7D/profile%20card", "%C3%A9t%C3%A9", "%2f%2F", "100%25", "ü-as-is", ""] {
            #expect(KeyValueRoutes.decodeKey(raw[...]) == raw.removingPercentEncoding, "\(raw)")
        }
        // A malformed escape, or bytes that are not UTF-8: no key.
        for bad in ["%", "%2", "a%ZZ", "%G0", "%FF", "%C3", "x%C3%28"] {
            #expect(KeyValueRoutes.decodeKey(bad[...]) == nil, "\(bad)")
        }
    }

    @Test func badInputGetsClearErrors() async throws {
        let node = try await TestNode.start { $0.maxBodySize = 1024 }
        defer { Task { await node.stop() } }
        let empty = try await node.request("PUT", "/v1/kv/", body: "x")
        #expect(empty.status == 400)
        #expect(empty.error?["what"] as? String == "invalid_key")
        let control = try await node.request("PUT", "/v1/kv/a%01b", body: "x")
        #expect(control.status == 400)
        #expect(control.error?["message"] as? String == "a key cannot contain control characters")
        // AsyncHTTPClient would escape the `%`; curl sends the path as written.
        let badEscape = try await run("curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", "\(node.base)/v1/kv/%ZZ"])
        #expect(badEscape.output == "400")
        let long = try await node.request("PUT", "/v1/kv/" + String(repeating: "k", count: 2000), body: "x")
        #expect(long.status == 400)
        let big = try await node.request("PUT", "/v1/kv/big", body: String(repeating: "v", count: 4096))
        #expect(big.status == 413)
        let post = try await node.request("POST", "/v1/kv/a", body: "x")
        #expect(post.status == 405)
        #expect(post.headers["allow"] == "GET, HEAD, PUT, DELETE")
        // None of it was stored.
        #expect(try await node.request("GET", "/v1/kv/big").status == 404)
    }

    @Test func aDifferentPartitionCountRefusesToStart() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let database = try NodeDatabase(directory: dir)
        _ = try PartitionStore(database: database, partitions: 16)
        #expect(throws: StoreError.self) { _ = try PartitionStore(database: database, partitions: 8) }
        var settings = NodeSettings()
        settings.data = dir
        settings.partitions = 8
        do {
            _ = try SkeinNode(settings: settings, applications: [])
            Issue.record("a node with 8 partitions started on a 16-partition data directory")
        } catch {
            #expect(error.description.contains("created with 16 partitions, not 8"))
        }
    }

    @Test func aDeletedDataDirectoryStopsWritesWithAClearError() async throws {
        let node = try await TestNode.start()
        defer { Task { await node.stop() } }
        #expect(try await node.request("PUT", "/v1/kv/before", body: "1").status == 204)
        try FileManager.default.removeItem(atPath: node.data)
        var answer = try await node.request("PUT", "/v1/kv/after", body: "2")
        let deadline = ContinuousClock.now + .seconds(5)
        while answer.status == 204, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(200))
            answer = try await node.request("PUT", "/v1/kv/after", body: "2")
        }
        #expect(answer.status == 503)
        #expect(answer.error?["what"] as? String == "storage_failed")
        #expect((answer.error?["message"] as? String)?.contains("was removed") == true)
        #expect(answer.headers["retry-after"] == "1")
    }
}

/// What a key-value request may say of itself after several attempts (``WriteAttempts``).
@Suite struct WriteAttemptsTests {
    static func error(_ what: String, _ code: Int = 503) -> SkeinPipeline.SkeinError { SkeinPipeline.SkeinError(code: code, what: what, key: "k") }

    @Test func aWriteThatReachedASilentLeaderNeverEndsAsNotCommitted() {
        var a = WriteAttempts(isWrite: true, key: "k")
        #expect(a.failed(Self.error("leader_unreachable"), canRetry: true) == .retry)
        // The retry lost its entry to a new leader: the first attempt may still have committed.
        guard case .fail(let e) = a.failed(Self.error("not_committed"), canRetry: true) else { Issue.record("not a failure"); return }
        #expect(e.code == 504 && e.what == "outcome_unknown")
        // Out of time while no leader answers: unknown too.
        var b = WriteAttempts(isWrite: true, key: "k")
        _ = b.failed(Self.error("leader_unreachable"), canRetry: true)
        guard case .fail(let f) = b.failed(Self.error("no_leader"), canRetry: false) else { Issue.record("not a failure"); return }
        #expect(f.what == "outcome_unknown")
        // Handed on from the event-loop path after an unreachable leader: the same.
        var c = WriteAttempts(isWrite: true, mayHaveHappened: true, key: "k")
        guard case .fail(let g) = c.failed(Self.error("not_committed"), canRetry: true) else { Issue.record("not a failure"); return }
        #expect(g.what == "outcome_unknown")
    }

    @Test func certainFailuresStayCertain() {
        var a = WriteAttempts(isWrite: true, key: "k")
        #expect(a.failed(Self.error("no_leader"), canRetry: true) == .retry)
        #expect(a.failed(Self.error("not_committed"), canRetry: true) == .fail(Self.error("not_committed")))
        // A read is never "unknown": it changed nothing.
        var r = WriteAttempts(isWrite: false, mayHaveHappened: true, key: "k")
        _ = r.failed(Self.error("leader_unreachable"), canRetry: true)
        #expect(r.failed(Self.error("no_leader"), canRetry: false) == .fail(Self.error("no_leader")))
        // A client error is what it is.
        var w = WriteAttempts(isWrite: true, mayHaveHappened: true, key: "k")
        #expect(w.failed(Self.error("value_too_large", 413), canRetry: true) == .fail(Self.error("value_too_large", 413)))
    }
}
