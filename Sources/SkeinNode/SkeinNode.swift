import AsyncHTTPClient
import Foundation
import Hummingbird
import HummingbirdHTTP2
import HummingbirdCore
import Logging
import Metrics
import NIOCore
import NIOPosix
import ServiceLifecycle
import SkeinPipeline
import SkeinStore
import Tracing

/// One Skein node: its storage, its client port (HTTP/1.1 and h2c on one port) and the
/// applications it hosts. A `Service`: run it in a `ServiceGroup`, which shuts it down
/// gracefully on SIGTERM (in-flight requests finish).
public final class SkeinNode: Service, Sendable {
    public let settings: NodeSettings
    let logger: Logger
    let database: NodeDatabase
    let router: SkeinPipeline.Router
    let traces: TraceStore
    let tracer: any Tracer
    let readiness = Readiness()
    let onServing: @Sendable (Int) async -> Void

    /// Opens storage and builds and validates every route. Throws a ``NodeStartError`` with one
    /// line a person can act on.
    public init(
        settings: NodeSettings, applications: [any SkeinApplication], logger: Logger? = nil,
        tracer: (any Tracer)? = nil, onServing: @escaping @Sendable (_ port: Int) async -> Void = { _ in }
    ) throws(NodeStartError) {
        self.settings = settings
        var logger = logger ?? Logger(label: "skein")
        logger[metadataKey: "node"] = "\(settings.name)"
        logger.logLevel = settings.logLevel
        self.logger = logger
        self.tracer = tracer ?? InstrumentationSystem.tracer
        self.onServing = onServing
        do {
            database = try NodeDatabase(directory: settings.data)
        } catch {
            throw NodeStartError(error.description)
        }
        var routes = RouterBuilder()
        routes.add(.get, "/bench/pipeline", steps: BenchPipeline.steps)
        for application in applications { application.register(&routes) }
        do {
            router = try routes.build()
        } catch {
            throw NodeStartError("invalid pipeline: \(error.message)")
        }
        traces = TraceStore(capacity: settings.traceBuffer)
    }

    public func run() async throws {
        let compute = NIOThreadPool(numberOfThreads: settings.computeThreads)
        compute.start()
        let http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: .init(timeout: .init(connect: .seconds(5))))
        let performer = NodeEffectPerformer(
            keyValue: LocalKeyValueStore(database: database, limits: KeyValueLimits(maxValueBytes: settings.maxBodySize)),
            sql: LocalSQLDatabase(database: database), http: http, compute: compute, maxResponseBytes: 16 << 20)
        let renderer = JSONErrorRenderer()
        let responder = NodeResponder(
            router: router, runner: PipelineRunner(performer: performer, renderer: renderer),
            system: SystemRoutes(settings: settings, traces: traces, renderer: renderer, readiness: readiness),
            traces: traces, settings: settings, tracer: tracer, tracing: !(tracer is NoOpTracer), logger: logger,
            requests: Counter(label: "skein_requests_total"), failures: Counter(label: "skein_requests_failed_total"),
            latency: Metrics.Timer(label: "skein_request_duration"))
        let readiness = self.readiness
        let logger = self.logger
        let settings = self.settings
        let onServing = self.onServing
        let app = Application(
            responder: responder,
            server: HTTPServerBuilder { responder in
                DualProtocolChannel(responder: responder, configuration: HTTP2ChannelConfiguration(idleTimeout: .seconds(120)))
            },
            configuration: ApplicationConfiguration(
                address: .hostname(settings.listen.host, port: settings.listen.port), serverName: nil),
            onServerRunning: { channel in
                let port = channel.localAddress?.port ?? settings.listen.port
                readiness.markServing()
                logger.info("serving", metadata: ["client": "\(settings.listen.host):\(port)", "data": "\(settings.data)"])
                await onServing(port)
            },
            logger: logger)
        var failure: (any Error)?
        do {
            try await app.run()
        } catch {
            failure = error
        }
        try? await http.shutdown()
        try? await compute.shutdownGracefully()
        switch failure {
        case nil:
            break
        case let error as IOError where error.errnoCode == EADDRINUSE:
            throw NodeStartError("port \(settings.listen) is in use (--listen)")
        case let error as IOError:
            throw NodeStartError("cannot listen on \(settings.listen): \(error)")
        case let error?:
            throw error
        }
        logger.info("stopped")
    }
}

/// Why a node could not start, as one line.
public struct NodeStartError: Error, Sendable, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// `GET /bench/pipeline`: read a query parameter, compute, respond. No effects; traced like
/// every route. The route the pipeline benchmark loads.
enum BenchPipeline {
    enum Input: Slot { typealias Value = String }
    enum Digest: Slot { typealias Value = UInt64 }

    struct ParseView: SlotView { var input = Write<Input>() }
    struct ComputeView: SlotView {
        var input = Read<Input>()
        var digest = Write<Digest>()
    }
    struct RespondView: SlotView { var digest = Read<Digest>() }

    static let steps: [Step] = [
        Step("bench.parse", view: ParseView.self) { ctx in
            ctx.put(\.input, ctx.request.queryParameter("q") ?? "skein")
            return .continue
        },
        Step("bench.compute", view: ComputeView.self) { ctx in
            // FNV-1a over the input: a little CPU, deterministic.
            var hash: UInt64 = 0xcbf2_9ce4_8422_2325
            for byte in try ctx.require(\.input).utf8 {
                hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3
            }
            ctx.put(\.digest, hash)
            return .continue
        },
        Step("bench.respond", view: RespondView.self) { ctx in
            .done(.text("digest \(String(try ctx.require(\.digest), radix: 16))\n"))
        },
    ]
}
