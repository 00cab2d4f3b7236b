import Synchronization
import SkeinPipeline
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdCore
import HummingbirdHTTP2
import Logging
import NIOCore
import SkeinCluster

/// The peer port's connections: HTTP/2 with prior knowledge only (anything else fails the
/// HTTP/2 preface and is closed), with the bytes counted for the traffic figure.
struct PeerChannel: ServerChildChannel {
    typealias Value = HTTP2Channel.Value
    let http2: HTTP2Channel
    let traffic: PeerTraffic

    /// Each HTTP/2 stream gets a ``PeerStreamHandler``, which serves the long-lived Raft and
    /// call streams on the event loop; every other request goes on to `responder`.
    init(responder: @escaping HTTPChannelHandler.Responder, traffic: PeerTraffic, auth: PeerAuth, cluster: ClusterHandle, logger: Logger) {
        var configuration = HTTP2ChannelConfiguration(idleTimeout: .seconds(300))
        configuration.streamConfiguration.additionalChannelHandlers = {
            [PeerStreamHandler(auth: auth, cluster: cluster, logger: logger)]
        }
        http2 = HTTP2Channel(responder: responder, configuration: configuration)
        self.traffic = traffic
    }

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        let traffic = traffic
        return channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.addHandler(ByteCounter(traffic: traffic))
        }.flatMap { http2.setup(channel: channel, logger: logger) }
    }

    func handle(value: Value, logger: Logger) async {
        await http2.handle(value: value, logger: logger)
    }
}

/// Answers peer requests. Each must prove the cluster secret (else 401, and nothing changes);
/// a body over the limit is 413; an unknown message version or a malformed body is 400 and
/// logged. `POST /v1/peer/membership` carries membership envelopes; the answer's body holds
/// the envelopes addressed back to the caller.
struct PeerResponder: HTTPResponder {
    typealias Context = BasicRequestContext
    static let membershipPath = "/v1/peer/membership"

    let auth: PeerAuth
    let cluster: ClusterHandle
    let logger: Logger

    func respond(to request: Request, context: Context) async throws -> Hummingbird.Response {
        let path = request.uri.path
        cluster.traffic.requestsIn.add(1, ordering: .relaxed)
        if path == PeerConnection.raftStreamPath { return raftStream(request) }
        if path == PeerCalls.path { return callStream(request) }
        let body: [UInt8]
        do {
            var buffer = try await request.body.collect(upTo: PeerLimits.maxBody)
            body = buffer.readBytes(length: buffer.readableBytes) ?? []
        } catch {
            return Self.answer(.contentTooLarge, "peer request body exceeds \(PeerLimits.maxBody) bytes")
        }
        if let why = auth.verify(header: request.headers[HTTPField.Name(PeerAuth.header)!], method: request.method.rawValue,
                                 path: path, body: body) {
            logger.warning("refused a peer request", metadata: ["why": "\(why)", "path": "\(path)"])
            return Self.answer(.unauthorized, "peer requests must prove the cluster secret")
        }
        guard request.method == .post else { return Self.answer(.methodNotAllowed, "\(path) answers POST") }
        switch path {
        case Self.membershipPath: break
        case VoterChanges.peerPath: return await VoterChanges.serve(body, cluster: cluster)
        default: return Self.answer(.notFound, "no peer route \(path)")
        }
        let envelopes: [Envelope]
        do {
            envelopes = try MembershipCodec.decode(body)
        } catch {
            logger.warning("rejected a peer message", metadata: ["why": "\(error)"])
            return Self.answer(.badRequest, error.description)
        }
        guard let membership = cluster.membership else { return Self.answer(.serviceUnavailable, "membership is starting") }
        let replies = await membership.receive(envelopes)
        var headers = HTTPFields()
        headers[.contentType] = "application/x-skein-peer"
        return Hummingbird.Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: MembershipCodec.encode(replies))))
    }

    /// `POST /v1/peer/raft-stream`: a peer's long-lived stream of Raft batches for this node's
    /// partitions, one authenticated frame each (``PeerStreamFrame``), stepped in order. Served
    /// by ``PeerStreamHandler`` on the event loop: what reaches here is an opening it did not
    /// take, answered with why — not proving the secret (401), not a POST (405), another
    /// partition count (409) — or, should it have passed every check here after all (the
    /// replication just started), 503 for the peer to open the stream again.
    func raftStream(_ request: Request) -> Hummingbird.Response {
        if case .failure(let refusal) = opening(request) { return refusal.response }
        guard let replication = cluster.replication else { return Self.answer(.serviceUnavailable, "replication is starting") }
        let theirs = request.headers[HTTPField.Name(PeerConnection.partitionsHeader)!].flatMap { Int($0) }
        guard theirs == replication.partitionCount else {
            logger.error("a peer has a different partition count", metadata: ["theirs": "\(theirs.map(String.init) ?? "none")", "ours": "\(replication.partitionCount)"])
            return Self.answer(.conflict, "this node has \(replication.partitionCount) partitions, the sender \(theirs.map(String.init) ?? "did not say")")
        }
        return Self.answer(.serviceUnavailable, "the stream was not taken; open it again")
    }

    /// `POST /v1/peer/call-stream`: a peer's long-lived stream of calls (``PeerCalls``), served
    /// by ``PeerStreamHandler`` on the event loop. What reaches here is an opening it did not
    /// take: not proving the secret (401) or not a POST (405); else 503, to open it again.
    func callStream(_ request: Request) -> Hummingbird.Response {
        if case .failure(let refusal) = opening(request) { return refusal.response }
        return Self.answer(.serviceUnavailable, "the stream was not taken; open it again")
    }

    /// One call: its route's answer, as status and body.
    static func serve(_ route: String, _ body: [UInt8], cluster: ClusterHandle) async -> (Int, [UInt8]) {
        switch route {
        case KeyValueForwarding.path: (200, await KeyValueForwarding.serve(body, cluster: cluster))
        case WorkflowRoutes.peerPath: await WorkflowRoutes.serve(body, cluster: cluster, renderer: JSONErrorRenderer())
        default: (404, Array("no peer call route \(route)".utf8))
        }
    }

    struct Refusal: Error {
        let response: Hummingbird.Response
    }

    /// The opening of a long-lived stream: its head must prove the secret over an empty body
    /// (else 401) and be a POST (else 405). Gives the stream's name, the proof its frames are
    /// signed under.
    func opening(_ request: Request) -> Result<String, Refusal> {
        let path = request.uri.path
        let header = request.headers[HTTPField.Name(PeerAuth.header)!]
        if let why = auth.verify(header: header, method: request.method.rawValue, path: path, body: []) {
            logger.warning("refused a peer request", metadata: ["why": "\(why)", "path": "\(path)"])
            return .failure(Refusal(response: Self.answer(.unauthorized, "peer requests must prove the cluster secret")))
        }
        guard request.method == .post else { return .failure(Refusal(response: Self.answer(.methodNotAllowed, "\(path) answers POST"))) }
        return .success(String(header.flatMap { PeerAuth.proof(ofHeader: $0) } ?? ""))
    }

    static func answer(_ status: HTTPResponse.Status, _ message: String) -> Hummingbird.Response {
        var headers = HTTPFields()
        headers[.contentType] = "application/json"
        let json = #"{"error":{"code":\#(status.code),"what":"\#(status.reasonPhrase.lowercased().replacingOccurrences(of: " ", with: "_"))","key":"","message":"\#(message)"}}"#
        return Hummingbird.Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: json)))
    }
}
