import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import NIOHTTP1
import ServiceLifecycle
import SkeinCluster
import SkeinPipeline
import Synchronization

/// Calls to a peer (forwarded key-value operations and workflow requests) multiplexed on one
/// long-lived HTTP/2 stream per direction pair (`POST /v1/peer/call-stream`), instead of an
/// HTTP/2 stream per call: opening a stream, its headers and its signature cost more CPU than
/// the write being forwarded. Each frame (``PeerStreamFrame``) carries every call queued
/// since the last one, `count · (id · route · body)…`; the answer stream carries answers as
/// they are ready, several to a frame when they finish together, `count · (id · status · body)…`.
/// Answer frames are signed under the stream's name with the ``answerPrefix``, so an answer
/// cannot pass for a call or come from anyone without the secret.
enum PeerCalls {
    static let path = "/v1/peer/call-stream"
    static let answerPrefix = "answers:"
    /// The largest number of calls or answers in one frame.
    static let maxPerFrame = 4096
    /// A frame takes calls or answers up to about this many bytes of bodies (at least one),
    /// far below the frame limit the reader enforces.
    static let frameBytes = 8 << 20

    /// How many of `sizes` (from the front) go in the next frame.
    static func frameCount(_ sizes: some Sequence<Int>) -> Int {
        var count = 0
        var bytes = 0
        for size in sizes {
            if count == maxPerFrame || (count > 0 && bytes + size > frameBytes) { break }
            count += 1
            bytes += size
        }
        return count
    }

    struct Call: Sendable {
        let id: UInt64
        let route: String
        let body: [UInt8]
    }

    struct Answer: Sendable {
        let id: UInt64
        let status: Int
        let body: [UInt8]
    }

    static func encode(_ calls: [Call]) -> [UInt8] {
        var w = WireWriter()
        w.varint(UInt64(calls.count))
        for c in calls {
            w.varint(c.id)
            w.string(c.route)
            w.blob(c.body)
        }
        return w.bytes
    }

    static func decodeCalls(_ bytes: [UInt8]) throws(WireError) -> [Call] {
        var r = WireReader(bytes: bytes)
        let n = try r.count("calls", max: maxPerFrame)
        var calls: [Call] = []
        calls.reserveCapacity(n)
        for _ in 0..<n {
            calls.append(Call(id: try r.varint("id"), route: try r.string("route"), body: try r.blob("body", max: PeerLimits.maxRaftBody)))
        }
        guard r.atEnd else { throw WireError("trailing bytes after \(n) calls") }
        return calls
    }

    static func encode(_ answers: [Answer]) -> [UInt8] {
        var w = WireWriter()
        w.varint(UInt64(answers.count))
        for a in answers {
            w.varint(a.id)
            w.varint(UInt64(a.status))
            w.blob(a.body)
        }
        return w.bytes
    }

    static func decodeAnswers(_ bytes: [UInt8]) throws(WireError) -> [Answer] {
        var r = WireReader(bytes: bytes)
        let n = try r.count("answers", max: maxPerFrame)
        var answers: [Answer] = []
        answers.reserveCapacity(n)
        for _ in 0..<n {
            let id = try r.varint("id")
            let status = try r.varint("status")
            guard status < 1000 else { throw WireError("status \(status)") }
            answers.append(Answer(id: id, status: Int(status), body: try r.blob("body", max: PeerLimits.maxRaftBody)))
        }
        guard r.atEnd else { throw WireError("trailing bytes after \(n) answers") }
        return answers
    }
}

/// This node's open call stream to one peer. Calls queue under a lock; the first queued call
/// schedules one write on the stream's event loop, which takes every call queued by then into
/// one frame: calls made together share a frame without waiting for each other. Each call
/// waits for its own answer, or fails when its time is up or the stream ends (every call still
/// waiting then fails: whether a write it carried happened is unknown, and forwarded writes
/// are idempotent).
final class PeerCallStream: Sendable {
    let channel: any Channel
    let name: String
    let auth: PeerAuth
    let peer: String
    let callKey: PeerAuth.FrameKey
    let answerKey: PeerAuth.FrameKey
    private let state = Mutex(State())

    private struct State {
        var pending: [UInt64: Waiting] = [:]
        var queued: [PeerCalls.Call] = []
        var nextID: UInt64 = 0
        var sequence: UInt64 = 0
        var writeScheduled = false
        /// When the next sweep for calls past their time runs (nil: none is scheduled). One
        /// sweep at the earliest deadline instead of a timer per call: a call needs a timer of
        /// its own only when its deadline comes before every scheduled sweep.
        var nextSweepAt: NIODeadline?
        var closed: String?
    }

    private struct Waiting {
        /// Called once with the answer or the failure: on the stream's event loop, or on the
        /// caller's thread when the stream was closed already.
        let resume: @Sendable (Result<PeerAnswer, any Error>) -> Void
        let deadline: NIODeadline
        let timeout: TimeAmount
    }


    init(channel: any Channel, name: String, auth: PeerAuth, peer: String) {
        self.channel = channel
        self.name = name
        self.auth = auth
        self.peer = peer
        callKey = auth.frameKey(stream: name)
        answerKey = auth.frameKey(stream: PeerCalls.answerPrefix + name)
    }

    var isOpen: Bool { state.withLock { $0.closed == nil } && channel.isActive }

    func call(route: String, body: [UInt8], timeout: TimeAmount) async throws -> PeerAnswer {
        try await withCheckedThrowingContinuation { continuation in
            call(route: route, body: body, timeout: timeout) { continuation.resume(with: $0) }
        }
    }

    /// Queues a call without waiting for it: `done` gets its answer or its failure, once, on
    /// the stream's event loop (on the calling thread if the stream is closed already). For
    /// callers on an event loop that need no task to wait in (a forwarded key-value request).
    func call(route: String, body: [UInt8], timeout: TimeAmount, done: @escaping @Sendable (Result<PeerAnswer, any Error>) -> Void) {
        let deadline = NIODeadline.now() + timeout
        let queued: (write: Bool, sweep: Bool)? = state.withLock { s in
            guard s.closed == nil else { return nil }
            let id = s.nextID
            s.nextID += 1
            s.pending[id] = Waiting(resume: done, deadline: deadline, timeout: timeout)
            s.queued.append(PeerCalls.Call(id: id, route: route, body: body))
            let sweep = s.nextSweepAt.map { deadline < $0 } ?? true
            if sweep { s.nextSweepAt = deadline }
            defer { s.writeScheduled = true }
            return (!s.writeScheduled, sweep)
        }
        guard let queued else {
            done(.failure(PeerCallError(description: "the call stream to \(peer) is closed")))
            return
        }
        let loop = channel.eventLoop
        if queued.write { loop.execute { self.writeQueued() } }
        if queued.sweep { loop.scheduleTask(deadline: deadline) { self.sweep() } }
    }

    /// On the event loop: fails the calls past their time, and makes sure a sweep comes by
    /// the earliest deadline of those still waiting.
    private func sweep() {
        let now = NIODeadline.now()
        let (expired, next) = state.withLock { s -> ([Waiting], NIODeadline?) in
            var expired: [Waiting] = []
            var earliest: NIODeadline?
            for (id, w) in s.pending {
                if w.deadline <= now {
                    expired.append(w)
                    s.pending[id] = nil
                } else if earliest.map({ w.deadline < $0 }) ?? true {
                    earliest = w.deadline
                }
            }
            // A later sweep already scheduled, and needed no sooner, serves.
            if let at = s.nextSweepAt, at > now, earliest.map({ at <= $0 }) ?? true { return (expired, nil) }
            s.nextSweepAt = s.closed == nil ? earliest : nil
            return (expired, s.nextSweepAt)
        }
        for w in expired {
            w.resume(.failure(PeerCallError(description: "\(peer) did not answer within \(w.timeout)")))
        }
        if let next { channel.eventLoop.scheduleTask(deadline: next) { self.sweep() } }
    }

    /// On the event loop: one frame with every call queued so far. Frames leave in the order
    /// of their numbers because only this loop takes numbers and writes.
    private func writeQueued() {
        let (calls, sequence, more) = state.withLock { s -> ([PeerCalls.Call], UInt64, Bool) in
            let calls = Array(s.queued.prefix(PeerCalls.frameCount(s.queued.lazy.map(\.body.count))))
            s.queued.removeFirst(calls.count)
            // More than one frame holds: the rest goes in the next turn of the loop.
            s.writeScheduled = !s.queued.isEmpty
            defer { if !calls.isEmpty { s.sequence += 1 } }
            return (calls, s.sequence, s.writeScheduled)
        }
        guard !calls.isEmpty else { return }
        if more { channel.eventLoop.execute { self.writeQueued() } }
        let frame = PeerStreamFrame.encode(PeerCalls.encode(calls), sequence: sequence, key: callKey)
        channel.writeAndFlush(HTTPClientRequestPart.body(.byteBuffer(frame))).whenFailure { error in
            self.close(why: "the call stream to \(self.peer) broke (\(error))")
        }
    }

    func received(_ answers: [PeerCalls.Answer]) {
        for a in answers { finish(a.id, .success(PeerAnswer(status: a.status, body: a.body))) }
    }

    private func finish(_ id: UInt64, _ result: Result<PeerAnswer, any Error>) {
        guard let waiting = state.withLock({ $0.pending.removeValue(forKey: id) }) else { return }
        waiting.resume(result)
    }

    /// Ends the stream: every call still waiting fails with `why`.
    func close(why: String) {
        let waiting = state.withLock { s -> [Waiting] in
            if s.closed == nil { s.closed = why }
            defer { s.pending = [:]; s.queued = [] }
            return Array(s.pending.values)
        }
        for w in waiting {
            w.resume(.failure(PeerCallError(description: why)))
        }
        channel.close(promise: nil)
    }
}

/// Reads the answer side of a call stream: the peer answers 200 at once, then frames of
/// answers; a refusal, a bad frame or the end closes the stream.
final class PeerCallAnswerReader: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart
    let stream: PeerCallStream
    let logger: Logger
    private var buffer = ByteBuffer()
    private var sequence: UInt64 = 0
    /// The peer refused the stream: what follows is its error, not frames.
    private var refused = false

    init(stream: PeerCallStream, logger: Logger) {
        self.stream = stream
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head) where head.status != .ok:
            refused = true
            logger.warning("peer refused the call stream", metadata: ["peer": "\(stream.peer)", "status": "\(head.status.code)"])
            stream.close(why: "\(stream.peer) refused the call stream (\(head.status.code))")
        case .head:
            break
        case .body where refused:
            break
        case .body(var chunk):
            buffer.writeBuffer(&chunk)
            do {
                while let payload = try PeerStreamFrame.next(from: &buffer, sequence: sequence, key: stream.answerKey, limit: PeerLimits.maxRaftBody) {
                    sequence += 1
                    stream.received(try PeerCalls.decodeAnswers(payload))
                }
            } catch {
                logger.warning("bad frame on a call stream", metadata: ["peer": "\(stream.peer)", "why": "\(error)"])
                stream.close(why: "\(stream.peer) sent a bad answer frame (\(error))")
            }
        case .end:
            stream.close(why: "\(stream.peer) ended the call stream")
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        stream.close(why: "the call stream to \(stream.peer) closed")
        context.fireChannelInactive()
    }
}

/// The answers of one served call stream, waiting for its writer: handlers put them here as
/// they finish; the writer takes all there are at each wake-up.
final class PeerCallOutbox: Sendable {
    private let state = Mutex(State())
    let wakeups: AsyncStream<Void>
    private let wake: AsyncStream<Void>.Continuation

    private struct State {
        var answers: [PeerCalls.Answer] = []
        var running = 0
        var readerDone = false
    }

    init() {
        (wakeups, wake) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    func started() { state.withLock { $0.running += 1 } }

    func put(_ answer: PeerCalls.Answer) {
        let last = state.withLock { s -> Bool in
            s.answers.append(answer)
            s.running -= 1
            return s.readerDone && s.running == 0
        }
        wake.yield()
        if last { wake.finish() }
    }

    /// No more calls will come: the writer ends once the running ones are answered.
    func readerEnded() {
        let last = state.withLock { s -> Bool in
            s.readerDone = true
            return s.running == 0
        }
        if last { wake.finish() }
    }

    func take() -> [PeerCalls.Answer] {
        state.withLock { s in
            let taken = Array(s.answers.prefix(PeerCalls.frameCount(s.answers.lazy.map(\.body.count))))
            s.answers.removeFirst(taken.count)
            return taken
        }
    }
}

extension PeerResponder {
    /// `POST /v1/peer/call-stream`: a peer's long-lived stream of calls (``PeerCalls``). The
    /// opening must prove the secret (else 401); then the answer is 200 at once, and each call
    /// runs as soon as its frame is read, side by side with the others; answers go back as they
    /// finish. A bad frame stops the reading (logged); the answers of calls already running are
    /// still sent, then the stream ends and the peer opens a new one.
    func callStream(_ request: Request) -> Hummingbird.Response {
        let name: String
        switch opening(request) {
        case .failure(let refusal): return refusal.response
        case .success(let opened): name = opened
        }
        let answerKey = auth.frameKey(stream: PeerCalls.answerPrefix + name)
        let auth = self.auth
        let logger = self.logger
        let cluster = self.cluster
        var headers = HTTPFields()
        headers[.contentType] = "application/x-skein-peer-stream"
        return Hummingbird.Response(status: .ok, headers: headers, body: ResponseBody { writer in
            let outbox = PeerCallOutbox()
            await withDiscardingTaskGroup { group in
                group.addTask { await Self.readCalls(request, key: auth.frameKey(stream: name), into: outbox, cluster: cluster, logger: logger) }
                // The writer: every answer ready at a wake-up goes in one frame.
                var sequence: UInt64 = 0
                var writing = true
                for await _ in outbox.wakeups where writing {
                    while writing {
                        let answers = outbox.take()
                        if answers.isEmpty { break }
                        let frame = PeerStreamFrame.encode(PeerCalls.encode(answers), sequence: sequence, key: answerKey)
                        sequence += 1
                        do { try await writer.write(frame) } catch { writing = false }
                    }
                }
            }
            try await writer.finish(nil)
        })
    }

    /// Reads a call stream's frames and runs each call as it comes, side by side; returns once
    /// the stream ended (or a frame was bad) and every call it started has put its answer.
    private static func readCalls(_ request: Request, key: PeerAuth.FrameKey, into outbox: PeerCallOutbox,
                                  cluster: ClusterHandle, logger: Logger) async {
        // Calls in flight when the node stops are cancelled: they answer at once, and the
        // server's graceful stop does not wait for a long one.
        try? await cancelWhenGracefulShutdown {
            await withDiscardingTaskGroup { calls in
                do {
                    var pending = ByteBuffer()
                    var sequence: UInt64 = 0
                    for try await chunk in request.body {
                        pending.writeImmutableBuffer(chunk)
                        while let payload = try PeerStreamFrame.next(from: &pending, sequence: sequence, key: key, limit: PeerLimits.maxRaftBody) {
                            sequence += 1
                            var writes: [(id: UInt64, op: KVOperation)] = []
                            for call in try PeerCalls.decodeCalls(payload) {
                                outbox.started()
                                // Forwarded key-value writes are proposed together, below.
                                if call.route == KeyValueForwarding.path, let op = KeyValueForwarding.write(in: call.body) {
                                    writes.append((call.id, op))
                                    continue
                                }
                                calls.addTask {
                                    let (status, body) = await serve(call.route, call.body, cluster: cluster)
                                    outbox.put(PeerCalls.Answer(id: call.id, status: status, body: body))
                                }
                            }
                            if !writes.isEmpty {
                                KeyValueForwarding.serve(writes: writes, cluster: cluster) { id, body in
                                    outbox.put(PeerCalls.Answer(id: id, status: 200, body: body))
                                }
                            }
                        }
                    }
                } catch let refused as PeerStreamFrame.Refused {
                    logger.warning("stopped reading a call stream", metadata: ["why": "\(refused)"])
                } catch let malformed as WireError {
                    logger.warning("stopped reading a call stream", metadata: ["why": "\(malformed)"])
                } catch {
                    logger.debug("a call stream ended", metadata: ["why": "\(error)"])
                }
                outbox.readerEnded()
            }
        }
    }

    /// One call: its route's answer, as status and body.
    static func serve(_ route: String, _ body: [UInt8], cluster: ClusterHandle) async -> (Int, [UInt8]) {
        switch route {
        case KeyValueForwarding.path: (200, await KeyValueForwarding.serve(body, cluster: cluster))
        case WorkflowRoutes.peerPath: await WorkflowRoutes.serve(body, cluster: cluster, renderer: JSONErrorRenderer())
        default: (404, Array("no peer call route \(route)".utf8))
        }
    }
}
