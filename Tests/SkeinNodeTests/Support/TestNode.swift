import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import NIOFoundationCompat
import NIOPosix
import ServiceLifecycle
import SkeinExamples
import SkeinNode
import SkeinPipeline
import SkeinWorkflow
import Synchronization
import Tracing

/// A node started in this process on a free port, with a fresh data directory.
struct TestNode {
    let port: Int
    let data: String
    let group: ServiceGroup
    let task: Task<Void, any Error>

    static func start(
        applications: [any SkeinApplication] = [BlogApplication(), EffectsTestApp()], workflows: [Workflow] = [],
        tracer: (any Tracer)? = nil, logger: Logger? = nil, configure: (inout NodeSettings) -> Void = { _ in }
    ) async throws -> TestNode {
        var settings = NodeSettings()
        settings.listen = HostPort(host: "127.0.0.1", port: 0)
        settings.peer = HostPort(host: "127.0.0.1", port: 0)
        settings.data = temporaryDirectory()
        settings.logLevel = .warning
        configure(&settings)
        let (ports, portSink) = AsyncStream.makeStream(of: Int.self)
        let logger = logger ?? Logger(label: "test-node", factory: { _ in SwiftLogNoOpLogHandler() })
        let node = try SkeinNode(settings: settings, applications: applications, workflows: workflows, logger: logger, tracer: tracer) { port in
            portSink.yield(port)
        }
        let group = ServiceGroup(configuration: .init(services: [node], logger: logger))
        let task = Task { try await group.run() }
        var iterator = ports.makeAsyncIterator()
        guard let port = await iterator.next() else { throw TestError("node did not start") }
        return TestNode(port: port, data: settings.data, group: group, task: task)
    }

    var base: String { "http://127.0.0.1:\(port)" }

    func stop() async {
        await group.triggerGracefulShutdown()
        _ = try? await task.value
        try? FileManager.default.removeItem(atPath: data)
    }

    /// Waits until the blog's listing answers 200: the node serves before its partitions have
    /// elected (a scan of them answers 503 until then, as the contract says), and on a loaded
    /// machine that can take seconds.
    func waitForPartitions(within limit: Duration = .seconds(20)) async throws {
        let clock = ContinuousClock()
        let deadline = clock.now + limit
        while clock.now < deadline {
            if try await request("GET", "/blog/posts").status == 200 { return }
            try await Task.sleep(for: .milliseconds(25))
        }
        throw TestError("the node's partitions had no leaders after \(limit)")
    }

    /// The names in this node's `/v1/cluster`.
    func clusterMembers() async throws -> [String] {
        let view = try await request("GET", "/v1/cluster").json() as? [String: Any]
        return (view?["members"] as? [[String: Any]] ?? []).compactMap { $0["name"] as? String }
    }

    /// The peer port this node advertises (bound to port 0 in tests), once membership runs.
    func peerPort() async -> Int? {
        for _ in 0..<100 {
            if let view = try? await request("GET", "/v1/cluster").json() as? [String: Any],
               let me = (view["members"] as? [[String: Any]])?.first(where: { $0["name"] as? String == view["node"] as? String }),
               let peer = me["peer"] as? String, let port = peer.split(separator: ":").last.flatMap({ Int($0) }), port != 0 {
                return port
            }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return nil
    }

    /// One HTTP/1.1 request through AsyncHTTPClient.
    func request(_ method: String, _ path: String, body: String? = nil, headers: [(String, String)] = []) async throws -> TestResponse {
        var request = HTTPClientRequest(url: base + path)
        request.method = .init(rawValue: method)
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        if let body { request.body = .bytes(ByteBuffer(string: body)) }
        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(30))
        let bytes = try await response.body.collect(upTo: 16 << 20)
        var fields: [String: String] = [:]
        for h in response.headers { fields[h.name.lowercased()] = h.value }
        return TestResponse(status: Int(response.status.code), headers: fields, body: Data(buffer: bytes))
    }

    /// Bytes sent as they are on one TCP connection to the client port (for HTTP/1.1's framing:
    /// pipelining, `connection: close`); reads until `done` says the answer is whole, or the
    /// server closes the connection (`closed`), or 20 s pass (an error).
    func raw(_ text: String, until done: @escaping @Sendable (String) -> Bool) async throws -> (text: String, closed: Bool) {
        let port = port
        return try await withThrowingTaskGroup(of: (text: String, closed: Bool).self) { group in
            group.addTask {
                let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                    .connect(host: "127.0.0.1", port: port) { channel in
                        channel.eventLoop.makeCompletedFuture { try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel) }
                    }
                return try await channel.executeThenClose { inbound, outbound in
                    try await outbound.write(ByteBuffer(string: text))
                    var received = ""
                    for try await chunk in inbound {
                        received += String(buffer: chunk)
                        if done(received) { return (received, false) }
                    }
                    return (received, true)
                }
            }
            group.addTask {
                try await Task.sleep(for: .seconds(20))
                throw TestError("no whole answer within 20 s")
            }
            defer { group.cancelAll() }
            return try await group.next()!
        }
    }
}

struct TestResponse {
    let status: Int
    let headers: [String: String]
    let body: Data
    var text: String { String(decoding: body, as: UTF8.self) }
    func json() throws -> Any { try JSONSerialization.jsonObject(with: body) }
    var error: [String: Any]? { ((try? json()) as? [String: Any])?["error"] as? [String: Any] }
}

struct TestError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

func temporaryDirectory() -> String {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("skein-test-\(UUID().uuidString)").path
    try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
}

/// Runs a command without blocking the cooperative thread pool (which has as many threads as
/// cores, and which the in-process node under test needs); returns its status and output.
@discardableResult
func run(_ executable: String, _ arguments: [String], environment: [String: String]? = nil) async throws -> (status: Int32, output: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = [executable] + arguments
    if let environment { process.environment = environment }
    // Output goes to a file: no pipe to drain, no dispatch source.
    let file = FileManager.default.temporaryDirectory.appendingPathComponent("skein-run-\(UUID().uuidString)")
    FileManager.default.createFile(atPath: file.path, contents: nil)
    defer { try? FileManager.default.removeItem(at: file) }
    let handle = try FileHandle(forWritingTo: file)
    process.standardOutput = handle
    process.standardError = handle
    process.standardInput = FileHandle.nullDevice
    let (exited, exitSink) = AsyncStream.makeStream(of: Int32.self)
    process.terminationHandler = { exitSink.yield($0.terminationStatus) }
    try process.run()
    var exitIterator = exited.makeAsyncIterator()
    let status = await exitIterator.next() ?? -1
    try handle.close()
    return (status, String(decoding: try Data(contentsOf: file), as: UTF8.self))
}

/// Collects log messages (for checking what a node printed).
final class CapturedLogs: Sendable {
    let messages = Mutex<[String]>([])

    var logger: Logger {
        Logger(label: "captured") { _ in Handler(sink: self) }
    }

    var all: [String] { messages.withLock { $0 } }

    struct Handler: LogHandler {
        let sink: CapturedLogs
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace
        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }
        func log(event: LogEvent) {
            sink.messages.withLock { $0.append("\(event.level) \(event.message)") }
        }
    }
}

/// Tests that start several node processes take turns: on two cores, a dozen debug nodes at
/// once starve each other past every failure detector's timeout. Call at the top of such a
/// test: `await ProcessGate.shared.enter(); defer { ProcessGate.shared.leave() }`.
actor ProcessGate {
    static let shared = ProcessGate()
    private var busy = false
    private var waiting: [CheckedContinuation<Void, Never>] = []

    func enter() async {
        if !busy {
            busy = true
            return
        }
        await withCheckedContinuation { waiting.append($0) }
    }

    private func next() {
        if waiting.isEmpty { busy = false } else { waiting.removeFirst().resume() }
    }

    nonisolated func leave() {
        Task { await self.next() }
    }
}
