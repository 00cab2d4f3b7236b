import Logging
import NIOCore
import NIOHTTP1
import SkeinCluster
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
    /// The connection's traffic figures, its frames counted in them.
    let traffic: PeerTraffic
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


    init(channel: any Channel, name: String, auth: PeerAuth, peer: String, traffic: PeerTraffic) {
        self.traffic = traffic
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
        traffic.streamFrameOut(frame.readableBytes)
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
            stream.traffic.streamFrameIn(chunk.readableBytes)
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
