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

    init(responder: @escaping HTTPChannelHandler.Responder, traffic: PeerTraffic) {
        http2 = HTTP2Channel(responder: responder, configuration: HTTP2ChannelConfiguration(idleTimeout: .seconds(300)))
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
        let body: [UInt8]
        do {
            var buffer = try await request.body.collect(upTo: path == Replication.raftPath ? PeerLimits.maxRaftBody : PeerLimits.maxBody)
            body = buffer.readBytes(length: buffer.readableBytes) ?? []
        } catch {
            return Self.answer(.contentTooLarge, "peer request body exceeds \(path == Replication.raftPath ? PeerLimits.maxRaftBody : PeerLimits.maxBody) bytes")
        }
        if let why = auth.verify(header: request.headers[HTTPField.Name(PeerAuth.header)!], method: request.method.rawValue,
                                 path: path, body: body) {
            logger.warning("refused a peer request", metadata: ["why": "\(why)", "path": "\(path)"])
            return Self.answer(.unauthorized, "peer requests must prove the cluster secret")
        }
        guard request.method == .post else { return Self.answer(.methodNotAllowed, "\(path) answers POST") }
        switch path {
        case Self.membershipPath: break
        case Replication.raftPath: return await raft(body)
        case KeyValueForwarding.path: return await KeyValueForwarding.serve(body, cluster: cluster)
        case VoterChanges.peerPath: return await VoterChanges.serve(body, cluster: cluster)
        case WorkflowRoutes.peerPath: return await WorkflowRoutes.serve(body, cluster: cluster, renderer: JSONErrorRenderer())
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

    /// `POST /v1/peer/raft`: a batch of Raft messages for this node's partitions.
    func raft(_ body: [UInt8]) async -> Hummingbird.Response {
        let batch: RaftBatch
        do {
            batch = try RaftCodec.decode(body)
        } catch {
            logger.warning("rejected raft messages", metadata: ["why": "\(error)"])
            return Self.answer(.badRequest, error.description)
        }
        guard let replication = cluster.replication else { return Self.answer(.serviceUnavailable, "replication is starting") }
        guard batch.partitionCount == replication.partitionCount else {
            logger.error("a peer has a different partition count", metadata: ["peer": "\(batch.from)", "theirs": "\(batch.partitionCount)", "ours": "\(replication.partitionCount)"])
            return Self.answer(.conflict, "this node has \(replication.partitionCount) partitions, the sender \(batch.partitionCount)")
        }
        let replies = await replication.receive(batch)
        guard !replies.isEmpty else { return Hummingbird.Response(status: .noContent) }
        var headers = HTTPFields()
        headers[.contentType] = "application/x-skein-peer"
        let answer = RaftCodec.encode(RaftBatch(partitionCount: replication.partitionCount, from: replication.me, messages: replies))
        return Hummingbird.Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: answer)))
    }

    static func answer(_ status: HTTPResponse.Status, _ message: String) -> Hummingbird.Response {
        var headers = HTTPFields()
        headers[.contentType] = "application/json"
        let json = #"{"error":{"code":\#(status.code),"what":"\#(status.reasonPhrase.lowercased().replacingOccurrences(of: " ", with: "_"))","key":"","message":"\#(message)"}}"#
        return Hummingbird.Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: json)))
    }
}
