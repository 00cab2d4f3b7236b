import Foundation
import HTTPTypes
import Hummingbird
import Logging
import Metrics
import NIOCore
import NIOFoundationEssentialsCompat
import SkeinPipeline
import Tracing

/// Answers every request on the client port: the node's own routes (`/healthz`, `/v1/…`), then
/// the applications' pipelines. Every answer carries `skein-trace-id`; every pipeline request
/// leaves a timeline (JSON at `/v1/traces/{id}`, text in the log when slow, spans to the tracer).
struct NodeResponder: HTTPResponder {
    typealias Context = BasicRequestContext

    let router: SkeinPipeline.Router
    let runner: PipelineRunner
    let system: SystemRoutes
    let keyValue: KeyValueRoutes
    let traces: TraceStore
    let settings: NodeSettings
    let tracer: any Tracer
    let tracing: Bool
    let logger: Logger
    let requests: Counter
    let failures: Counter
    let latency: Metrics.Timer

    /// Answers without suspending whatever it can (the node's own routes, routing errors, a
    /// pipeline whose steps ask for no effect), so this function's task frame, allocated for
    /// every request, stays small; only what waits (a body, effects, replication) goes on in
    /// ``answer(_:_:)``. (Most requests do not come here: ``EventLoopAnswers`` reads and
    /// answers them on the connection's event loop through the same two functions; this is
    /// the path of HEAD, of `expect` and `connection` headers, and of bodies over the limit.)
    func respond(to request: Request, context: Context) async throws -> Hummingbird.Response {
        switch answerWithoutWaiting(request) {
        case .answered(let response): return Self.hummingbird(response, method: request.method)
        case .waits(let waiting): return Self.hummingbird(await answer(request, waiting), method: request.method)
        }
    }

    enum Immediate {
        case answered(SkeinPipeline.Response)
        case waits(Waiting)
    }

    /// What a request that has to wait carries over.
    struct Waiting: Sendable {
        enum Kind: Sendable {
            case keyValue, workflows, voters
            case pipeline(Started, Pipeline, parameters: [String: String])
        }
        let kind: Kind
        let arrival: ContinuousClock.Instant
        let traceID: String
        let path: String
        let query: String?
        /// A key-value write tried without a task reached a leader that did not answer.
        var writeMayHaveHappened = false
    }

    /// Hummingbird's response for an answer (HEAD: the same head, no body).
    static func hummingbird(_ response: SkeinPipeline.Response, method: HTTPRequest.Method) -> Hummingbird.Response {
        let body = method == .head ? ByteBuffer() : ByteBuffer(data: response.body)
        return Hummingbird.Response(status: response.status, headers: response.headers, body: ResponseBody(byteBuffer: body))
    }

    /// `collected` is the request's whole body when it has been read already (the event loop's
    /// path): a pipeline then starts at once, bodiless or not.
    func answerWithoutWaiting(_ request: Request, collected: ByteBuffer? = nil) -> Immediate {
        let arrival = ContinuousClock.now
        let incoming = request.headers[.traceparent].flatMap(TraceParent.init(header:))
        let traceID = incoming?.traceID ?? TraceParent.randomTraceID()
        let path = request.uri.path
        let query = request.uri.query
        func waits(_ kind: Waiting.Kind) -> Immediate {
            .waits(Waiting(kind: kind, arrival: arrival, traceID: traceID, path: path, query: query))
        }
        var response: SkeinPipeline.Response
        if path.hasPrefix(KeyValueRoutes.prefix) {
            return waits(.keyValue)
        } else if WorkflowRoutes.handles(path) {
            return waits(.workflows)
        } else if path == VoterChanges.clientPath {
            guard request.method != .post else { return waits(.voters) }
            response = runner.renderer.render(SkeinError(code: 405, what: "method_not_allowed", key: path, message: "\(path) answers POST"))
            response.headers[.allow] = "POST"
        } else if let answer = system.answer(method: request.method, path: path, query: query) {
            response = answer
        } else {
            switch router.match(method: request.method.rawValue, path: path) {
            case .found(let pipeline, let parameters, _):
                let started = start(pipeline, request: request, path: path, query: query, parameters: parameters, traceID: traceID,
                                    incoming: incoming, arrival: arrival, body: collected.map { Data(buffer: $0) } ?? (Self.hasNoBody(request) ? Data() : nil))
                guard case .done(let done, let id) = started else { return waits(.pipeline(started, pipeline, parameters: parameters)) }
                return .answered(finish(done, traceID: id, request: request, arrival: arrival))
            case .methodNotAllowed(let allow):
                if request.method == .options {
                    response = SkeinPipeline.Response(status: .noContent)
                } else {
                    response = runner.renderer.render(SkeinError(
                        code: 405, what: "method_not_allowed", key: request.method.rawValue,
                        message: "\(path) does not answer \(request.method.rawValue); it answers \(allow.joined(separator: ", "))"))
                }
                response.headers[.allow] = allow.joined(separator: ", ")
            case .notFound:
                response = runner.renderer.render(SkeinError(code: 404, what: "route_not_found", key: path,
                                                             message: "no route for \(request.method.rawValue) \(path)"))
            }
        }
        return .answered(finish(response, traceID: traceID, request: request, arrival: arrival))
    }

    /// The requests that wait: for their body, their effects, or replication.
    func answer(_ request: Request, _ waiting: Waiting) async -> SkeinPipeline.Response {
        let path = waiting.path
        var traceID = waiting.traceID
        let response: SkeinPipeline.Response
        switch waiting.kind {
        case .keyValue:
            response = await keyValue.answer(
                method: request.method, rawKey: path.dropFirst(KeyValueRoutes.prefix.count),
                body: { try await collectBody(request) }, traceparent: request.headers[.traceparent],
                writeMayHaveHappened: waiting.writeMayHaveHappened)
        case .workflows:
            do {
                let body = try await collectBody(request)
                response = await WorkflowRoutes(cluster: system.cluster, renderer: runner.renderer)
                    .answer(.init(method: request.method.rawValue, path: path, query: waiting.query, body: body))
            } catch let error as SkeinError {
                response = runner.renderer.render(error)
            } catch {
                response = runner.renderer.render(SkeinError(code: 400, what: "invalid_body", key: path, message: "\(error)"))
            }
        case .voters:
            do {
                response = await VoterChanges.answer(body: try await collectBody(request), query: waiting.query, cluster: system.cluster, renderer: runner.renderer)
            } catch let error as SkeinError {
                response = runner.renderer.render(error)
            } catch {
                response = runner.renderer.render(SkeinError(code: 400, what: "invalid_body", key: path, message: "\(error)"))
            }
        case .pipeline(let started, let pipeline, let parameters):
            (response, traceID) = await complete(started, pipeline: pipeline, request: request, path: path, query: waiting.query,
                                                 parameters: parameters, arrival: waiting.arrival)
        }
        return finish(response, traceID: traceID, request: request, arrival: waiting.arrival)
    }

    /// A key-value request answered from the event loop without a task
    /// (``KeyValueRoutes/answerWithoutTask(method:rawKey:body:traceparent:done:)``):
    /// `done` gets the finished answer, or the request as it must go on in ``answer(_:_:)``.
    /// False when it does not apply.
    func answerWithoutTask(_ request: Request, body: ByteBuffer, _ waiting: Waiting,
                            done: @escaping @Sendable (SkeinPipeline.Response?, Waiting) -> Void) -> Bool {
        guard case .keyValue = waiting.kind else { return false }
        let responder = self
        return keyValue.answerWithoutTask(
            method: request.method, rawKey: waiting.path.dropFirst(KeyValueRoutes.prefix.count), body: body,
            traceparent: request.headers[.traceparent]
        ) { answer in
            switch answer {
            case .answered(let response):
                done(responder.finish(response, traceID: waiting.traceID, request: request, arrival: waiting.arrival), waiting)
            case .goOn(let uncertain):
                var next = waiting
                next.writeMayHaveHappened = uncertain
                done(nil, next)
            }
        }
    }

    /// Every answer: its `skein-trace-id`, the request metrics.
    private func finish(_ response: SkeinPipeline.Response, traceID: String, request: Request, arrival: ContinuousClock.Instant) -> SkeinPipeline.Response {
        var response = response
        // A value new on every response: kept out of HTTP/2's header table (HPACK), which it
        // would only fill, making every later header lookup there slower.
        var traceField = HTTPField(name: .skeinTraceID, value: traceID)
        traceField.indexingStrategy = .avoid
        if response.headers.contains(.skeinTraceID) {
            response.headers[fields: .skeinTraceID] = [traceField]
        } else {
            response.headers.append(traceField)
        }
        requests.increment()
        if response.status.code >= 500 { failures.increment() }
        latency.recordNanoseconds((ContinuousClock.now - arrival).nanoseconds)
        return response
    }

    /// A pipeline's steps, up to their first need, without suspending; a bodiless request
    /// whose steps ask for no effect is answered with no task frame of its own.
    private func start(
        _ pipeline: Pipeline, request: Request, path: String, query: String?, parameters: [String: String], traceID: String,
        incoming: TraceParent?, arrival: ContinuousClock.Instant, body: Data?
    ) -> Started {
        let begun = begin(pipeline, request: request, path: path, traceID: traceID, incoming: incoming)
        guard let body else { return .needsBody(begun) }
        return start(pipeline, request: request, path: path, query: query, parameters: parameters, arrival: arrival, body: body, begun: begun)
    }

    private func start(
        _ pipeline: Pipeline, request: Request, path: String, query: String?, parameters: [String: String],
        arrival: ContinuousClock.Instant, body: Data, begun: Begun
    ) -> Started {
        var begun = begun
        let info = RequestInfo(
            method: request.method, path: path, query: query, headers: request.headers,
            body: body, parameters: parameters, traceID: begun.traceID, requestID: TraceParent.randomSpanID(),
            receivedAtMs: Int64(begun.startedNs / 1_000_000))
        switch runner.start(pipeline, request: info, arrival: arrival, timeline: &begun.timeline) {
        case .finished(let result):
            finish(pipeline, result: result, begun: &begun)
            return .done(result.response, begun.traceID)
        case .suspended(let suspended):
            return .suspended(begun, suspended)
        }
    }

    enum Started: Sendable {
        case done(SkeinPipeline.Response, String)
        case needsBody(Begun)
        case suspended(Begun, PipelineRunner.Suspended)
    }

    /// The rest of a pipeline request that has to wait: for its body, or for effects.
    private func complete(
        _ started: Started, pipeline: Pipeline, request: Request, path: String, query: String?, parameters: [String: String],
        arrival: ContinuousClock.Instant
    ) async -> (SkeinPipeline.Response, traceID: String) {
        var state = started
        while true {
            switch state {
            case .done(let response, let traceID):
                return (response, traceID)
            case .needsBody(var begun):
                let body: Data
                do {
                    body = try await collectBody(request)
                } catch {
                    return (refuseBody(error, begun: &begun), begun.traceID)
                }
                state = start(pipeline, request: request, path: path, query: query, parameters: parameters, arrival: arrival, body: body, begun: begun)
            case .suspended(var begun, let suspended):
                let result = await runner.resume(suspended, timeline: &begun.timeline)
                finish(pipeline, result: result, begun: &begun)
                return (result.response, begun.traceID)
            }
        }
    }

    /// A pipeline request under way: its timeline, its server span, the trace it belongs to.
    struct Begun: Sendable {
        var timeline: Timeline
        var span: (any Span)?
        var traceID: String
        let startedNs: UInt64
    }

    private func begin(_ pipeline: Pipeline, request: Request, path: String, traceID: String, incoming: TraceParent?) -> Begun {
        let startedNs = UInt64(Date().timeIntervalSince1970 * 1e9)
        var traceID = traceID
        var span: (any Span)?
        if tracing {
            var context = ServiceContext.topLevel
            tracer.extract(request.headers, into: &context, using: HTTPFieldsExtractor())
            let server = tracer.startSpan(pipeline.route, context: context, ofKind: .server,
                                          at: DefaultTracerClock.Instant(nanosecondsSinceEpoch: startedNs))
            server.attributes["http.request.method"] = request.method.rawValue
            server.attributes["url.path"] = path
            if let incoming { server.attributes["skein.parent_trace"] = incoming.header }
            // The timeline, `skein-trace-id` and the exported spans name one trace: the one the
            // tracer chose (the caller's, when it sent a traceparent the tracer honours).
            var written: [String: String] = [:]
            tracer.inject(server.context, into: &written, using: TraceParentInjector())
            if let chosen = written["traceparent"].flatMap(TraceParent.init(header:)) { traceID = chosen.traceID }
            span = server
        }
        let timeline = Timeline(traceID: traceID, method: request.method.rawValue, path: path,
                                startedAtMs: Int64(startedNs / 1_000_000))
        return Begun(timeline: timeline, span: span, traceID: traceID, startedNs: startedNs)
    }

    /// The answer to a body that could not be read (too large, or the client went away).
    private func refuseBody(_ error: any Error, begun: inout Begun) -> SkeinPipeline.Response {
        guard let error = error as? SkeinError else {
            begun.span?.setStatus(SpanStatus(code: .error, message: "\(error)"))
            begun.span?.end()
            return runner.renderer.render(SkeinError(code: 400, what: "bad_request", message: "could not read the body: \(error)"))
        }
        let response = runner.renderer.render(error)
        begun.timeline.status = response.status.code
        begun.timeline.outcome = "fail"
        begun.timeline.error = error
        traces.record(begun.timeline)
        begun.span?.setStatus(SpanStatus(code: .error, message: error.message))
        begun.span?.end()
        return response
    }

    /// Ends the spans, keeps the timeline, and logs the request if it was slow or failed.
    private func finish(_ pipeline: Pipeline, result: RunResult, begun: inout Begun) {
        let timeline = begun.timeline
        if let span = begun.span {
            TimelineSpans.emit(timeline, under: span, tracer: tracer, startNs: begun.startedNs)
            if result.response.status.code >= 500 { span.setStatus(SpanStatus(code: .error, message: result.error?.message)) }
            span.end(at: DefaultTracerClock.Instant(nanosecondsSinceEpoch: begun.startedNs + UInt64(max(0, timeline.durationNs))))
        }
        if Double(timeline.durationNs) / 1e6 >= settings.slowRequestMs {
            logger.notice("slow request\n\(timeline.renderText(slowEffectThresholdMs: settings.slowRequestMs / 2))",
                          metadata: ["trace": "\(begun.traceID)"])
        }
        if let error = result.error, error.code >= 500 {
            logger.error("request failed", metadata: ["trace": "\(begun.traceID)", "route": "\(pipeline.route)", "error": "\(error)"])
        }
        traces.record(timeline)
    }

    /// A GET or HEAD announcing no body has none to wait for.
    private static func hasNoBody(_ request: Request) -> Bool {
        guard request.method == .get || request.method == .head else { return false }
        let length = request.headers[.contentLength]
        return length == nil || length == "0"
    }

    /// The body, at most `maxBodySize` bytes: a larger one is a 413.
    private func collectBody(_ request: Request) async throws -> Data {
        let length = request.headers[.contentLength].flatMap(Int.init)
        if let length, length > settings.maxBodySize { throw tooLarge(length) }
        // A GET or HEAD announcing no body has none to wait for.
        if length == nil || length == 0, request.method == .get || request.method == .head { return Data() }
        var buffer = ByteBuffer()
        for try await var chunk in request.body {
            guard buffer.readableBytes + chunk.readableBytes <= settings.maxBodySize else {
                throw tooLarge(buffer.readableBytes + chunk.readableBytes)
            }
            buffer.writeBuffer(&chunk)
        }
        return Data(buffer: buffer)
    }

    private func tooLarge(_ size: Int) -> SkeinError {
        SkeinError(code: 413, what: "body_too_large", key: "body",
                   message: "the body has at least \(size) bytes; the limit is \(settings.maxBodySize) (--max-body-size)")
    }
}

/// Reads W3C trace headers (and any the bootstrapped instrument understands) from HTTP fields.
struct HTTPFieldsExtractor: Extractor {
    func extract(key: String, from carrier: HTTPFields) -> String? {
        HTTPField.Name(key).flatMap { carrier[$0] }
    }
}

extension HTTPField.Name {
    static let traceparent = HTTPField.Name("traceparent")!
    static let skeinTraceID = HTTPField.Name("skein-trace-id")!
}
