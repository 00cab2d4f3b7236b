import Foundation
import InMemoryTracing
import NIOCore
import NIOPosix
import Testing
import Tracing

/// The node's own behaviour on a real socket: system routes, bad input, traces, effects, shutdown.
@Suite struct NodeTests {
    @Test func healthAndClusterAndTrace() async throws {
        let node = try await TestNode.start()
        defer { Task { await node.stop() } }
        let health = try await node.request("GET", "/healthz")
        #expect(health.status == 200)
        #expect(health.headers["skein-trace-id"] != nil)

        let cluster = try #require(try await node.request("GET", "/v1/cluster").json() as? [String: Any])
        #expect(cluster["node"] as? String == "n1")
        #expect((cluster["members"] as? [[String: Any]])?.first?["state"] as? String == "alive")

        try await node.waitForPartitions()
        let listed = try await node.request("GET", "/blog/posts")
        let traceID = try #require(listed.headers["skein-trace-id"])
        let timeline = try #require(try await node.request("GET", "/v1/traces/\(traceID)").json() as? [String: Any])
        #expect(timeline["traceID"] as? String == traceID)
        #expect(timeline["route"] as? String == "GET /blog/posts")
        let steps = try #require(timeline["steps"] as? [[String: Any]])
        #expect(steps.map { $0["name"] as? String } == ["blog.list_posts", "blog.render_posts"])
        #expect(steps.first?["layer"] as? String == "main")
        let effects = try #require(timeline["effects"] as? [[String: Any]])
        #expect(effects.first?["kind"] as? String == "kv_scan")
        #expect(effects.first?["outcome"] as? String == "success")
        #expect(timeline["queueWaitNs"] as? Int != nil)
        let text = try await node.request("GET", "/v1/traces/\(traceID)?format=text")
        #expect(text.text.contains("Timeline:"))
        #expect(try await node.request("GET", "/v1/traces/00000000000000000000000000000000").status == 404)
    }

    @Test func routingErrors() async throws {
        let node = try await TestNode.start()
        defer { Task { await node.stop() } }
        let missing = try await node.request("GET", "/nowhere")
        #expect(missing.status == 404)
        #expect(missing.error?["what"] as? String == "route_not_found")
        let wrong = try await node.request("DELETE", "/blog/posts")
        #expect(wrong.status == 405)
        #expect(wrong.headers["allow"] == "GET, HEAD, OPTIONS, POST")
        let options = try await node.request("OPTIONS", "/blog/posts")
        #expect(options.status == 204)
        #expect(options.headers["allow"] == "GET, HEAD, OPTIONS, POST")
        let head = try await node.request("HEAD", "/blog/posts")
        #expect(head.status == 200)
        #expect(head.body.isEmpty)
    }

    /// Bodiless GETs are answered on the event loop (``EventLoopAnswers``), the rest by
    /// Hummingbird's request task: HTTP/1.1's rules hold across the two.
    @Test func http1FramingAcrossBothPaths() async throws {
        let node = try await TestNode.start()
        defer { Task { await node.stop() } }
        @Sendable func count(_ text: String, _ part: String) -> Int { text.components(separatedBy: part).count - 1 }

        // Pipelined: one that waits for an effect, then two answered at once, then one with a
        // body (Hummingbird's): the answers come back in the order asked.
        let get = { (path: String) in "GET \(path) HTTP/1.1\r\nHost: skein\r\n\r\n" }
        let pipelined = try await node.raw(
            get("/t/compute?ms=200") + get("/healthz") + get("/bench/pipeline?q=skein")
                + "GET /v1/cluster HTTP/1.1\r\nHost: skein\r\nContent-Length: 5\r\n\r\nhello" + get("/nowhere")
        ) { count($0, "HTTP/1.1 ") == 5 && $0.hasSuffix("}") }
        #expect(!pipelined.closed)
        let order = ["500500", "\r\n\r\nok", "digest ", "\"members\"", "route_not_found"].map { pipelined.text.range(of: $0)?.lowerBound }
        #expect(order.allSatisfy { $0 != nil }, "\(pipelined.text)")
        #expect(order.compactMap { $0 } == order.compactMap { $0 }.sorted(), "answers out of order: \(pipelined.text)")
        #expect(count(pipelined.text.lowercased(), "\r\ndate: ") == 5)
        #expect(count(pipelined.text.lowercased(), "\r\nskein-trace-id: ") == 5)
        #expect(pipelined.text.lowercased().contains("content-length: 23\r\n"), "the pipeline's digest is 23 bytes")

        // `connection: close` is honoured: the answer, then the end of the connection.
        let closing = try await node.raw("GET /healthz HTTP/1.1\r\nHost: skein\r\nConnection: close\r\n\r\n") { _ in false }
        #expect(closing.closed)
        #expect(closing.text.hasPrefix("HTTP/1.1 200") && closing.text.hasSuffix("\r\n\r\nok\n"), "\(closing.text)")

        // HEAD keeps GET's head without a body.
        let head = try await node.raw("HEAD /healthz HTTP/1.1\r\nHost: skein\r\n\r\n" + get("/healthz")) { count($0, "HTTP/1.1 200") == 2 && $0.hasSuffix("ok\n") }
        #expect(count(head.text, "\r\n\r\nok") == 1, "\(head.text)")
    }

    /// A body is read whole on the event loop up to the limit; past it (announced or not) the
    /// request passes on to Hummingbird's path, which answers 413; the connection goes on.
    @Test func chunkedBodiesUnderAndOverTheLimit() async throws {
        let node = try await TestNode.start { $0.maxBodySize = 1000 }
        defer { Task { await node.stop() } }
        try await node.waitForPartitions()
        @Sendable func count(_ text: String, _ part: String) -> Int { text.components(separatedBy: part).count - 1 }
        func chunked(_ path: String, _ chunks: [String]) -> String {
            "POST \(path) HTTP/1.1\r\nHost: skein\r\nTransfer-Encoding: chunked\r\n\r\n"
                + chunks.map { String($0.utf8.count, radix: 16) + "\r\n" + $0 + "\r\n" }.joined() + "0\r\n\r\n"
        }
        let post = #"{"title":"Chunked","content":"c","author":"a"}"#
        let small = chunked("/blog/posts", [String(post.prefix(10)), String(post.dropFirst(10))])
        let big = chunked("/blog/posts", [String(repeating: "x", count: 600), String(repeating: "y", count: 600)])
        let answers = try await node.raw(small + big + "GET /healthz HTTP/1.1\r\nHost: skein\r\n\r\n") {
            count($0, "HTTP/1.1 ") == 3 && $0.hasSuffix("ok\n")
        }
        let statuses = answers.text.components(separatedBy: "HTTP/1.1 ").dropFirst().map { $0.prefix(3) }
        #expect(statuses == ["201", "413", "200"], "\(answers.text)")
        #expect(answers.text.contains("body_too_large"))
        #expect(try await node.request("GET", "/blog/posts").text.contains("Chunked"))
    }

    /// Several streams of one HTTP/2 connection, some answered on the event loop and one
    /// waiting for an effect, each get their own answer.
    @Test func http2StreamsAcrossBothPaths() async throws {
        let node = try await TestNode.start()
        defer { Task { await node.stop() } }
        let out = try await run("nghttp", ["-v", node.base + "/t/compute?ms=100", node.base + "/healthz",
                                           node.base + "/bench/pipeline?q=skein", node.base + "/nowhere"])
        #expect(out.status == 0, "nghttp failed (is nghttp2-client installed?): \(out.output)")
        #expect(out.output.components(separatedBy: ":status: 200").count - 1 == 3, "\(out.output)")
        #expect(out.output.contains(":status: 404"))
        #expect(out.output.contains("500500") && out.output.contains("digest "))
        #expect(out.output.components(separatedBy: "date: ").count - 1 == 4)
    }

    @Test func oversizedBodyIs413() async throws {
        let node = try await TestNode.start { $0.maxBodySize = 1000 }
        defer { Task { await node.stop() } }
        let big = String(repeating: "x", count: 5000)
        let r = try await node.request("POST", "/blog/posts", body: big)
        #expect(r.status == 413)
        #expect(r.error?["what"] as? String == "body_too_large")
        #expect(try await node.request("GET", "/healthz").status == 200)
    }

    @Test func malformedRequestIs400AndDisconnectsCostNothing() async throws {
        let node = try await TestNode.start()
        defer { Task { await node.stop() } }
        try await node.waitForPartitions()
        let garbage = try await run("bash", ["-c", "exec 3<>/dev/tcp/127.0.0.1/\(node.port); printf 'THIS IS NOT HTTP\\r\\n\\r\\n' >&3; timeout 5 cat <&3"])
        #expect(garbage.output.hasPrefix("HTTP/1.1 400"), "got: \(garbage.output)")
        // A client that sends half a body and vanishes, many times over.
        for _ in 0..<20 {
            try await run("bash", ["-c", "exec 3<>/dev/tcp/127.0.0.1/\(node.port); printf 'POST /blog/posts HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: 1000\\r\\n\\r\\n{\"title\"' >&3; exec 3>&-"])
        }
        #expect(try await node.request("GET", "/healthz").status == 200)
        #expect(try await node.request("POST", "/blog/posts", body: #"{"title":"t","content":"c","author":"a"}"#).status == 201)
    }

    @Test func effectsOnARealNode() async throws {
        let node = try await TestNode.start()
        defer { Task { await node.stop() } }
        _ = try await node.request("POST", "/t/sql", body: "one")
        let sql = try await node.request("POST", "/t/sql", body: "two")
        #expect(sql.text == #"["one","two"]"#)

        let compute = try await node.request("GET", "/t/compute")
        #expect(compute.text == "500500")

        let http = try await node.request("GET", "/t/http?url=\(node.base)/healthz")
        #expect(http.text == "200 ok\n")
        let upstream500 = try await node.request("GET", "/t/http?url=\(node.base)/t/fail")
        #expect(upstream500.status == 502)
        #expect(upstream500.error?["what"] as? String == "upstream_error")
        // AsyncHTTPClient keeps retrying a refused connection until the effect's timeout.
        let refused = try await node.request("GET", "/t/http?url=http://127.0.0.1:1/")
        #expect([502, 504].contains(refused.status))
    }

    @Test func tracesAreSpansAndTraceparentIsHonoured() async throws {
        let tracer = InMemoryTracer()
        let node = try await TestNode.start(tracer: tracer)
        defer { Task { await node.stop() } }
        // Wait for the partitions with untraced requests, then look only at the spans after.
        try await node.waitForPartitions()
        let earlier = tracer.finishedSpans.count
        let incoming = "0af7651916cd43dd8448eb211c80319c"
        let r = try await node.request("GET", "/blog/posts", headers: [("traceparent", "00-\(incoming)-b7ad6b7169203331-01")])
        #expect(r.status == 200, "\(r.text)")
        #expect(r.headers["skein-trace-id"] == incoming)
        let timeline = try #require(try await node.request("GET", "/v1/traces/\(incoming)").json() as? [String: Any])
        #expect(timeline["traceID"] as? String == incoming)

        let spans = Array(tracer.finishedSpans.dropFirst(earlier))
        let server = try #require(spans.first { $0.kind == .server })
        #expect(server.operationName == "GET /blog/posts")
        let steps = spans.filter { $0.kind == .internal }
        #expect(steps.map(\.operationName).sorted() == ["skein.step.blog.list_posts", "skein.step.blog.render_posts"])
        #expect(steps.allSatisfy { $0.parentSpanID == server.spanID && $0.traceID == server.traceID })
        let effect = try #require(spans.first { $0.kind == .client })
        #expect(effect.operationName == "skein.effect.kv_scan")
        #expect(effect.parentSpanID == server.spanID)
        #expect(effect.attributes["effect.target"]?.toSpanAttribute() == .string("blog/posts/*"))
        #expect(steps.first?.attributes["step.layer"]?.toSpanAttribute() == .string("main"))
        #expect(server.events.isEmpty == false, "need events are recorded on the request span")

        // A malformed traceparent starts a fresh trace instead.
        let fresh = try await node.request("GET", "/healthz", headers: [("traceparent", "garbage")])
        #expect(fresh.headers["skein-trace-id"] != incoming)
    }

    @Test func slowRequestsPrintTheirTimeline() async throws {
        let logs = CapturedLogs()
        let node = try await TestNode.start(logger: logs.logger) {
            $0.slowRequestMs = 0
            $0.logLevel = .info
        }
        defer { Task { await node.stop() } }
        _ = try await node.request("GET", "/blog/posts")
        let slow = logs.all.first { $0.contains("slow request") }
        #expect(slow?.contains("Request: GET /blog/posts") == true)
        #expect(slow?.contains("→ kv_scan(blog/posts/*)") == true)
    }

    /// A request whose body is still arriving when the node is asked to stop is read to its
    /// end and answered before the connection closes.
    @Test func gracefulShutdownWaitsForABodyBeingRead() async throws {
        let node = try await TestNode.start()
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(host: "127.0.0.1", port: node.port) { channel in
                channel.eventLoop.makeCompletedFuture { try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel) }
            }
        let text = try await channel.executeThenClose { inbound, outbound in
            try await outbound.write(ByteBuffer(string: "POST /t/sql HTTP/1.1\r\nHost: skein\r\nContent-Length: 10\r\n\r\nhalf-"))
            try await Task.sleep(for: .milliseconds(300))
            await node.group.triggerGracefulShutdown()
            try await Task.sleep(for: .milliseconds(300))
            try await outbound.write(ByteBuffer(string: "whole"))
            var received = ""
            for try await chunk in inbound { received += String(buffer: chunk) }
            return received
        }
        #expect(text.hasPrefix("HTTP/1.1 200"), "\(text)")
        #expect(text.contains("half-whole"), "\(text)")
        _ = try? await node.task.value
    }

    @Test func gracefulShutdownLetsInFlightRequestsFinish() async throws {
        let node = try await TestNode.start()
        // The request must reach the server before the shutdown starts (or it is merely an idle
        // connection, rightly closed); the simulation keeps a core busy meanwhile, so leave room.
        async let slow = node.request("GET", "/t/compute?ms=2000")
        try await Task.sleep(for: .milliseconds(900))
        await node.group.triggerGracefulShutdown()
        let response = try await slow
        #expect(response.status == 200)
        #expect(response.text == "500500")
        _ = try? await node.task.value
    }
}
