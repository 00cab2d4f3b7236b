import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdCore
import NIOCore
import NIOFoundationCompat
import NIOHTTPTypes
import SkeinPipeline
import Synchronization

/// Answers requests on the connection's event loop, in the client port's pipeline (one per
/// HTTP/1.1 connection, one per HTTP/2 stream), ahead of Hummingbird's request task.
///
/// Hummingbird hands every request to a task on Swift's concurrency pool, streams its body
/// through that task, and writes its answer back through the event loop: two thread hops and
/// an async channel a request, more than a short pipeline costs. Here a request is read whole
/// (its body up to the node's limit) and handed to the same ``NodeResponder`` functions: one
/// the node can answer without waiting (its own routes, routing errors, a pipeline whose steps
/// ask for no effect) is answered at once, with no hop at all; one that has to wait (effects,
/// replication) runs in a task of its own and its answer is written from there. A body over
/// the limit, HEAD, `expect` and `connection` headers pass on to Hummingbird, untouched, as
/// does the rest of a request once it has passed.
///
/// HTTP/1.1 answers leave in the order of the requests: while one is owed (here or by
/// Hummingbird, whose answer passes through this handler on its way out), the requests behind
/// it wait here, and reading stops until they are taken. A graceful stop (the quiesce event)
/// waits while a request is being read or answered here (Hummingbird's handler knows nothing
/// of it), then goes on to Hummingbird's handler, which closes the connection once its own
/// request, if any, is answered.
final class EventLoopAnswers: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    let responder: NodeResponder
    let dates: HTTPDates
    /// The head of the request being read here, and its body so far.
    private var held: HTTPRequest?
    private var body = ByteBuffer()
    /// The request being read passes on to Hummingbird (until its end).
    private var passing = false
    /// An answer is owed: the next request waits in `queue`.
    private var owed = false
    private var queue = CircularBuffer<HTTPRequestPart>()
    /// The request under way is read whole and its answer is owed: what follows waits.
    private var waiting: Bool { owed && !passing && held == nil }
    private var readPending = false
    /// An answer being computed off the loop.
    private var answering = false
    private var quiesce: Any?
    private var unflushed = false
    /// Between a read and its end, which flushes what the read's answers wrote.
    private var reading = false
    private var passedOutsideRead = false
    private var removed = false
    private let coalescesFlushes: Bool
    private var flushScheduled = false

    /// `coalescesFlushes`: flush a read's answers at the end of the event loop's round of reads
    /// rather than at once (for HTTP/1.1 connections; see ``flushSoon(context:)``).
    init(responder: NodeResponder, dates: HTTPDates, coalescesFlushes: Bool) {
        self.responder = responder
        self.dates = dates
        self.coalescesFlushes = coalescesFlushes
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        removed = true
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        reading = true
        let part = unwrapInboundIn(data)
        if !queue.isEmpty || waiting {
            queue.append(part)
            return
        }
        take(part, context: context)
    }

    /// One part of the request whose turn it is.
    private func take(_ part: HTTPRequestPart, context: ChannelHandlerContext) {
        switch part {
        case .head(let head):
            owed = true
            if readsHere(head) {
                held = head
            } else {
                passing = true
                pass(part, context: context)
            }
        case .body(var chunk):
            guard let head = held else {
                pass(part, context: context)
                return
            }
            if body.readableBytes + chunk.readableBytes <= responder.settings.maxBodySize {
                body.writeBuffer(&chunk)
                return
            }
            // Over the limit: Hummingbird's path answers 413, as it does for every request.
            held = nil
            passing = true
            pass(.head(head), context: context)
            if body.readableBytes > 0 { pass(.body(body), context: context) }
            body = ByteBuffer()
            pass(part, context: context)
            releaseQuiesce(context: context)
        case .end:
            if let head = held {
                held = nil
                let whole = body
                body = ByteBuffer()
                answer(head, body: whole, context: context)
            } else {
                passing = false
                pass(part, context: context)
            }
        }
    }

    /// Whether this handler reads and answers the request (else it passes on to Hummingbird).
    private func readsHere(_ head: HTTPRequest) -> Bool {
        // (`contains` and `values`: the subscript by name joins every value into a new string.)
        guard head.method != .head, !head.headerFields.contains(.connection), !head.headerFields.contains(.expect) else { return false }
        // A body announced over the limit is Hummingbird's 413 at once.
        let lengths = head.headerFields[values: .contentLength]
        if !lengths.isEmpty {
            guard lengths.count == 1, let length = Int(lengths[0]), length <= responder.settings.maxBodySize else { return false }
        }
        return true
    }

    /// On to Hummingbird. (Its channel takes reads in at the read's end: parts passed on from
    /// the queue, outside a read, are followed by a read's end of their own.)
    private func pass(_ part: HTTPRequestPart, context: ChannelHandlerContext) {
        passedOutsideRead = passedOutsideRead || !reading
        context.fireChannelRead(wrapInboundOut(part))
    }

    /// The answer owed has gone out: the requests that waited take their turns.
    private func answered(context: ChannelHandlerContext) {
        owed = false
        while !waiting, let part = queue.popFirst() {
            take(part, context: context)
        }
        if unflushed, !reading {
            unflushed = false
            context.flush()
        }
        if passedOutsideRead {
            passedOutsideRead = false
            context.fireChannelReadComplete()
        }
        if queue.isEmpty, readPending {
            readPending = false
            context.read()
        }
        releaseQuiesce(context: context)
    }

    /// Hands a held quiesce event on once nothing is being read or answered here.
    private func releaseQuiesce(context: ChannelHandlerContext) {
        guard let event = quiesce, !answering, held == nil else { return }
        quiesce = nil
        if unflushed { flush(context: context) }
        context.fireUserInboundEventTriggered(event)
    }

    private func answer(_ head: HTTPRequest, body: ByteBuffer, context: ChannelHandlerContext) {
        let request = Request(head: head, body: RequestBody(buffer: body))
        switch responder.answerWithoutWaiting(request, collected: body) {
        case .answered(let response):
            write(response, context: context)
            answered(context: context)
        case .waits(let waiting):
            answering = true
            let loop = context.eventLoop
            let bound = NIOLoopBound((self, context), eventLoop: loop)
            let responder = self.responder
            @Sendable func deliver(_ response: SkeinPipeline.Response) {
                loop.execute {
                    let (handler, context) = bound.value
                    handler.answering = false
                    guard !handler.removed else { return }
                    handler.write(response, context: context)
                    handler.answered(context: context)
                }
            }
            @Sendable func inTask(_ waiting: NodeResponder.Waiting) {
                Task { deliver(await responder.answer(request, waiting)) }
            }
            // Most key-value requests need no task: they wait in the replication actor or on
            // the leader's call stream.
            let taken = responder.answerWithoutTask(request, body: body, waiting) { response, next in
                if let response { deliver(response) } else { inTask(next) }
            }
            if !taken { inTask(waiting) }
        }
    }

    /// Writes one answer; the flush comes at the end of the read (on HTTP/1.1, at the end of the
    /// event loop's round of reads: ``flushSoon(context:)``).
    private func write(_ response: SkeinPipeline.Response, context: ChannelHandlerContext) {
        var fields = response.headers
        // No length on a 204 or 304 (RFC 9110), as Hummingbird does.
        if response.status != .noContent, response.status != .notModified {
            fields[.contentLength] = String(response.body.count)
        }
        fields[.date] = dates.now()
        unflushed = true
        context.write(wrapOutboundOut(.head(HTTPResponse(status: response.status, headerFields: fields))), promise: nil)
        if !response.body.isEmpty {
            context.write(wrapOutboundOut(.body(ByteBuffer(data: response.body))), promise: nil)
        }
        context.write(wrapOutboundOut(.end(nil)), promise: nil)
    }

    /// Hummingbird's answers pass here: the end of one lets the next request take its turn.
    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        context.write(data, promise: promise)
        if case .end = unwrapOutboundIn(data), owed, !answering {
            answered(context: context)
        }
    }

    /// Every flush (Hummingbird's too) takes this handler's writes along.
    func flush(context: ChannelHandlerContext) {
        unflushed = false
        context.flush()
    }

    /// While requests wait their turn, reading more waits too.
    func read(context: ChannelHandlerContext) {
        if queue.isEmpty {
            context.read()
        } else {
            readPending = true
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        reading = false
        if unflushed {
            if coalescesFlushes {
                flushSoon(context: context)
            } else {
                unflushed = false
                context.flush()
            }
        }
        context.fireChannelReadComplete()
    }

    /// Flushes once the event loop has read every connection that was ready, so the answers
    /// to one round of reads leave together: a client waiting on many connections then wakes
    /// once for many answers instead of once for each. (An HTTP/2 stream does not do this: its
    /// connection's multiplexer already flushes once per read of the connection.)
    private func flushSoon(context: ChannelHandlerContext) {
        guard !flushScheduled else { return }
        flushScheduled = true
        context.eventLoop.assumeIsolatedUnsafeUnchecked().execute {
            self.flushScheduled = false
            if self.unflushed, !self.removed {
                self.unflushed = false
                context.flush()
            }
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ChannelShouldQuiesceEvent, answering || held != nil {
            quiesce = event
            return
        }
        // Hummingbird closes an idle connection on quiesce, and a close drops unflushed writes:
        // an answer whose flush was put off goes out first.
        if event is ChannelShouldQuiesceEvent, unflushed { flush(context: context) }
        context.fireUserInboundEventTriggered(event)
    }
}

/// The `date` header (RFC 9110's IMF-fixdate), formatted at most once a second.
final class HTTPDates: Sendable {
    private let cached = Mutex<(second: Int, text: String)>((-1, ""))

    func now() -> String {
        let second = time(nil)
        if let text = cached.withLock({ $0.second == second ? $0.text : nil }) { return text }
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "GMT")
        formatter.dateFormat = "EEE, dd MMM yyyy HH:mm:ss 'GMT'"
        let text = formatter.string(from: Date(timeIntervalSince1970: TimeInterval(second)))
        cached.withLock { $0 = (second, text) }
        return text
    }
}
