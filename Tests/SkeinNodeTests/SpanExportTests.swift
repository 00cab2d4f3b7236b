import Foundation
import HTTPTypes
import Hummingbird
import Logging
import ServiceLifecycle
import SkeinNode
import Synchronization
import Testing

/// A stand-in OpenTelemetry collector: records every OTLP/HTTP export it receives.
actor CollectorServer {
    struct Export: Sendable {
        let path: String
        let contentType: String
        let body: Data
    }
    final class Received: Sendable {
        let exports = Mutex<[Export]>([])
    }
    let received = Received()
    private(set) var port = 0
    private var group: ServiceGroup?
    private var task: Task<Void, any Error>?

    func start() async throws {
        let received = self.received
        let router = Router()
        router.post("/v1/traces") { request, _ -> Response in
            let body = try await request.body.collect(upTo: 16 << 20)
            let type = request.headers[.contentType] ?? ""
            received.exports.withLock { $0.append(Export(path: request.uri.path, contentType: type, body: Data(buffer: body))) }
            // An empty ExportTraceServiceResponse in the encoding the exporter used.
            var headers = HTTPFields()
            headers[.contentType] = type
            return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(string: type.contains("json") ? "{}" : "")))
        }
        let quiet = Logger(label: "collector", factory: { _ in SwiftLogNoOpLogHandler() })
        let (ports, sink) = AsyncStream.makeStream(of: Int.self)
        let app = Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)),
                              onServerRunning: { channel in sink.yield(channel.localAddress?.port ?? 0) }, logger: quiet)
        let group = ServiceGroup(configuration: .init(services: [app], logger: quiet))
        self.group = group
        task = Task { try await group.run() }
        var iterator = ports.makeAsyncIterator()
        guard let port = await iterator.next() else { throw TestError("collector did not start") }
        self.port = port
    }

    var exports: [Export] { received.exports.withLock { $0 } }

    func stop() async {
        await group?.triggerGracefulShutdown()
        _ = try? await task?.value
    }
}

/// Spans leave the node over OTLP/HTTP (swift-otel) for a real collector to read.
@Suite struct SpanExportTests {
    /// OTLP/JSON writes ids as hex; protobuf's own JSON mapping would write base64. Accept both.
    static func hex(_ id: Any?) -> String? {
        guard let text = id as? String else { return nil }
        if text.count == 32 || text.count == 16, text.allSatisfy(\.isHexDigit) { return text.lowercased() }
        return Data(base64Encoded: text).map { $0.map { String(format: "%02x", $0) }.joined() }
    }

    @Test func requestStepAndEffectSpansReachTheCollectorAsOTLPJSON() async throws {
        let collector = CollectorServer()
        try await collector.start()
        let port = await collector.port
        let node = try await TestNode.start {
            $0.otlpEndpoint = "http://127.0.0.1:\(port)"
            $0.otlpProtocol = .json
        }
        // Wait for the partitions with requests of other traces first.
        try await node.waitForPartitions()
        let incoming = "4bf92f3577b34da6a3ce929d0e0e4736"
        let posts = try await node.request("GET", "/blog/posts", headers: [("traceparent", "00-\(incoming)-00f067aa0ba902b7-01")])
        #expect(posts.status == 200)
        #expect(posts.headers["skein-trace-id"] == incoming, "the caller's trace continues")
        let fresh = try await node.request("GET", "/bench/pipeline?q=otlp")
        #expect(fresh.status == 200)
        let freshTrace = try #require(fresh.headers["skein-trace-id"])
        let timeline = try #require(try await node.request("GET", "/v1/traces/\(freshTrace)").json() as? [String: Any])
        #expect(timeline["route"] as? String == "GET /bench/pipeline", "the timeline is stored under the exported trace id")
        // A graceful stop flushes the spans still batched.
        await node.stop()
        let exports = await collector.exports
        await collector.stop()

        #expect(!exports.isEmpty, "the collector received no export")
        #expect(exports.allSatisfy { $0.path == "/v1/traces" && $0.contentType.contains("application/json") })
        var spans: [[String: Any]] = []
        var resources: [[String: Any]] = []
        for export in exports {
            let root = try #require(try JSONSerialization.jsonObject(with: export.body) as? [String: Any])
            for resourceSpans in root["resourceSpans"] as? [[String: Any]] ?? [] {
                resources.append(resourceSpans["resource"] as? [String: Any] ?? [:])
                for scope in resourceSpans["scopeSpans"] as? [[String: Any]] ?? [] {
                    spans += scope["spans"] as? [[String: Any]] ?? []
                }
            }
        }
        let attributes = resources.flatMap { $0["attributes"] as? [[String: Any]] ?? [] }
        func attribute(_ key: String) -> String? {
            (attributes.first { $0["key"] as? String == key }?["value"] as? [String: Any])?["stringValue"] as? String
        }
        #expect(attribute("service.name") == "skein")
        #expect(attribute("service.instance.id") == "n1")

        // OTLP span kinds: 1 internal, 2 server, 3 client.
        let server = try #require(spans.first { $0["name"] as? String == "GET /blog/posts" && Self.hex($0["traceId"]) == incoming })
        #expect(server["kind"] as? Int == 2)
        #expect(Self.hex(server["parentSpanId"]) == "00f067aa0ba902b7", "the caller's span is the parent")
        let serverID = try #require(Self.hex(server["spanId"]))
        let children = spans.filter { Self.hex($0["parentSpanId"]) == serverID }
        #expect(Set(children.compactMap { $0["name"] as? String }) == ["skein.step.blog.list_posts", "skein.step.blog.render_posts", "skein.effect.kv_scan"])
        #expect(children.first { $0["name"] as? String == "skein.effect.kv_scan" }?["kind"] as? Int == 3)
        #expect(children.first { $0["name"] as? String == "skein.step.blog.list_posts" }?["kind"] as? Int == 1)

        let bench = try #require(spans.first { $0["name"] as? String == "GET /bench/pipeline" })
        #expect(Self.hex(bench["traceId"]) == freshTrace, "skein-trace-id names the exported trace")
        #expect(bench["parentSpanId"] == nil || (bench["parentSpanId"] as? String)?.isEmpty == true)
    }

    @Test func protobufIsTheDefaultEncoding() async throws {
        let collector = CollectorServer()
        try await collector.start()
        let port = await collector.port
        let node = try await TestNode.start { $0.otlpEndpoint = "http://127.0.0.1:\(port)" }
        #expect(try await node.request("GET", "/bench/pipeline").status == 200)
        await node.stop()
        let exports = await collector.exports
        await collector.stop()
        let export = try #require(exports.first)
        #expect(export.contentType == "application/x-protobuf")
        // Protobuf carries strings as they are: the span's name is in the body.
        #expect(export.body.range(of: Data("GET /bench/pipeline".utf8)) != nil)
        #expect(export.body.range(of: Data("skein.step.bench.compute".utf8)) != nil)
    }
}
