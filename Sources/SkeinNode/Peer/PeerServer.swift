import Synchronization
import SkeinPipeline
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdCore
import HummingbirdHTTP2
import Logging
import NIOCore
import ServiceLifecycle
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
    /// partitions, one authenticated frame each (``PeerStreamFrame``), stepped in order. The
    /// opening must prove the secret (else 401) and name this node's partition count (else
    /// 409); then the answer is 200 at once and ends only when this node stops reading: the
    /// peer's stream ended, or a frame was bad (logged; the peer opens a new stream).
    /// Everything this node sends back travels on its own stream to the peer.
    func raftStream(_ request: Request) -> Hummingbird.Response {
        let stream: String
        switch opening(request) {
        case .failure(let refusal): return refusal.response
        case .success(let name): stream = name
        }
        guard let replication = cluster.replication else { return Self.answer(.serviceUnavailable, "replication is starting") }
        let theirs = request.headers[HTTPField.Name(PeerConnection.partitionsHeader)!].flatMap { Int($0) }
        guard theirs == replication.partitionCount else {
            logger.error("a peer has a different partition count", metadata: ["theirs": "\(theirs.map(String.init) ?? "none")", "ours": "\(replication.partitionCount)"])
            return Self.answer(.conflict, "this node has \(replication.partitionCount) partitions, the sender \(theirs.map(String.init) ?? "did not say")")
        }
        let auth = self.auth
        let logger = self.logger
        var headers = HTTPFields()
        headers[.contentType] = "application/x-skein-peer-stream"
        return Hummingbird.Response(status: .ok, headers: headers, body: ResponseBody { writer in
            do {
                // A stream never ends by itself: stop reading when the node shuts down, so the
                // server's graceful stop does not wait for the peer.
                try await cancelWhenGracefulShutdown {
                    var pending = ByteBuffer()
                    var sequence: UInt64 = 0
                    let key = auth.frameKey(stream: stream)
                    for try await chunk in request.body {
                        pending.writeImmutableBuffer(chunk)
                        while let payload = try PeerStreamFrame.next(from: &pending, sequence: sequence, key: key, limit: PeerLimits.maxRaftBody) {
                            sequence += 1
                            let batch = try RaftCodec.decode(payload)
                            guard batch.partitionCount == replication.partitionCount else {
                                throw PeerStreamFrame.Refused(description: "a batch for \(batch.partitionCount) partitions; this node has \(replication.partitionCount)")
                            }
                            replication.submit(.batch(batch))
                        }
                    }
                }
            } catch let refused as PeerStreamFrame.Refused {
                logger.warning("stopped reading a raft stream", metadata: ["why": "\(refused)"])
            } catch let malformed as RaftCodecError {
                logger.warning("stopped reading a raft stream", metadata: ["why": "\(malformed)"])
            } catch {
                // Shutdown, or the peer went away: its next stream starts afresh.
                logger.debug("a raft stream ended", metadata: ["why": "\(error)"])
            }
            try await writer.finish(nil)
        })
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
