import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import SkeinCluster
import SkeinPipeline

/// Replacing a voter that is gone for good (`skein voters replace`):
/// `POST /v1/cluster/voters` on the client port of any node drives each partition's leader,
/// through `POST /v1/peer/voters`, one configuration change at a time (``VoterReplacement``)
/// until the new node is a voter and the old one is gone.
///
/// Body: `{"remove": PEER, "add": PEER, "partitions": [ID]?}`, `?wait=SECONDS` (default 60).
/// Answers 200 when every partition asked for is done, 504 with how far each got when the wait
/// ran out (asking again picks up where it stopped), 409 when the request cannot be done
/// (the new node is not a live member, the old one is not a voter), 400 on a bad body.
enum VoterChanges {
    static let clientPath = "/v1/cluster/voters"
    static let peerPath = "/v1/peer/voters"

    struct Request: Codable {
        var remove: String
        var add: String
        var partitions: [Int]?
    }

    struct PartitionResult: Codable, Sendable {
        var id: Int
        var done: Bool
        var detail: String
        var voters: [String]?
    }

    struct Answer: Codable, Sendable {
        var remove: String
        var add: String
        var done: Bool
        var partitions: [PartitionResult]
    }

    // MARK: - Client port

    static func answer(body: Data, query: String?, cluster: ClusterHandle, renderer: any ErrorRenderer) async -> SkeinPipeline.Response {
        func bad(_ code: Int, _ what: String, _ message: String) -> SkeinPipeline.Response {
            renderer.render(SkeinError(code: code, what: what, key: clientPath, message: message))
        }
        let request: Request
        do {
            request = try JSONDecoder().decode(Request.self, from: body)
        } catch {
            return bad(400, "invalid_body", #"expected {"remove": "HOST:PORT", "add": "HOST:PORT", "partitions": [ID]?}: \#(Self.describe(error))"#)
        }
        for (field, value) in [("remove", request.remove), ("add", request.add)] where !isPeerAddress(value) {
            return bad(400, "invalid_\(field)", "\(field) must be a peer address HOST:PORT as in --seeds, not \"\(value)\"")
        }
        guard request.remove != request.add else { return bad(400, "invalid_add", "add and remove name the same node") }
        var wait = 60.0
        if let query, let item = query.split(separator: "&").first(where: { $0.hasPrefix("wait=") }) {
            guard let seconds = Double(item.dropFirst(5)), seconds >= 0, seconds <= 3600 else {
                return bad(400, "invalid_wait", "wait must be a number of seconds from 0 to 3600")
            }
            wait = seconds
        }
        guard let replication = cluster.replication else { return bad(503, "starting", "replication is starting; retry shortly") }
        let all = Array(0..<replication.partitionCount)
        let partitions = request.partitions ?? all
        if let wrong = partitions.first(where: { !all.contains($0) }) {
            return bad(400, "invalid_partitions", "partition \(wrong) does not exist (there are \(all.count), from 0)")
        }
        let status = replication.status
        let addIsVoterEverywhere = partitions.allSatisfy { status[$0].voters.contains(request.add) && !status[$0].voters.contains(request.remove) }
        if !addIsVoterEverywhere, cluster.member(peer: request.add)?.state != .alive {
            return bad(409, "add_not_alive", "no live member has peer address \(request.add): start the new node first (its --seeds naming the cluster's nodes), then ask again")
        }
        let replacement = VoterReplacement(remove: request.remove, add: request.add)
        let deadline = ContinuousClock.now + .milliseconds(Int64(wait * 1000))
        let results = await withTaskGroup(of: PartitionResult.self) { group in
            for p in partitions {
                group.addTask { await run(replacement, partition: p, cluster: cluster, deadline: deadline) }
            }
            var results: [PartitionResult] = []
            for await r in group { results.append(r) }
            return results.sorted { $0.id < $1.id }
        }
        let answer = Answer(remove: request.remove, add: request.add, done: results.allSatisfy(\.done), partitions: results)
        if let refused = results.first(where: { !$0.done && $0.detail.hasPrefix(refusedPrefix) }) {
            return bad(409, "refused", "partition \(refused.id): \(refused.detail.dropFirst(refusedPrefix.count))")
        }
        return SkeinPipeline.Response.json(answer, status: answer.done ? .ok : .gatewayTimeout)
    }

    private static let refusedPrefix = "refused: "

    static func isPeerAddress(_ s: String) -> Bool {
        guard let colon = s.lastIndex(of: ":"), colon != s.startIndex, let port = Int(s[s.index(after: colon)...]) else { return false }
        return (1...65535).contains(port) && !s.contains(" ") && !s.contains("/")
    }

    static func describe(_ error: any Error) -> String {
        switch error {
        case DecodingError.keyNotFound(let key, _): "missing field \(key.stringValue)"
        case DecodingError.typeMismatch(_, let context), DecodingError.valueNotFound(_, let context):
            "wrong type at \(context.codingPath.map(\.stringValue).joined(separator: "."))"
        case DecodingError.dataCorrupted: "the body is not JSON"
        default: "\(error)"
        }
    }

    /// Drives one partition until its replacement is done, refused, or the deadline passes,
    /// asking whoever leads it now (a leader change in between is fine: every step is idempotent).
    static func run(_ replacement: VoterReplacement, partition: Int, cluster: ClusterHandle, deadline: ContinuousClock.Instant) async -> PartitionResult {
        var detail = "no answer yet"
        while true {
            if let replication = cluster.replication {
                do {
                    let progress: ReplacementProgress
                    let leader = replication.status[partition].leader
                    if leader == replication.me {
                        progress = try await replication.advanceReplacement(replacement, partition: partition)
                    } else if let leader {
                        progress = try await forward(replacement, partition: partition, to: leader, cluster: cluster)
                    } else {
                        throw ReplicationError.notLeader(partition: partition, leader: nil)
                    }
                    switch progress {
                    case .done(let voters): return PartitionResult(id: partition, done: true, detail: "done", voters: voters)
                    case .working(let why): detail = why
                    case .refused(let why): return PartitionResult(id: partition, done: false, detail: refusedPrefix + why)
                    }
                } catch {
                    detail = "\(error)"
                }
            } else {
                detail = "replication is starting"
            }
            guard ContinuousClock.now < deadline else { return PartitionResult(id: partition, done: false, detail: detail) }
            try? await Task.sleep(for: .milliseconds(50))
        }
    }

    // MARK: - Peer port

    static func forward(_ r: VoterReplacement, partition: Int, to leader: RaftNodeID, cluster: ClusterHandle) async throws -> ReplacementProgress {
        var w = WireWriter()
        w.varint(UInt64(partition))
        w.string(r.remove)
        w.string(r.add)
        let answer = try await cluster.peers.connection(to: leader).post(path: peerPath, body: w.bytes)
        guard answer.status == 200 else { throw PeerCallError(description: "\(leader) answered \(answer.status) to \(peerPath)") }
        var reader = WireReader(bytes: answer.body)
        switch try reader.byte("state") {
        case 0:
            let n = try reader.count("voters", max: 1024)
            var voters: [String] = []
            for _ in 0..<n { voters.append(try reader.string("voter")) }
            return .done(voters: voters)
        case 1: return .working(try reader.string("detail", max: 4096))
        case 2: return .refused(try reader.string("detail", max: 4096))
        default: throw PeerCallError(description: try reader.string("error", max: 4096))
        }
    }

    static func serve(_ body: [UInt8], cluster: ClusterHandle) async -> Hummingbird.Response {
        var reader = WireReader(bytes: body)
        let partition: Int, replacement: VoterReplacement
        do {
            partition = Int(try reader.varint("partition"))
            replacement = VoterReplacement(remove: try reader.string("remove"), add: try reader.string("add"))
        } catch {
            return PeerResponder.answer(.badRequest, "malformed voter change: \(error)")
        }
        var w = WireWriter()
        do {
            guard let replication = cluster.replication else { throw ReplicationError.notLeader(partition: partition, leader: nil) }
            guard partition < replication.partitionCount else { return PeerResponder.answer(.badRequest, "no partition \(partition)") }
            switch try await replication.advanceReplacement(replacement, partition: partition) {
            case .done(let voters):
                w.byte(0)
                w.varint(UInt64(voters.count))
                for v in voters { w.string(v) }
            case .working(let why):
                w.byte(1); w.string(why, max: 4096)
            case .refused(let why):
                w.byte(2); w.string(why, max: 4096)
            }
        } catch {
            w = WireWriter()
            w.byte(3); w.string("\(error)", max: 4096)
        }
        return Hummingbird.Response(status: .ok, body: .init(byteBuffer: ByteBuffer(bytes: w.bytes)))
    }
}
