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
import SkeinCluster
import SkeinPipeline
import SkeinStore
import SkeinWorkflow
import Tracing

/// One Skein node: its storage, its client port (HTTP/1.1 and h2c on one port) and the
/// applications it hosts. A `Service`: run it in a `ServiceGroup`, which shuts it down
/// gracefully on SIGTERM (in-flight requests finish).
public final class SkeinNode: Service, Sendable {
    public let settings: NodeSettings
    let logger: Logger
    let database: NodeDatabase
    let partitions: PartitionStore
    let router: SkeinPipeline.Router
    let traces: TraceStore
    let tracer: any Tracer
    /// Batches and sends spans to the OTLP collector, when one is configured.
    let spanExport: (any Service)?
    let readiness = Readiness()
    let cluster: ClusterHandle
    let onServing: @Sendable (Int) async -> Void
    let workflows: [Workflow]

    /// Opens storage and builds and validates every route. Throws a ``NodeStartError`` with one
    /// line a person can act on.
    public init(
        settings: NodeSettings, applications: [any SkeinApplication], workflows: [Workflow] = [], logger: Logger? = nil,
        tracer: (any Tracer)? = nil, onServing: @escaping @Sendable (_ port: Int) async -> Void = { _ in }
    ) throws(NodeStartError) {
        self.settings = settings
        var logger = logger ?? Logger(label: "skein")
        logger[metadataKey: "node"] = "\(settings.name)"
        logger.logLevel = settings.logLevel
        self.logger = logger
        if let tracer {
            self.tracer = tracer
            spanExport = nil
        } else if let endpoint = settings.otlpEndpoint {
            do {
                (self.tracer, spanExport) = try SpanExport.make(endpoint: endpoint, protocol: settings.otlpProtocol, node: settings.name, logger: logger)
            } catch {
                throw NodeStartError("cannot export spans to \(endpoint) (--otlp-endpoint): \(error)")
            }
            logger.info("exporting spans over OTLP/HTTP", metadata: ["endpoint": "\(endpoint)/v1/traces", "protocol": "\(settings.otlpProtocol.rawValue)"])
        } else {
            self.tracer = InstrumentationSystem.tracer
            spanExport = nil
        }
        self.onServing = onServing
        self.workflows = workflows
        do {
            database = try NodeDatabase(directory: settings.data)
            partitions = try PartitionStore(database: database, partitions: settings.partitions)
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
        let generation: UInt64
        do {
            generation = try Generation.next(dataDirectory: settings.data)
        } catch {
            throw NodeStartError("cannot record this start's generation in \(settings.data) (\(error.localizedDescription))")
        }
        let others = settings.seeds.filter { $0 != settings.peer }
        if settings.clusterSecret == nil, !others.isEmpty {
            throw NodeStartError("--seeds names other nodes but no cluster secret is set (--cluster-secret or SKEIN_CLUSTER_SECRET)")
        }
        if settings.clusterSecret == nil {
            logger.notice("no cluster secret: this node runs alone and refuses every peer request")
        }
        // Without a secret, a random one: nobody can prove it, so no peer gets in.
        let secret = settings.clusterSecret ?? String(UInt64.random(in: .min ... .max), radix: 36) + String(UInt64.random(in: .min ... .max), radix: 36)
        cluster = ClusterHandle(settings: settings, generation: generation, auth: PeerAuth(secret: secret), logger: logger)
    }

    public func run() async throws {
        let compute = NIOThreadPool(numberOfThreads: settings.computeThreads)
        compute.start()
        let http = HTTPClient(eventLoopGroupProvider: .shared(cluster.loops), configuration: .init(timeout: .init(connect: .seconds(5))))
        let renderer = JSONErrorRenderer()
        let performer = NodeEffectPerformer(
            keyValue: ReplicatedKeyValueStore(cluster: cluster, limits: KeyValueLimits(maxValueBytes: settings.maxBodySize)),
            sql: LocalSQLDatabase(database: database), http: http, compute: compute, maxResponseBytes: 16 << 20,
            workflows: WorkflowRoutes(cluster: cluster, renderer: renderer))
        let responder = NodeResponder(
            router: router, runner: PipelineRunner(performer: performer, renderer: renderer),
            system: SystemRoutes(settings: settings, traces: traces, renderer: renderer, readiness: readiness, cluster: cluster),
            keyValue: KeyValueRoutes(cluster: cluster, limits: KeyValueLimits(maxValueBytes: settings.maxBodySize), renderer: renderer),
            traces: traces, settings: settings, tracer: tracer, tracing: !(tracer is NoOpTracer), logger: logger,
            requests: Counter(label: "skein_requests_total"), failures: Counter(label: "skein_requests_failed_total"),
            latency: Metrics.Timer(label: "skein_request_duration"))
        let dates = HTTPDates()
        let readiness = self.readiness
        let logger = self.logger
        let settings = self.settings
        let onServing = self.onServing
        let app = Application(
            responder: responder,
            server: HTTPServerBuilder { hummingbird in
                DualProtocolChannel(responder: hummingbird, configuration: HTTP2ChannelConfiguration(idleTimeout: .seconds(120))) { http2Stream in
                    [EventLoopAnswers(responder: responder, dates: dates, coalescesFlushes: !http2Stream)]
                }
            },
            configuration: ApplicationConfiguration(
                address: .hostname(settings.listen.host, port: settings.listen.port), serverName: nil),
            onServerRunning: { channel in
                let port = channel.localAddress?.port ?? settings.listen.port
                readiness.markServing()
                logger.info("serving", metadata: ["client": "\(settings.listen.host):\(port)", "data": "\(settings.data)"])
                await onServing(port)
            },
            eventLoopGroupProvider: .shared(cluster.loops),
            logger: logger)
        let cluster = self.cluster
        let (peerPorts, peerPort) = AsyncStream.makeStream(of: Int.self)
        let peerApp = Application(
            responder: PeerResponder(auth: cluster.auth, cluster: cluster, logger: logger),
            server: HTTPServerBuilder { responder in
                PeerChannel(responder: responder, traffic: cluster.traffic, auth: cluster.auth, cluster: cluster, logger: logger)
            },
            configuration: ApplicationConfiguration(
                address: .hostname(settings.peer.host, port: settings.peer.port), serverName: nil),
            onServerRunning: { channel in
                peerPort.yield(channel.localAddress?.port ?? settings.peer.port)
                peerPort.finish()
            },
            eventLoopGroupProvider: .shared(cluster.loops),
            logger: logger)
        var failure: (any Error)?
        var failedPort: (HostPort, String)?
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                // A failure to start (a port in use) ends the node; an error while stopping is
                // logged and must not cut short the other parts' graceful shutdown.
                group.addTask {
                    do { try await peerApp.run() } catch {
                        guard cluster.membership != nil else { throw PortFailure(address: settings.peer, flag: "--peer", error: error) }
                        logger.warning("peer port stopped with an error", metadata: ["error": "\(error)"])
                    }
                }
                if let spanExport {
                    group.addTask {
                        do { try await spanExport.run() } catch {
                            logger.warning("span export stopped", metadata: ["error": "\(error)"])
                        }
                    }
                }
                let partitions = self.partitions
                let workflows = self.workflows
                group.addTask {
                    for await port in peerPorts {
                        let driver = cluster.start(peerPort: port)
                        let replication = try cluster.startReplication(store: partitions)
                        await driver.setOnDown { peer in Task { await replication.peerIsDown(peer) } }
                        let engine = cluster.startWorkflows(workflows, replication: replication)
                        await cancelWhenGracefulShutdown {
                            await withTaskGroup(of: Void.self) { parts in
                                parts.addTask { await driver.run() }
                                parts.addTask { await replication.run() }
                                parts.addTask { await engine.run() }
                            }
                        }
                        // Leaving must not be cut short by the cancellation that stopped the loop.
                        await Task { await driver.leave() }.value
                    }
                }
                group.addTask {
                    do { try await app.run() } catch {
                        guard readiness.isServing else { throw PortFailure(address: settings.listen, flag: "--listen", error: error) }
                        logger.warning("client port stopped with an error", metadata: ["error": "\(error)"])
                    }
                }
                // The first failure (a port in use, say) ends the node: leaving this closure by
                // throwing cancels the other children. (`waitForAll` would wait for them first.)
                for try await _ in group {}
            }
        } catch let port as PortFailure {
            failure = port.error
            failedPort = (port.address, port.flag)
        } catch {
            failure = error
        }
        await cluster.peers.closeAll()
        try? await http.shutdown()
        try? await compute.shutdownGracefully()
        if cluster.ownsLoops { try? await cluster.loops.shutdownGracefully() }
        let (address, flag) = failedPort ?? (settings.listen, "--listen")
        switch failure {
        case nil:
            break
        case let error as IOError where error.errnoCode == EADDRINUSE:
            throw NodeStartError("port \(address) is in use (\(flag))")
        case let error as IOError:
            throw NodeStartError("cannot listen on \(address) (\(flag)): \(error)")
        case let error?:
            throw error
        }
        logger.info("stopped")
    }
}

struct PortFailure: Error {
    let address: HostPort
    let flag: String
    let error: any Error
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
