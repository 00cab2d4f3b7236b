import Foundation
import SkeinCluster
import HTTPTypes
import SkeinPipeline

/// The node's own routes on the client port, answered before the applications' pipelines.
struct SystemRoutes: Sendable {
    let settings: NodeSettings
    let traces: TraceStore
    let renderer: any ErrorRenderer
    let readiness: Readiness
    let cluster: ClusterHandle

    func answer(method: HTTPRequest.Method, path: String, query: String?) -> Response? {
        guard path.hasPrefix("/healthz") || path.hasPrefix("/v1/") else { return nil }
        let parts = path.split(separator: "/", omittingEmptySubsequences: true)
        let readOnly = method == .get || method == .head
        switch (parts.first, parts.count) {
        case ("healthz", 1):
            guard readOnly else { return notAllowed(path, allow: "GET, HEAD") }
            return readiness.isServing ? .text("ok\n") : renderer.render(SkeinError(code: 503, what: "starting", message: "the node is not serving yet"))
        case ("v1", 3) where parts[1] == "traces":
            guard readOnly else { return notAllowed(path, allow: "GET, HEAD") }
            let id = String(parts[2]).lowercased()
            guard let timeline = traces.timeline(id) else {
                return renderer.render(SkeinError(code: 404, what: "trace_not_found", key: id,
                                                  message: "no recent request has trace id \(id) (the last \(traces.capacity) are kept)"))
            }
            if query?.contains("format=text") == true { return .text(timeline.renderText()) }
            return .json(timeline)
        case ("v1", 2) where parts[1] == "cluster":
            guard readOnly else { return notAllowed(path, allow: "GET, HEAD") }
            return .json(ClusterView(cluster))
        default:
            return nil
        }
    }

    private func notAllowed(_ path: String, allow: String) -> Response {
        var response = renderer.render(SkeinError(code: 405, what: "method_not_allowed", key: path, message: "\(path) answers \(allow)"))
        response.headers[.allow] = allow
        return response
    }
}

/// `GET /v1/cluster` as CONTRACT.md fixes it, plus each member's `generation` and this
/// node's peer traffic (`gossip`). A partition's leader and replicas are member names (peer
/// addresses for nodes membership has not met).
struct ClusterView: Codable, Sendable {
    struct Member: Codable, Sendable {
        let name: String
        let peer: String
        let client: String
        let state: String
        let incarnation: UInt64
        let generation: UInt64
    }

    struct Partition: Codable, Sendable {
        let id: Int
        let leader: String?
        let epoch: Int
        let replicas: [String]
        /// The voters and learners by peer address (the ids `skein voters replace` takes).
        let voters: [String]
        let learners: [String]
        /// This node's log of the partition: committed, applied, and compacted through (as of
        /// the last tick of replication, at most 100 ms ago).
        let commit: UInt64?
        let applied: UInt64?
        let compactedThrough: UInt64?
        /// Set while the partition's storage failed on this node: it is fenced here (neither
        /// votes nor leads) and retried with backoff; `attempts` failures in a row so far.
        let storage: StorageState?
    }

    struct StorageState: Codable, Sendable {
        let fenced: Bool
        let error: String
        let diskFull: Bool
        let attempts: Int
    }

    struct Traffic: Codable, Sendable {
        let bytesIn: Int
        let bytesOut: Int
        let requestsIn: Int?
        let requestsOut: Int?
        /// Of the bytes, the Raft and call streams' frames.
        let streamBytesIn: Int?
        let streamBytesOut: Int?
    }

    let node: String
    let generation: UInt64
    let members: [Member]
    let partitions: [Partition]
    let gossip: Traffic
    /// Group commits of the partition log on this node (each one SQLite transaction, one
    /// fsync) and the log entries they persisted.
    let log: Log?

    struct Log: Codable, Sendable {
        let commits: Int
        let entries: Int
        let compactions: Int
        let snapshotsOffered: Int
        let snapshotsInstalled: Int
        let snapshotBytesSent: Int
        let snapshotBytesReceived: Int
        let storageFaults: Int
    }

    init(_ cluster: ClusterHandle) {
        node = cluster.settings.name
        generation = cluster.generation
        members = cluster.members.map {
            Member(name: $0.name, peer: $0.peer, client: $0.client, state: $0.state.description,
                   incarnation: $0.incarnation, generation: $0.id.generation)
        }
        let positions = cluster.replication?.positions ?? []
        partitions = cluster.replication?.status.map { p in
            let at = p.id < positions.count ? positions[p.id] : nil
            return Partition(id: p.id, leader: p.leader.map { cluster.member(peer: $0)?.name ?? $0 }, epoch: Int(p.epoch),
                             replicas: p.voters.map { cluster.member(peer: $0)?.name ?? $0 }, voters: p.voters, learners: p.learners,
                             commit: at?.commit, applied: at?.applied, compactedThrough: at?.compactedThrough,
                             storage: p.fault.map { StorageState(fenced: true, error: $0.message, diskFull: $0.diskFull, attempts: p.faultAttempts) })
        } ?? []
        log = cluster.replication.map {
            let c = $0.counters
            return Log(commits: c.syncedCommits, entries: c.entriesPersisted, compactions: c.compactions, snapshotsOffered: c.snapshotsOffered,
                       snapshotsInstalled: c.snapshotsInstalled, snapshotBytesSent: c.snapshotBytesSent,
                       snapshotBytesReceived: c.snapshotBytesReceived, storageFaults: c.storageFaults)
        }
        gossip = Traffic(bytesIn: cluster.traffic.bytesIn.load(ordering: .relaxed), bytesOut: cluster.traffic.bytesOut.load(ordering: .relaxed),
                         requestsIn: cluster.traffic.requestsIn.load(ordering: .relaxed), requestsOut: cluster.traffic.requestsOut.load(ordering: .relaxed),
                         streamBytesIn: cluster.traffic.streamBytesIn.load(ordering: .relaxed), streamBytesOut: cluster.traffic.streamBytesOut.load(ordering: .relaxed))
    }
}

/// Whether the node has finished starting and serves requests.
final class Readiness: Sendable {
    private let serving = Mutex(false)
    var isServing: Bool { serving.withLock { $0 } }
    func markServing() { serving.withLock { $0 = true } }
}

import Synchronization
