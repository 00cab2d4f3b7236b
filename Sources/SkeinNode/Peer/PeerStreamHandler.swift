import HTTPTypes
import Logging
import NIOCore
import NIOHTTPTypes
import SkeinCluster
import Synchronization

/// Serves the peer port's two long-lived streams, a peer's Raft batches
/// (`POST /v1/peer/raft-stream`) and its calls (`POST /v1/peer/call-stream`, ``PeerCalls``), on
/// the stream's event loop, ahead of Hummingbird's request task (one per HTTP/2 stream).
///
/// Through Hummingbird, every frame of these streams crossed an async sequence into a task on
/// the concurrency pool, and every answer frame an async writer back: a task wake-up or two
/// per frame, for bytes that only need decoding and handing on. Here a frame is checked and
/// decoded where it is read; Raft batches and forwarded key-value writes go into the
/// replication actor's inbox (``Replication/submit(_:)``), other calls run in tasks, and
/// answers are written from the event loop, as many to a frame as are ready together.
///
/// Only an opening that will be served is taken: a POST to one of the two paths that proves
/// the secret (and, for Raft, names this node's partition count). Any other request, a refusal
/// included, passes on to Hummingbird, whose ``PeerResponder`` answers it and logs why.
/// A bad frame ends the stream (logged; the peer opens a new one); so does the node's graceful
/// stop, once the calls under way have answered (those running in tasks are cancelled then,
/// so they answer at once).
final class PeerStreamHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundOut = HTTPResponsePart

    let auth: PeerAuth
    let cluster: ClusterHandle
    let logger: Logger

    private enum Mode {
        case undecided
        case passing
        case raft(key: PeerAuth.FrameKey, replication: Replication)
        case calls(key: PeerAuth.FrameKey, served: ServedCalls)
        /// No longer reading (the peer's end, a bad frame, a graceful stop).
        case stopped
    }
    private var mode = Mode.undecided
    private var pending = ByteBuffer()
    private var sequence: UInt64 = 0

    init(auth: PeerAuth, cluster: ClusterHandle, logger: Logger) {
        self.auth = auth
        self.cluster = cluster
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch mode {
        case .undecided:
            guard case .head(let head) = unwrapInboundIn(data), take(head, context: context) else {
                mode = .passing
                context.fireChannelRead(data)
                return
            }
        case .passing:
            context.fireChannelRead(data)
        case .raft, .calls:
            switch unwrapInboundIn(data) {
            case .head:
                stop(context: context, why: "a second request head")
            case .body(var chunk):
                cluster.traffic.streamFrameIn(chunk.readableBytes)
                pending.writeBuffer(&chunk)
                readFrames(context: context)
            case .end:
                stopReading(context: context, close: false)
            }
        case .stopped:
            break
        }
    }

    /// Whether `head` opens a stream served here; if so, answers 200 at once.
    private func take(_ head: HTTPRequest, context: ChannelHandlerContext) -> Bool {
        guard head.method == .post, let path = head.path.map({ $0.split(separator: "?", maxSplits: 1)[0] }),
              path == PeerConnection.raftStreamPath || path == PeerCalls.path else { return false }
        let header = head.headerFields[HTTPField.Name(PeerAuth.header)!]
        if path == PeerConnection.raftStreamPath {
            guard let replication = cluster.replication,
                  head.headerFields[HTTPField.Name(PeerConnection.partitionsHeader)!].flatMap({ Int($0) }) == replication.partitionCount,
                  auth.verify(header: header, method: "POST", path: String(path), body: []) == nil else { return false }
            mode = .raft(key: auth.frameKey(stream: Self.name(header)), replication: replication)
        } else {
            guard auth.verify(header: header, method: "POST", path: String(path), body: []) == nil else { return false }
            let name = Self.name(header)
            let served = ServedCalls(handler: NIOLoopBound((self, context), eventLoop: context.eventLoop),
                                     answerKey: auth.frameKey(stream: PeerCalls.answerPrefix + name))
            mode = .calls(key: auth.frameKey(stream: name), served: served)
        }
        var fields = HTTPFields()
        fields[.contentType] = "application/x-skein-peer-stream"
        context.writeAndFlush(wrapOutboundOut(.head(HTTPResponse(status: .ok, headerFields: fields))), promise: nil)
        return true
    }

    /// A stream's name: the proof that opened it, which its frames are signed under.
    private static func name(_ header: String?) -> String {
        String(header.flatMap { PeerAuth.proof(ofHeader: $0) } ?? "")
    }

    private func readFrames(context: ChannelHandlerContext) {
        do {
            switch mode {
            case .raft(let key, let replication):
                while let payload = try PeerStreamFrame.next(from: &pending, sequence: sequence, key: key, limit: PeerLimits.maxRaftBody) {
                    sequence += 1
                    let batch = try RaftCodec.decode(payload)
                    guard batch.partitionCount == replication.partitionCount else {
                        throw PeerStreamFrame.Refused(description: "a batch for \(batch.partitionCount) partitions; this node has \(replication.partitionCount)")
                    }
                    replication.submit(.batch(batch))
                }
            case .calls(let key, let served):
                while let payload = try PeerStreamFrame.next(from: &pending, sequence: sequence, key: key, limit: PeerLimits.maxRaftBody) {
                    sequence += 1
                    served.run(try PeerCalls.decodeCalls(payload), cluster: cluster)
                }
            default:
                break
            }
        } catch {
            stop(context: context, why: "\(error)")
        }
    }

    /// A bad frame: logged, and the stream ends (the calls under way still answer first).
    private func stop(context: ChannelHandlerContext, why: String) {
        let kind = if case .raft = mode { "raft" } else { "call" }
        logger.warning("stopped reading a \(kind) stream", metadata: ["why": "\(why)"])
        stopReading(context: context, close: true)
    }

    /// Stops reading; the answer ends now (Raft) or once every call under way has answered,
    /// and with `close` the stream closes after it.
    private func stopReading(context: ChannelHandlerContext, close: Bool) {
        let previous = mode
        mode = .stopped
        pending = ByteBuffer()
        switch previous {
        case .raft:
            end(context: context, close: close)
        case .calls(_, let served):
            served.readerEnded(close: close)
        default:
            break
        }
    }

    /// On the event loop: the answer's end (after every answer frame written before it).
    fileprivate func end(context: ChannelHandlerContext, close: Bool) {
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
            if close { context.close(promise: nil) }
        }
    }

    /// On the event loop: one frame of answers.
    fileprivate func write(_ frame: ByteBuffer, context: ChannelHandlerContext) {
        cluster.traffic.streamFrameOut(frame.readableBytes)
        context.writeAndFlush(wrapOutboundOut(.body(frame)), promise: nil)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard event is ChannelShouldQuiesceEvent else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        switch mode {
        case .raft:
            stopReading(context: context, close: true)
        case .calls(_, let served):
            served.cancelTasks()
            stopReading(context: context, close: true)
        case .undecided, .passing:
            context.fireUserInboundEventTriggered(event)
        case .stopped:
            break
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if case .calls(_, let served) = mode { served.readerEnded(close: false) }
        mode = .stopped
        context.fireChannelInactive()
    }
}

/// The calls of one served call stream: what runs, and the answers waiting to be written.
/// Answers come from any thread (the replication actor, a call's task); the first one waiting
/// schedules a write on the stream's event loop, which takes all there are by then into one
/// frame (or more, if they are many or large).
final class ServedCalls: Sendable {
    private let handler: NIOLoopBound<(PeerStreamHandler, ChannelHandlerContext)>
    private let answerKey: PeerAuth.FrameKey
    private let state = Mutex(State())

    private struct State {
        var answers: [PeerCalls.Answer] = []
        var writeScheduled = false
        var running = 0
        var tasks: [UInt64: Task<Void, Never>] = [:]
        var readerDone = false
        var closeAtEnd = false
        var ended = false
        /// Touched on the event loop only (under the lock for simplicity).
        var sequence: UInt64 = 0
    }

    fileprivate init(handler: NIOLoopBound<(PeerStreamHandler, ChannelHandlerContext)>, answerKey: PeerAuth.FrameKey) {
        self.handler = handler
        self.answerKey = answerKey
    }

    /// Runs one frame's calls: its forwarded key-value writes go to the replication actor
    /// together; every other call runs in a task of its own.
    func run(_ calls: [PeerCalls.Call], cluster: ClusterHandle) {
        var writes: [(id: UInt64, op: KVOperation)] = []
        state.withLock { $0.running += calls.count }
        for call in calls {
            if call.route == KeyValueForwarding.path, let op = KeyValueForwarding.write(in: call.body) {
                writes.append((call.id, op))
                continue
            }
            // Kept under the lock it takes to answer, so it is kept before it can be forgotten.
            state.withLock { s in
                s.tasks[call.id] = Task {
                    let (status, body) = await PeerResponder.serve(call.route, call.body, cluster: cluster)
                    self.put(PeerCalls.Answer(id: call.id, status: status, body: body), finishing: call.id)
                }
            }
        }
        if !writes.isEmpty {
            KeyValueForwarding.serve(writes: writes, cluster: cluster) { id, body in
                self.put(PeerCalls.Answer(id: id, status: 200, body: body), finishing: nil)
            }
        }
    }

    private func put(_ answer: PeerCalls.Answer, finishing task: UInt64?) {
        let schedule = state.withLock { s -> Bool in
            s.answers.append(answer)
            s.running -= 1
            if let task { s.tasks[task] = nil }
            defer { s.writeScheduled = true }
            return !s.writeScheduled
        }
        if schedule { handler.eventLoop.execute { self.writeAnswers() } }
    }

    /// The calls running in tasks are cancelled (a graceful stop): they answer at once.
    func cancelTasks() {
        for task in state.withLock({ Array($0.tasks.values) }) { task.cancel() }
    }

    /// No more calls will come: the answer ends once the running ones have answered.
    func readerEnded(close: Bool) {
        let schedule = state.withLock { s -> Bool in
            s.readerDone = true
            s.closeAtEnd = s.closeAtEnd || close
            defer { s.writeScheduled = true }
            return !s.writeScheduled
        }
        if schedule { handler.eventLoop.execute { self.writeAnswers() } }
    }

    /// On the event loop: every answer waiting, in frames; then, if that was all, the end.
    private func writeAnswers() {
        let (handler, context) = handler.value
        while true {
            let next = state.withLock { s -> (frame: ByteBuffer?, end: Bool?) in
                let count = PeerCalls.frameCount(s.answers.lazy.map(\.body.count))
                if count > 0 {
                    let taken = Array(s.answers.prefix(count))
                    s.answers.removeFirst(count)
                    defer { s.sequence += 1 }
                    return (PeerStreamFrame.encode(PeerCalls.encode(taken), sequence: s.sequence, key: answerKey), nil)
                }
                s.writeScheduled = false
                guard s.readerDone, s.running == 0, !s.ended else { return (nil, nil) }
                s.ended = true
                return (nil, s.closeAtEnd)
            }
            if let frame = next.frame {
                handler.write(frame, context: context)
                continue
            }
            if let close = next.end { handler.end(context: context, close: close) }
            return
        }
    }
}
