import Foundation
import HTTPTypes
import SkeinCluster
import SkeinPipeline
import SkeinStore

/// The replicated key-value store as clients and pipeline effects see it: any node takes any
/// request. A key belongs to the partition of its hash (or its `{tag}`); the partition's
/// leader answers it — reads from its table while it holds the lease (linearizable: a read
/// first waits until every put acknowledged there is applied), puts once committed on a
/// majority, deletes once applied (their answer says whether the key was there). Any other
/// node forwards the request in one hop over the peer port, with the trace context; with no
/// leader known the answer is a 503 the caller may retry (`Retry-After`).
struct ReplicatedKeyValueStore: KeyValueStore {
    let cluster: ClusterHandle
    let limits: KeyValueLimits
    /// The caller's W3C `traceparent`, carried along when the request is forwarded.
    var traceparent: String?
    /// An earlier attempt at this request's write may have happened (its leader did not
    /// answer): a later attempt's "did not happen" then proves nothing about the first.
    var writeMayHaveHappened = false

    func get(_ key: String) async throws -> Data? {
        try limits.check(key: key)
        guard case .value(let v) = try await perform(.get(key: key)) else { throw Self.protocolError }
        return v.map { Data($0) }
    }

    func put(_ key: String, _ value: Data) async throws {
        try limits.check(key: key)
        try limits.check(value: value, key: key)
        _ = try await perform(.put(key: key, value: Array(value)))
    }

    func delete(_ key: String) async throws -> Bool {
        try limits.check(key: key)
        guard case .done(let existed) = try await perform(.delete(key: key)) else { throw Self.protocolError }
        return existed
    }

    /// Scans every partition (each through its leader) and merges the keys in order.
    func scan(prefix: String, limit: Int) async throws -> [KVEntry] {
        guard let replication = cluster.replication else { throw Self.starting }
        let count = replication.partitionCount
        let all = try await withThrowingTaskGroup(of: [(String, [UInt8])].self) { group in
            for p in 0..<count {
                group.addTask {
                    guard case .entries(let e) = try await perform(.scan(partition: p, prefix: prefix, limit: limit)) else { throw Self.protocolError }
                    return e
                }
            }
            var merged: [(String, [UInt8])] = []
            for try await part in group { merged += part }
            return merged
        }
        return all.sorted { $0.0 < $1.0 }.prefix(max(0, limit)).map { KVEntry(key: $0.0, value: Data($0.1)) }
    }

    static let starting = SkeinError(code: 503, what: "starting", message: "the node is still starting replication; retry")
    static let protocolError = SkeinError(code: 502, what: "bad_peer_answer", message: "a peer answered a key-value request with the wrong kind of result")

    /// How long a request waits for replication to start or a partition to have a leader
    /// (an election after a leader died) before it is answered 503.
    static let leaderWait: Duration = .seconds(2)
    /// Errors after which the operation certainly did not happen on this attempt and may be
    /// tried again (the partition moves when its leader's storage fails).
    static let retryable: Set<String> = ["no_leader", "starting", "leader_unreachable", "storage_failed", "storage_full"]

    /// Runs `op` here if this node leads its partition, else forwards it once to the leader;
    /// while replication is starting or the partition has no leader, waits up to
    /// ``leaderWait`` for one. A write whose first attempt may have happened (its leader did
    /// not answer) never ends in a claim that it did not: such an end is `outcome_unknown`.
    func perform(_ op: KVOperation) async throws -> KVResult {
        let deadline = ContinuousClock.now + Self.leaderWait
        var attempts = WriteAttempts(isWrite: op.isWrite, mayHaveHappened: writeMayHaveHappened, key: op.key)
        while true {
            do {
                return try await attempt(op)
            } catch let error as SkeinError {
                switch attempts.failed(error, canRetry: ContinuousClock.now < deadline) {
                case .retry:
                    // Puts and deletes are idempotent: trying again after an unreachable leader is safe.
                    try await Task.sleep(for: .milliseconds(20))
                case .fail(let error):
                    throw error
                }
            }
        }
    }

    private func attempt(_ op: KVOperation) async throws -> KVResult {
        guard let replication = cluster.replication else { throw Self.starting }
        let partition = op.partition(count: replication.partitionCount)
        if let leader = replication.publishedLeader(partition: partition), leader != replication.me {
            // Known to lead elsewhere: straight there, without a turn on the replication actor.
            // (Should it have just moved, that node answers no_leader and this is tried again.)
            return try await KeyValueForwarding.forward(op, to: leader, cluster: cluster, traceparent: traceparent)
        }
        do {
            return try await Self.local(op, partition: partition, replication: replication, store: replication.store)
        } catch ReplicationError.notLeader(_, let leader?) where leader != replication.me {
            return try await KeyValueForwarding.forward(op, to: leader, cluster: cluster, traceparent: traceparent)
        } catch let error as ReplicationError {
            throw Self.skeinError(error, key: op.key)
        }
    }

    /// Runs `op` on this node only: it must lead the partition (and hold the lease to read).
    static func local(_ op: KVOperation, partition: Int, replication: Replication, store: PartitionStore) async throws -> KVResult {
        switch op {
        case .get(let key):
            try await readable(partition, key: key, replication: replication)
            return .value(try await store.value(for: key, partition: partition))
        case .scan(_, let prefix, let limit):
            try await readable(partition, key: prefix, replication: replication)
            return .entries(try await store.scan(partition: partition, prefix: prefix, limit: limit))
        case .put(let key, let value):
            // Answered once committed (durable on a majority): a put's apply cannot refuse it,
            // and reads wait until it is applied (readPermissionCaughtUp).
            _ = try await replication.propose(.put(key: key, value: value), partition: partition, answer: .committed)
            return .done(existed: true)
        case .delete(let key):
            let applied = try await replication.propose(.delete(key: key), partition: partition)
            return .done(existed: applied.existed)
        }
    }

    /// Waits until this node may serve a read of `partition` that sees every acknowledged
    /// write (``Replication/readPermissionCaughtUp(partition:)``). A wait that runs out is a
    /// read that could not be served, not a write of unknown outcome.
    static func readable(_ partition: Int, key: String, replication: Replication) async throws {
        do {
            try await replication.readPermissionCaughtUp(partition: partition)
        } catch ReplicationError.timedOut(let p) {
            throw SkeinError(code: 503, what: "read_timed_out", key: key,
                             message: "partition \(p) did not apply its acknowledged writes in time to serve this read; retry")
        }
    }

    static func skeinError(_ error: ReplicationError, key: String) -> SkeinError {
        switch error {
        case .notLeader(let p, _):
            SkeinError(code: 503, what: "no_leader", key: key, message: "partition \(p) has no leader right now; retry shortly")
        case .lost(let p):
            SkeinError(code: 503, what: "not_committed", key: key, message: "partition \(p) changed leader before the write committed; it did not happen, retry")
        case .timedOut(let p):
            SkeinError(code: 504, what: "outcome_unknown", key: key, message: "partition \(p) did not commit in time; the write may or may not have happened")
        case .conflict(let p, let k):
            SkeinError(code: 409, what: "conflict", key: key, message: "\(k) in partition \(p) changed meanwhile; nothing was written")
        case .storageFailed(let p, let why, let full):
            full ? SkeinError(code: 507, what: "storage_full", key: key,
                              message: "the disk is full where partition \(p) leads (\(why)); nothing acknowledged is lost; free space there, or retry once another node leads")
                : SkeinError(code: 503, what: "storage_failed", key: key,
                             message: "partition \(p)'s storage failed where it leads (\(why)); nothing acknowledged is lost; retry shortly")
        }
    }
}

/// A key-value request as it crosses the peer port.
enum KVOperation: Sendable {
    case get(key: String)
    case put(key: String, value: [UInt8])
    case delete(key: String)
    case scan(partition: Int, prefix: String, limit: Int)

    var isWrite: Bool {
        switch self {
        case .put, .delete: true
        case .get, .scan: false
        }
    }

    var key: String {
        switch self {
        case .get(let k), .put(let k, _), .delete(let k): k
        case .scan(_, let prefix, _): prefix
        }
    }

    func partition(count: Int) -> Int {
        if case .scan(let p, _, _) = self { return p }
        return Partitioning.partition(of: key, count: count)
    }

    func encode() -> [UInt8] {
        var w = WireWriter()
        switch self {
        case .get(let key): w.byte(1); w.string(key, max: 1 << 16)
        case .put(let key, let value): w.byte(2); w.string(key, max: 1 << 16); w.blob(value)
        case .delete(let key): w.byte(3); w.string(key, max: 1 << 16)
        case .scan(let p, let prefix, let limit): w.byte(4); w.varint(UInt64(p)); w.string(prefix, max: 1 << 16); w.varint(UInt64(max(0, limit)))
        }
        return w.bytes
    }

    static func decode(_ bytes: [UInt8]) throws(WireError) -> KVOperation {
        var r = WireReader(bytes: bytes)
        let op: KVOperation
        switch try r.byte("op") {
        case 1: op = .get(key: try r.string("key", max: 1 << 16))
        case 2: op = .put(key: try r.string("key", max: 1 << 16), value: try r.blob("value", max: RaftCodec.maxPayload))
        case 3: op = .delete(key: try r.string("key", max: 1 << 16))
        case 4: op = .scan(partition: try r.count("partition", max: 4095), prefix: try r.string("prefix", max: 1 << 16), limit: try r.count("limit", max: 1 << 20))
        case let other: throw WireError("unknown key-value op \(other)")
        }
        guard r.atEnd else { throw WireError("trailing bytes") }
        return op
    }
}

enum KVResult: Sendable {
    case value([UInt8]?)
    case done(existed: Bool)
    case entries([(String, [UInt8])])
}

/// Key-value operations forwarded by another node to this partition leader: calls on the
/// peer call stream (``PeerCalls``) with the route `/v1/peer/kv`. Served here only (never
/// forwarded again). The call's body is `traceparent · op`; the answer `0 · result` or
/// `1 · code · what · message`.
enum KeyValueForwarding {
    static let path = "/v1/peer/kv"

    static func forward(_ op: KVOperation, to leader: RaftNodeID, cluster: ClusterHandle, traceparent: String?) async throws -> KVResult {
        let answer: PeerAnswer
        do {
            answer = try await cluster.peers.connection(to: leader).call(route: path, body: callBody(op, traceparent: traceparent))
        } catch {
            throw unreachable(leader, error, key: op.key)
        }
        return try result(of: answer, op: op, leader: leader)
    }

    /// Forwards `op` to `leader` without a task to wait in, when this node's call stream to it
    /// is open (false, and nothing sent, when it is not): `done` gets the result, or the error
    /// the leader answered, on the stream's event loop. For requests read on an event loop;
    /// one that fails with a retryable error goes on in ``ReplicatedKeyValueStore/perform(_:)``.
    static func forwardWithoutTask(_ op: KVOperation, to leader: RaftNodeID, cluster: ClusterHandle, traceparent: String?,
                                   done: @escaping @Sendable (Result<KVResult, SkeinError>) -> Void) -> Bool {
        guard let connection = try? cluster.peers.connection(to: leader), let stream = connection.currentCallStream, stream.isOpen else {
            return false
        }
        stream.call(route: path, body: callBody(op, traceparent: traceparent), timeout: connection.callTimeout) { answer in
            do {
                switch answer {
                case .success(let answer): done(.success(try result(of: answer, op: op, leader: leader)))
                case .failure(let error): throw unreachable(leader, error, key: op.key)
                }
            } catch let error as SkeinError {
                done(.failure(error))
            } catch {
                done(.failure(SkeinError(code: 500, what: "internal", key: op.key, message: "\(error)")))
            }
        }
        return true
    }

    /// A forwarded call's body: `traceparent · op`.
    static func callBody(_ op: KVOperation, traceparent: String?) -> [UInt8] {
        var w = WireWriter()
        w.string(traceparent ?? "")
        w.blob(op.encode())
        return w.bytes
    }

    static func unreachable(_ leader: RaftNodeID, _ error: any Error, key: String) -> SkeinError {
        SkeinError(code: 503, what: "leader_unreachable", key: key,
                   message: "the leader of this key's partition (\(leader)) did not answer: \(error); retry")
    }

    static func result(of answer: PeerAnswer, op: KVOperation, leader: RaftNodeID) throws -> KVResult {
        guard answer.status == 200 else {
            throw SkeinError(code: 502, what: "bad_peer_answer", key: op.key, message: "the partition leader \(leader) answered \(answer.status)")
        }
        return try decodeAnswer(answer.body, op: op, leader: leader)
    }

    static func decodeAnswer(_ bytes: [UInt8], op: KVOperation, leader: RaftNodeID) throws -> KVResult {
        var r = WireReader(bytes: bytes)
        do {
            if try r.byte("status") == 1 {
                let code = Int(try r.varint("code"))
                throw SkeinError(code: code, what: try r.string("what"), key: op.key, message: try r.string("message", max: 1 << 16))
            }
            switch try r.byte("kind") {
            case 1: return .value(try r.bool("present") ? try r.blob("value", max: RaftCodec.maxPayload) : nil)
            case 2: return .done(existed: try r.bool("existed"))
            case 3:
                let n = try r.count("entries", max: 1 << 20)
                var entries: [(String, [UInt8])] = []
                for _ in 0..<n { entries.append((try r.string("key", max: 1 << 16), try r.blob("value", max: RaftCodec.maxPayload))) }
                return .entries(entries)
            case let other: throw WireError("unknown result kind \(other)")
            }
        } catch let error as WireError {
            throw SkeinError(code: 502, what: "bad_peer_answer", key: op.key, message: "malformed answer from \(leader): \(error)")
        }
    }

    /// One forwarded operation, run here: its answer's bytes.
    static func serve(_ body: [UInt8], cluster: ClusterHandle) async -> [UInt8] {
        let op: KVOperation
        do {
            var r = WireReader(bytes: body)
            _ = try r.string("traceparent")
            op = try KVOperation.decode(try r.blob("operation", max: RaftCodec.maxPayload + (1 << 17)))
            guard r.atEnd else { throw WireError("trailing bytes") }
        } catch {
            var w = WireWriter()
            w.byte(1); w.varint(400); w.string("bad_peer_request"); w.string("malformed key-value request: \(error)", max: 1 << 16)
            return w.bytes
        }
        return await answer(op, cluster: cluster)
    }

    static func answer(_ op: KVOperation, cluster: ClusterHandle) async -> [UInt8] {
        do {
            guard let replication = cluster.replication else { throw ReplicatedKeyValueStore.starting }
            let result = try await ReplicatedKeyValueStore.local(op, partition: op.partition(count: replication.partitionCount),
                                                                 replication: replication, store: replication.store)
            return encodeAnswer(.success(result), key: op.key)
        } catch {
            return encodeAnswer(.failure(error), key: op.key)
        }
    }

    /// The write a forwarded call asks for (a put or a delete), or nil for anything else,
    /// which ``serve(_:cluster:)`` answers (a read, or a malformed call).
    static func write(in body: [UInt8]) -> KVOperation? {
        var r = WireReader(bytes: body)
        guard (try? r.string("traceparent")) != nil, let bytes = try? r.blob("operation", max: RaftCodec.maxPayload + (1 << 17)), r.atEnd,
              let op = try? KVOperation.decode(bytes) else { return nil }
        switch op {
        case .put, .delete: return op
        case .get, .scan: return nil
        }
    }

    /// The forwarded writes of one call frame, handed to the replication actor together
    /// (``Replication/submit(_:)``), without waiting; each answer goes to `answer` (with its
    /// call's id) as soon as its entry is committed (a put) or applied (a delete, whose answer
    /// says whether the key was there).
    static func serve(writes: [(id: UInt64, op: KVOperation)], cluster: ClusterHandle,
                      answer: @escaping @Sendable (UInt64, [UInt8]) -> Void) {
        guard let replication = cluster.replication else {
            for w in writes { answer(w.id, encodeAnswer(.failure(ReplicatedKeyValueStore.starting), key: w.op.key)) }
            return
        }
        let count = replication.partitionCount
        var commands: [(command: PartitionCommand, partition: Int, atCommit: Bool)] = []
        commands.reserveCapacity(writes.count)
        for w in writes {
            switch w.op {
            case .put(let key, let value): commands.append((.put(key: key, value: value), w.op.partition(count: count), true))
            case .delete(let key): commands.append((.delete(key: key), w.op.partition(count: count), false))
            case .get, .scan: preconditionFailure("only writes are proposed together")
            }
        }
        replication.submit(.proposals(commands) { i, result in
            let w = writes[i]
            let isDelete = if case .delete = w.op { true } else { false }
            answer(w.id, encodeAnswer(result.map { .done(existed: isDelete ? $0.existed : true) }.mapError { $0 as any Error }, key: w.op.key))
        })
    }

    /// An answer's bytes: `0 · result`, or `1 · code · what · message`.
    static func encodeAnswer(_ result: Result<KVResult, any Error>, key: String) -> [UInt8] {
        var w = WireWriter()
        switch result {
        case .success(let result):
            w.byte(0)
            switch result {
            case .value(let v):
                w.byte(1)
                if let v { w.byte(1); w.blob(v) } else { w.byte(0) }
            case .done(let existed):
                w.byte(2); w.byte(existed ? 1 : 0)
            case .entries(let entries):
                w.byte(3); w.varint(UInt64(entries.count))
                for (k, v) in entries { w.string(k, max: 1 << 16); w.blob(v) }
            }
        case .failure(let error):
            let e: SkeinError = switch error {
            case let e as SkeinError: e
            case let e as ReplicationError: ReplicatedKeyValueStore.skeinError(e, key: key)
            default: SkeinError(code: 500, what: "internal", message: "\(error)")
            }
            w.byte(1); w.varint(UInt64(e.code)); w.string(e.what); w.string(e.message, max: 1 << 16)
        }
        return w.bytes
    }
}


/// What the attempts of one key-value request so far allow to be said of it. A write whose
/// leader did not answer may have happened; after that, no later attempt can prove it did
/// not, so the request never ends in `not_committed` (or `no_leader`): it ends in
/// `outcome_unknown` (504), unless an attempt succeeds.
struct WriteAttempts {
    let isWrite: Bool
    private(set) var mayHaveHappened: Bool
    let key: String

    enum Next: Equatable {
        case retry
        case fail(SkeinError)
    }

    init(isWrite: Bool, mayHaveHappened: Bool = false, key: String) {
        self.isWrite = isWrite
        self.mayHaveHappened = isWrite && mayHaveHappened
        self.key = key
    }

    /// An attempt failed with `error`; `canRetry` while the request's wait lasts.
    mutating func failed(_ error: SkeinError, canRetry: Bool) -> Next {
        if isWrite, error.what == "leader_unreachable" { mayHaveHappened = true }
        if ReplicatedKeyValueStore.retryable.contains(error.what), canRetry { return .retry }
        if mayHaveHappened, error.what != "outcome_unknown", error.code >= 500 {
            return .fail(SkeinError(code: 504, what: "outcome_unknown", key: key,
                                    message: "an earlier attempt reached a leader that did not answer, so the write may or may not have happened (last attempt: \(error.message))"))
        }
        return .fail(error)
    }
}
