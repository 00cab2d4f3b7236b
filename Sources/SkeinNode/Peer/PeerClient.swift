import Logging
import NIOCore
import NIOHTTP1
import NIOHTTP2
import NIOPosix
import Synchronization

/// Why a peer call failed.
struct PeerCallError: Error, CustomStringConvertible {
    let description: String
}

/// A peer's answer: status and body.
struct PeerAnswer: Sendable {
    let status: Int
    let body: [UInt8]
}

/// The one long-lived HTTP/2 (prior knowledge) connection from this node to one peer, owned
/// by this actor. Every call is a stream on it. A failed connect is retried with exponential
/// backoff; calls while waiting fail at once with the reason. When the connection drops,
/// every call in flight on it fails (its stream closes) and the next call reconnects.
actor PeerConnection {
    let host: String
    let port: Int
    let auth: PeerAuth
    let traffic: PeerTraffic
    let logger: Logger
    let callTimeout: TimeAmount
    /// The event loops its connection is made on (the node's).
    let loops: any EventLoopGroup

    private var channel: (any Channel)?
    private var multiplexer: NIOHTTP2Handler.AsyncStreamMultiplexer<Void>?
    private var connecting: Task<NIOHTTP2Handler.AsyncStreamMultiplexer<Void>, any Error>?
    private var failures = 0
    /// This node's long-lived Raft stream to the peer, the name its frames are signed under,
    /// and the next frame's number; behind a lock, so a send on an open stream
    /// (``trySendRaft(_:)``) needs no turn on this actor.
    private let raftStream = Mutex<RaftStream?>(nil)
    private struct RaftStream: Sendable {
        let channel: any Channel
        let key: PeerAuth.FrameKey
        var sequence: UInt64 = 0
    }
    private var retryAt: ContinuousClock.Instant?
    private var lastFailure = ""
    /// This node's call stream to the peer, readable without the actor: calls on an open stream
    /// do not hop onto it.
    private let calls = Mutex<PeerCallStream?>(nil)
    private var openingCalls: Task<PeerCallStream, any Error>?

    init(address: String, auth: PeerAuth, traffic: PeerTraffic, logger: Logger, callTimeout: TimeAmount = .seconds(2),
         loops: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) throws {
        guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]) else {
            throw PeerCallError(description: "bad peer address \(address)")
        }
        self.host = String(address[..<colon])
        self.port = port
        self.auth = auth
        self.traffic = traffic
        self.logger = logger
        self.callTimeout = callTimeout
        self.loops = loops
    }

    /// POSTs `body` to `path` on the peer and returns its answer. Only getting the connection
    /// needs the actor; the exchange itself runs off it, so its awaits do not hop back.
    nonisolated func post(path: String, body: [UInt8], headers extra: [(String, String)] = [], timeout callTimeout: TimeAmount? = nil) async throws -> PeerAnswer {
        let multiplexer = try await connected()
        traffic.requestsOut.add(1, ordering: .relaxed)
        let signature = auth.sign(method: "POST", path: path, body: body)
        let authority = "\(host):\(port)"
        let timeout = callTimeout ?? self.callTimeout
        let stream = try await multiplexer.openStream { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(HTTP2FramePayloadToHTTP1ClientCodec(httpProtocol: .http))
                return try NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>(wrappingChannelSynchronously: channel)
            }
        }
        let timer = stream.channel.eventLoop.scheduleTask(in: timeout) { stream.channel.close(promise: nil) }
        defer { timer.cancel() }
        return try await stream.executeThenClose { inbound, outbound in
            var head = HTTPRequestHead(version: .http1_1, method: .POST, uri: path)
            head.headers.add(name: "host", value: authority)
            head.headers.add(name: "content-type", value: "application/x-skein-peer")
            head.headers.add(name: "content-length", value: String(body.count))
            head.headers.add(name: PeerAuth.header, value: signature)
            for (name, value) in extra { head.headers.add(name: name, value: value) }
            // One write of the whole request: one hop to the event loop, one flush.
            try await outbound.write(contentsOf: [.head(head), .body(.byteBuffer(ByteBuffer(bytes: body))), .end(nil)])
            var status = 0
            var received: [UInt8] = []
            for try await part in inbound {
                switch part {
                case .head(let response):
                    status = Int(response.status.code)
                case .body(var buffer):
                    guard received.count + buffer.readableBytes <= PeerLimits.maxRaftBody else {
                        throw PeerCallError(description: "answer from \(authority) exceeds \(PeerLimits.maxRaftBody) bytes")
                    }
                    received += buffer.readBytes(length: buffer.readableBytes) ?? []
                case .end:
                    return PeerAnswer(status: status, body: received)
                }
            }
            throw PeerCallError(description: "\(authority) closed the stream before answering")
        }
    }

    /// Sends one encoded Raft batch to the peer on this node's long-lived stream to it
    /// (`POST /v1/peer/raft-stream`, opened on first use and again after it breaks): one DATA
    /// frame instead of a stream per batch. Returns once the frame is queued on the stream, in
    /// order, without waiting for the event loop to write it: the caller's next batch need not
    /// hop there and back first. A write that fails, or is not done within the call timeout
    /// (a peer that stopped reading), closes the stream; the next send opens a new one and Raft
    /// resends what matters. Frames are numbered in the order of the calls: one caller at a
    /// time (Replication, from its own turns while the stream is open, else from the one task
    /// that opens it).
    nonisolated func sendRaft(_ payload: [UInt8], partitionCount: Int) async throws {
        if trySendRaft(payload) { return }
        try await openRaftStream(partitionCount: partitionCount)
        guard trySendRaft(payload) else { throw PeerCallError(description: "the raft stream to \(host):\(port) closed as it opened") }
    }

    /// Sends one encoded Raft batch on the open Raft stream, without waiting: false when no
    /// stream is open (then ``sendRaft(_:partitionCount:)`` opens one). The frame is numbered
    /// and handed to the event loop under the lock, so frames leave in the order of the calls.
    nonisolated func trySendRaft(_ payload: [UInt8]) -> Bool {
        let timeout = callTimeout
        let logger = self.logger
        return raftStream.withLock { stream -> Bool in
            guard var current = stream, current.channel.isActive else { return false }
            let frame = PeerStreamFrame.encode(payload, sequence: current.sequence, key: current.key)
            traffic.streamFrameOut(frame.readableBytes)
            current.sequence += 1
            stream = current
            let channel = current.channel
            // One turn of the loop: the write (after the head and earlier frames, which were
            // queued the same way) and its watch.
            channel.eventLoop.execute {
                let timer = channel.eventLoop.scheduleTask(in: timeout) {
                    logger.debug("raft stream write timed out; closing it", metadata: ["peer": "\(channel.remoteAddress?.description ?? "?")"])
                    channel.close(promise: nil)
                }
                channel.writeAndFlush(HTTPClientRequestPart.body(.byteBuffer(frame))).whenComplete { result in
                    timer.cancel()
                    if case .failure = result { channel.close(promise: nil) }
                }
            }
            return true
        }
    }

    /// Opens the Raft stream unless one is open.
    private func openRaftStream(partitionCount: Int) async throws {
        if raftStream.withLock({ $0?.channel.isActive == true }) { return }
        let peer = "\(host):\(port)"
        let logger = self.logger
        let (channel, name) = try await openStream(path: Self.raftStreamPath, headers: [(Self.partitionsHeader, String(partitionCount))]) { channel, name in
            try channel.pipeline.syncOperations.addHandler(StreamAnswerWatcher(peer: peer, logger: logger))
            return name
        }
        let previous = raftStream.withLock { stream in
            defer { stream = RaftStream(channel: channel, key: auth.frameKey(stream: name)) }
            return stream
        }
        previous?.channel.close(promise: nil)
    }

    /// Calls `route` on the peer with `body` over this node's call stream to it (``PeerCalls``,
    /// opened on first use and again after it ends) and returns the answer. Fails when the
    /// answer takes longer than `timeout` (the call timeout unless given) or the stream ends first.
    nonisolated func call(route: String, body: [UInt8], timeout: TimeAmount? = nil) async throws -> PeerAnswer {
        var stream = calls.withLock { $0 }
        if stream?.isOpen != true { stream = try await openCallStream() }
        return try await stream!.call(route: route, body: body, timeout: timeout ?? callTimeout)
    }

    /// The call stream in use, if any.
    nonisolated var currentCallStream: PeerCallStream? { calls.withLock { $0 } }

    /// The open call stream, or a new one; calls that find none at once share one opening.
    private func openCallStream() async throws -> PeerCallStream {
        if let current = calls.withLock({ $0 }), current.isOpen { return current }
        if let openingCalls { return try await openingCalls.value }
        let task = Task { try await self.newCallStream() }
        openingCalls = task
        defer { openingCalls = nil }
        return try await task.value
    }

    private func newCallStream() async throws -> PeerCallStream {
        let peer = "\(host):\(port)"
        let auth = self.auth
        let logger = self.logger
        let traffic = self.traffic
        let (_, stream) = try await openStream(path: PeerCalls.path) { channel, name in
            let stream = PeerCallStream(channel: channel, name: name, auth: auth, peer: peer, traffic: traffic)
            try channel.pipeline.syncOperations.addHandler(PeerCallAnswerReader(stream: stream, logger: logger))
            return stream
        }
        let previous = calls.withLock { current in
            defer { current = stream }
            return current
        }
        previous?.close(why: "replaced")
        return stream
    }

    /// Opens a long-lived stream to the peer: a POST to `path` whose head proves the secret and
    /// leaves before any frame (the channel keeps writes in order). `configure` adds the
    /// stream's reader on its event loop, given the stream's name (the proof its frames are
    /// signed under), and returns what the caller keeps of it.
    private func openStream<T: Sendable>(path: String, headers extra: [(String, String)] = [],
                                         configure: @escaping @Sendable (any Channel, String) throws -> T) async throws -> (any Channel, T) {
        let multiplexer = try await connected()
        traffic.requestsOut.add(1, ordering: .relaxed)
        let signature = auth.sign(method: "POST", path: path, body: [])
        let name = String(PeerAuth.proof(ofHeader: signature) ?? "")
        let (channel, kept) = try await multiplexer.openStream { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(HTTP2FramePayloadToHTTP1ClientCodec(httpProtocol: .http))
                return (channel as any Channel, try configure(channel, name))
            }
        }
        var head = HTTPRequestHead(version: .http1_1, method: .POST, uri: path)
        head.headers.add(name: "host", value: "\(host):\(port)")
        head.headers.add(name: "content-type", value: "application/x-skein-peer-stream")
        head.headers.add(name: PeerAuth.header, value: signature)
        for (field, value) in extra { head.headers.add(name: field, value: value) }
        channel.writeAndFlush(HTTPClientRequestPart.head(head), promise: nil)
        return (channel, kept)
    }

    static let raftStreamPath = "/v1/peer/raft-stream"
    static let partitionsHeader = "skein-partitions"

    private func connected() async throws -> NIOHTTP2Handler.AsyncStreamMultiplexer<Void> {
        if let channel, channel.isActive, let multiplexer { return multiplexer }
        if let connecting { return try await connecting.value }
        if let retryAt, ContinuousClock.now < retryAt {
            throw PeerCallError(description: "\(host):\(port) unreachable (\(lastFailure)); retrying in \(retryAt - ContinuousClock.now)")
        }
        let task = Task { try await self.connect() }
        connecting = task
        defer { connecting = nil }
        do {
            let multiplexer = try await task.value
            if failures > 0 { logger.info("peer connection restored", metadata: ["peer": "\(host):\(port)"]) }
            failures = 0
            retryAt = nil
            return multiplexer
        } catch {
            failures += 1
            lastFailure = "\(error)"
            // Short: membership probes the peer every few hundred milliseconds and must see it
            // as soon as it is back.
            let backoff = Duration.milliseconds(min(1000, 50 << min(failures, 5)))
            retryAt = ContinuousClock.now + backoff
            if failures == 1 {
                logger.notice("cannot connect to peer", metadata: ["peer": "\(host):\(port)", "why": "\(error)"])
            } else {
                logger.debug("cannot connect to peer", metadata: ["peer": "\(host):\(port)", "why": "\(error)", "attempt": "\(failures)"])
            }
            throw PeerCallError(description: "\(host):\(port) unreachable (\(error))")
        }
    }

    private func connect() async throws -> NIOHTTP2Handler.AsyncStreamMultiplexer<Void> {
        let traffic = self.traffic
        let (channel, multiplexer) = try await ClientBootstrap(group: loops)
            .connectTimeout(.seconds(1))
            .channelOption(.socketOption(.so_reuseaddr), value: 1)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .connect(host: host, port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteCounter(traffic: traffic))
                    let multiplexer = try channel.pipeline.syncOperations.configureAsyncHTTP2Pipeline(mode: .client) { stream in
                        // Peers never open streams towards a client connection.
                        stream.close()
                    }
                    return (channel as any Channel, multiplexer)
                }
            }
        self.channel = channel
        self.multiplexer = multiplexer
        return multiplexer
    }

    /// The peer spoke to us: whatever kept us from connecting is over.
    func resetBackoff() {
        retryAt = nil
    }

    func close() async {
        calls.withLock { $0 }?.close(why: "the connection to \(host):\(port) closed")
        raftStream.withLock { stream in
            stream?.channel.close(promise: nil)
            stream = nil
        }
        try? await channel?.close()
        channel = nil
        multiplexer = nil
    }
}

/// Watches the answer to a long-lived stream: the peer answers 200 at once and ends the
/// answer only when it stops reading (a refusal, a bad frame, shutdown); then the stream is
/// closed here too, so the next send opens a new one.
final class StreamAnswerWatcher: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart
    let peer: String
    let logger: Logger

    init(peer: String, logger: Logger) {
        self.peer = peer
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head) where head.status != .ok:
            logger.warning("peer refused the raft stream", metadata: ["peer": "\(peer)", "status": "\(head.status.code)"])
        case .end:
            context.close(promise: nil)
        default:
            break
        }
    }
}

/// One ``PeerConnection`` per peer address.
final class PeerClients: Sendable {
    let auth: PeerAuth
    let traffic: PeerTraffic
    let logger: Logger
    private let connections = Mutex<[String: PeerConnection]>([:])

    let loops: any EventLoopGroup

    init(auth: PeerAuth, traffic: PeerTraffic, logger: Logger, loops: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) {
        self.auth = auth
        self.traffic = traffic
        self.logger = logger
        self.loops = loops
    }

    func connection(to address: String) throws -> PeerConnection {
        try connections.withLock { connections in
            if let existing = connections[address] { return existing }
            let connection = try PeerConnection(address: address, auth: auth, traffic: traffic, logger: logger, loops: loops)
            connections[address] = connection
            return connection
        }
    }

    /// A peer that just reached us is worth connecting to at once.
    func heardFrom(_ address: String) {
        guard let connection = connections.withLock({ $0[address] }) else { return }
        Task { await connection.resetBackoff() }
    }

    func closeAll() async {
        let all = connections.withLock { Array($0.values) }
        for connection in all { await connection.close() }
    }
}

enum PeerLimits {
    /// The largest peer request or answer body.
    static let maxBody = 1 << 20
    /// Raft batches carry entries and snapshots: larger.
    static let maxRaftBody = 64 << 20
}

/// Bytes moved on peer connections, both directions, both roles: the gossip traffic figure
/// `cluster/bench membership` reads from `/v1/cluster`.
final class PeerTraffic: Sendable {
    let bytesIn = Atomic<Int>(0)
    let bytesOut = Atomic<Int>(0)
    /// Peer requests (HTTP/2 streams) this node made and answered.
    let requestsOut = Atomic<Int>(0)
    let requestsIn = Atomic<Int>(0)
    /// Of those bytes, the Raft and call streams' frames, each with its HTTP/2 DATA frame
    /// header: what is left is membership's gossip, the other peer requests and the
    /// connections' own upkeep.
    let streamBytesIn = Atomic<Int>(0)
    let streamBytesOut = Atomic<Int>(0)

    /// A stream frame of `bytes` on the wire: the bytes, and a 9-byte DATA frame header per
    /// 16 KiB (HTTP/2's default largest frame).
    static func onWire(_ bytes: Int) -> Int { bytes + 9 * max(1, (bytes + 16_383) / 16_384) }

    func streamFrameOut(_ bytes: Int) { streamBytesOut.add(Self.onWire(bytes), ordering: .relaxed) }
    func streamFrameIn(_ bytes: Int) { streamBytesIn.add(Self.onWire(bytes), ordering: .relaxed) }
}

/// Counts the bytes that cross a peer connection's socket.
final class ByteCounter: ChannelDuplexHandler, Sendable {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let traffic: PeerTraffic
    init(traffic: PeerTraffic) { self.traffic = traffic }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        traffic.bytesIn.add(unwrapInboundIn(data).readableBytes, ordering: .relaxed)
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        traffic.bytesOut.add(unwrapOutboundIn(data).readableBytes, ordering: .relaxed)
        context.write(data, promise: promise)
    }
}
