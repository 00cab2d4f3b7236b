public import Foundation
import GRDB
import Synchronization
public import SkeinCluster

/// The replicated log's storage, in the node's one SQLite database: per partition the Raft
/// log, its durable state (term, vote, commit), its snapshot point, the tables materialized by
/// applying committed entries (key-value pairs, workflow instances), and the chunks of a
/// snapshot being received.
///
/// Every write goes through the database's one writer queue, in the order asked: a group
/// commit (``commit(_:done:)``), a staged chunk, a discarded transfer, a reload. So a
/// compaction, a snapshot install and the writes around them can never interleave.
///
/// A group commit is one transaction, one fsync (`synchronous=FULL`), for every partition's
/// share (a commit that only applies entries skips the fsync: the log it applies from is
/// durable already). Each share runs in a savepoint: a share that fails is rolled back alone
/// and reported, the others commit. An entry applies only if it is the next index and its
/// epoch is not older than the last applied one.
public final class PartitionStore: Sendable {
    public let database: NodeDatabase
    public let partitions: Int
    /// Partitions whose `raft_state` row is known to exist (written by a transaction that
    /// committed), so the group commit need not ask for it again on every write.
    private let stateRows = Mutex<Set<Int>>([])
    /// Views pinned for snapshots being sent: each its own read transaction.
    private let views = Mutex<(next: SnapshotViewID, open: [SnapshotViewID: SnapshotView])>((1, [:]))
    /// A test hook, not a setting: with `SKEIN_TEST_SLOW_COMMIT_MS` in the environment, every
    /// fsynced group commit is held that long before it commits, as on a slow disk, which
    /// widens the windows the real-process tests look into (an entry acknowledged at commit
    /// and not yet applied, say).
    private let slowCommitMicros: UInt32 = ProcessInfo.processInfo.environment["SKEIN_TEST_SLOW_COMMIT_MS"]
        .flatMap { UInt32($0) }.map { min($0, 10_000) * 1000 } ?? 0
    /// A test hook, not a setting: `SKEIN_TEST_CRASH_AT=compact|install|stage` kills the
    /// process (SIGKILL) inside the transaction doing that, before it commits, so a test can
    /// restart the node from the state such a crash leaves.
    let crashPoint: CrashPoint? = ProcessInfo.processInfo.environment["SKEIN_TEST_CRASH_AT"].flatMap(CrashPoint.init(rawValue:))

    enum CrashPoint: String { case compact, install, stage }

    struct SnapshotView: Sendable {
        let partition: Int
        let reader: DatabaseSnapshot
    }

    /// Opens the tables, checks the partition count against the one stored at creation, and
    /// drops what a transfer interrupted by the last stop had staged.
    public init(database: NodeDatabase, partitions: Int) throws(StoreError) {
        self.database = database
        self.partitions = partitions
        do {
            try database.pool.write { db in
                if let stored = try Int.fetchOne(db, sql: "SELECT value FROM raft_meta WHERE key = 'partitions'") {
                    guard stored == partitions else {
                        throw StoreError.partitionMismatch(stored: stored, asked: partitions, path: database.path)
                    }
                } else {
                    try db.execute(sql: "INSERT INTO raft_meta (key, value) VALUES ('partitions', ?)", arguments: [partitions])
                }
                try db.execute(sql: "DELETE FROM raft_snapshot_chunks")
            }
        } catch let error as StoreError {
            throw error
        } catch {
            throw StoreError.unusableDirectory(database.path, "cannot read the partition log (\(NodeDatabase.reason(error)))")
        }
    }

    /// What a partition's Raft group restarts from. A partition never written starts empty
    /// with `configuration`.
    public func load(partition: Int, configuration: RaftConfiguration) throws -> RaftStoredState {
        let state = try database.pool.write { db in try Self.loadState(db, partition: partition, configuration: configuration) }
        stateRows.withLock { _ = $0.insert(partition) }
        return state
    }

    /// ``load(partition:configuration:)`` on the writer queue, in order with the writes before
    /// it, for a partition that restarts after a fault (its configuration is stored by then).
    public func load(partition: Int, done: @escaping @Sendable (Result<RaftStoredState, StorageFault>) -> Void) {
        database.pool.asyncWriteWithoutTransaction { db in
            done(Result { try Self.loadState(db, partition: partition, configuration: RaftConfiguration(voters: [])) }.mapError(Self.fault))
        }
    }

    static func loadState(_ db: Database, partition: Int, configuration: RaftConfiguration) throws -> RaftStoredState {
        // The configuration a partition starts from is written down at its first start, so
        // every later start (with whatever --seeds) agrees with what the others hold at index 0.
        try ensureState(db, partition)
        try db.execute(sql: "UPDATE raft_state SET snapshot_config = ? WHERE partition = ? AND snapshot_config IS NULL",
                       arguments: [Data(RaftConfigurationCodec.encode(configuration)), partition])
        guard let row = try Row.fetchOne(db, sql: "SELECT * FROM raft_state WHERE partition = ?", arguments: [partition]) else {
            return .fresh(configuration)
        }
        let hard = RaftHardState(term: UInt64(row["term"] as Int64), vote: row["vote"], commit: UInt64(row["commit_index"] as Int64))
        let snapshotConfiguration = (row["snapshot_config"] as Data?).flatMap { RaftConfigurationCodec.decode(Array($0)) } ?? configuration
        let snapshot = RaftSnapshotMeta(index: UInt64(row["snapshot_index"] as Int64), term: UInt64(row["snapshot_term"] as Int64),
                                        configuration: snapshotConfiguration)
        let entries = try Row.fetchAll(db, sql: "SELECT idx, term, kind, data FROM raft_log WHERE partition = ? AND idx > ? ORDER BY idx",
                                       arguments: [partition, Int64(snapshot.index)]).map { r in
            RaftEntry(index: UInt64(r["idx"] as Int64), term: UInt64(r["term"] as Int64),
                      kind: RaftEntry.Kind(rawValue: UInt8(r["kind"] as Int64)) ?? .noop, data: Array(r["data"] as Data))
        }
        return RaftStoredState(hardState: hard, snapshot: snapshot, entries: entries, applied: UInt64(row["applied_index"] as Int64))
    }

    // MARK: - The group commit

    /// Persists and applies one group commit, then hands its outcome to `done` on the
    /// database's writer thread. No task stands in between: the caller (on its event loop,
    /// say) is one thread hop from the writer each way, with none through the cooperative
    /// pool. Measured against a task awaiting the write, ten pairs: ×1.068 writes/s, ×0.936
    /// CPU per write.
    public func commit(_ writes: [PartitionWrite], done: @escaping @Sendable (GroupCommitOutcome) -> Void) {
        database.pool.asyncWriteWithoutTransaction { db in
            done(self.commit(writes, in: db))
        }
    }

    func commit(_ writes: [PartitionWrite], in db: Database) -> GroupCommitOutcome {
        let sync = writes.contains(where: \.mustSync)
        let known = stateRows.withLock { $0 }
        var outcome = GroupCommitOutcome()
        do {
            // A write that only applies entries and moves commit indexes skips the fsync: losing
            // it to a power cut only means re-applying from the (durable) log. The WAL keeps
            // transactions in order, so a later fsynced one makes this one durable too.
            if !sync { try db.cachedStatement(sql: "PRAGMA synchronous = OFF").run() }
            defer { if !sync { try? db.cachedStatement(sql: "PRAGMA synchronous = FULL").run() } }
            if sync, slowCommitMicros > 0 { usleep(slowCommitMicros) }
            try db.inTransaction {
                for w in writes {
                    do {
                        try db.inSavepoint {
                            if !known.contains(w.partition) { try Self.ensureState(db, w.partition) }
                            try self.persist(w, in: db)
                            // A view pins the state before this write's entries apply: they apply below.
                            if !w.openView, !w.committed.isEmpty {
                                outcome.applied += try Self.apply(db, partition: w.partition, entries: w.committed)
                            }
                            return .commit
                        }
                    } catch {
                        // SQLite rolls the whole transaction back on some errors (a full disk,
                        // an I/O error): then every share failed, for this reason.
                        guard db.isInsideTransaction else { throw error }
                        outcome.failed[w.partition] = Self.fault(error)
                    }
                }
                return .commit
            }
        } catch {
            return .allFailed(writes, Self.fault(error))
        }
        if writes.contains(where: { !known.contains($0.partition) }) {
            stateRows.withLock { for w in writes where outcome.failed[w.partition] == nil { $0.insert(w.partition) } }
        }
        let viewing = writes.filter { $0.openView && outcome.failed[$0.partition] == nil }
        guard !viewing.isEmpty else { return outcome }
        for w in viewing {
            do {
                outcome.views[w.partition] = try openView(partition: w.partition)
            } catch {
                outcome.failed[w.partition] = Self.fault(error)
            }
        }
        // The entries held back for the views apply now, without an fsync of their own.
        do {
            try db.cachedStatement(sql: "PRAGMA synchronous = OFF").run()
            defer { try? db.cachedStatement(sql: "PRAGMA synchronous = FULL").run() }
            try db.inTransaction {
                for w in viewing where outcome.failed[w.partition] == nil && !w.committed.isEmpty {
                    do {
                        try db.inSavepoint {
                            outcome.applied += try Self.apply(db, partition: w.partition, entries: w.committed)
                            return .commit
                        }
                    } catch {
                        guard db.isInsideTransaction else { throw error }
                        outcome.failed[w.partition] = Self.fault(error)
                    }
                }
                return .commit
            }
        } catch {
            for w in viewing { outcome.failed[w.partition] = Self.fault(error) }
        }
        for w in viewing where outcome.failed[w.partition] != nil {
            if let view = outcome.views.removeValue(forKey: w.partition) { closeView(view) }
            outcome.applied.removeAll { $0.partition == w.partition }
        }
        return outcome
    }

    /// One partition's share, up to (not including) its applies.
    private func persist(_ w: PartitionWrite, in db: Database) throws {
        if let h = w.hardState {
            try db.cachedStatement(sql: "UPDATE raft_state SET term = ?, vote = ?, commit_index = ? WHERE partition = ?")
                .run(.int(Int64(h.term)), h.vote.map { .text($0) } ?? .null, .int(Int64(h.commit)), .int(Int64(w.partition)))
        }
        if let meta = w.installSnapshot {
            try Self.installStaged(db, partition: w.partition, meta: meta)
            if crashPoint == .install { Self.crash() }
        }
        if let first = w.entries.first?.index {
            try db.cachedStatement(sql: "DELETE FROM raft_log WHERE partition = ? AND idx >= ?").run(.int(Int64(w.partition)), .int(Int64(first)))
            let insert = try db.cachedStatement(sql: "INSERT INTO raft_log (partition, idx, term, kind, data) VALUES (?, ?, ?, ?, ?)")
            for e in w.entries {
                try insert.run(.int(Int64(w.partition)), .int(Int64(e.index)), .int(Int64(e.term)), .int(Int64(e.kind.rawValue)), .blob(e.data))
            }
        }
        if let meta = w.compactTo {
            try db.cachedStatement(sql: "UPDATE raft_state SET snapshot_index = ?, snapshot_term = ?, snapshot_config = ? WHERE partition = ?")
                .run(.int(Int64(meta.index)), .int(Int64(meta.term)), .blob(RaftConfigurationCodec.encode(meta.configuration)), .int(Int64(w.partition)))
            try db.cachedStatement(sql: "DELETE FROM raft_log WHERE partition = ? AND idx <= ?").run(.int(Int64(w.partition)), .int(Int64(meta.index)))
            if crashPoint == .compact { Self.crash() }
        }
    }

    static func crash() {
        kill(getpid(), SIGKILL)
        while true { pause() }
    }

    static func fault(_ error: any Error) -> StorageFault {
        if let db = error as? DatabaseError {
            let full = db.resultCode == .SQLITE_FULL || db.extendedResultCode == .SQLITE_FULL
            return StorageFault("\(db.resultCode): \(db.message ?? "")", diskFull: full)
        }
        if let fault = error as? StorageFault { return fault }
        return StorageFault("\(error)")
    }

    // MARK: - Snapshots

    /// A read view of the database as it is now (outside any transaction, on the writer queue).
    private func openView(partition: Int) throws -> SnapshotViewID {
        let reader = try database.pool.makeSnapshot()
        return views.withLock { v in
            let id = v.next
            v.next += 1
            v.open[id] = SnapshotView(partition: partition, reader: reader)
            return id
        }
    }

    public func closeView(_ id: SnapshotViewID) {
        // The view's read transaction ends when its last reference goes (a read in flight holds one).
        _ = views.withLock { $0.open.removeValue(forKey: id) }
    }

    /// The number of views open, for tests.
    public var openViews: Int { views.withLock { $0.open.count } }

    /// The chunk of `view` starting at `cursor`, read on the view's own connection.
    public func readChunk(view id: SnapshotViewID, cursor: [UInt8], maxBytes: Int,
                          done: @escaping @Sendable (Result<SnapshotChunkRead, StorageFault>) -> Void) {
        guard let view = views.withLock({ $0.open[id] }) else {
            done(.failure(StorageFault("snapshot view \(id) is closed")))
            return
        }
        view.reader.asyncRead { result in
            done(Result {
                let db = try result.get()
                return try SnapshotChunks.read(db, partition: view.partition, cursor: cursor, maxBytes: maxBytes)
            }.mapError(Self.fault))
        }
    }

    /// Stages chunk `sequence` of a snapshot being received (0 drops what was staged before),
    /// without an fsync: the install's fsync later covers it, and a crash before that starts
    /// the transfer over anyway.
    public func stageChunk(partition: Int, sequence: Int, data: [UInt8], done: @escaping @Sendable (Result<Void, StorageFault>) -> Void) {
        database.pool.asyncWriteWithoutTransaction { db in
            done(Result {
                try db.cachedStatement(sql: "PRAGMA synchronous = OFF").run()
                defer { try? db.cachedStatement(sql: "PRAGMA synchronous = FULL").run() }
                try db.inTransaction {
                    if sequence == 0 {
                        try db.cachedStatement(sql: "DELETE FROM raft_snapshot_chunks WHERE partition = ?").run(.int(Int64(partition)))
                    }
                    try db.cachedStatement(sql: "INSERT OR REPLACE INTO raft_snapshot_chunks (partition, seq, data) VALUES (?, ?, ?)")
                        .run(.int(Int64(partition)), .int(Int64(sequence)), .blob(data))
                    if self.crashPoint == .stage, sequence > 0 { Self.crash() }
                    return .commit
                }
            }.mapError(Self.fault))
        }
    }

    public func discardStaged(partition: Int) {
        database.pool.asyncWriteWithoutTransaction { db in
            try? db.execute(sql: "DELETE FROM raft_snapshot_chunks WHERE partition = ?", arguments: [partition])
        }
    }

    /// The chunks staged for `partition`, for tests.
    public func stagedChunks(partition: Int) throws -> Int {
        try database.pool.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM raft_snapshot_chunks WHERE partition = ?", arguments: [partition]) ?? 0 }
    }

    // MARK: - Reads

    /// A workflow instance as applied here: its state JSON, the epoch that last changed it.
    public struct StoredInstance: Sendable {
        public var id: String
        public var status: String
        public var wakeAt: Int64?
        public var version: UInt64
        public var epoch: UInt64
        public var state: [UInt8]
    }

    public func instance(_ id: String) async throws -> StoredInstance? {
        try await database.pool.read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM wf_instances WHERE id = ?", arguments: [id]).map(Self.storedInstance)
        }
    }

    /// The instances of `partition`, unfinished ones only when `unfinished`, or those with
    /// `status`; at most `limit`, by id.
    public func instances(partition: Int, unfinished: Bool = false, status: String? = nil, limit: Int = Int.max) async throws -> [StoredInstance] {
        try await database.pool.read { db in
            var sql = "SELECT * FROM wf_instances WHERE partition = ?"
            var arguments: StatementArguments = [partition]
            if unfinished { sql += " AND status NOT IN ('completed', 'failed', 'cancelled')" }
            if let status {
                sql += " AND status = ?"
                arguments += [status]
            }
            sql += " ORDER BY id LIMIT ?"
            arguments += [Int64(min(limit, Int(Int64.max)))]
            return try Row.fetchAll(db, sql: sql, arguments: arguments).map(Self.storedInstance)
        }
    }

    /// An instance's timeline lines (JSON objects), oldest first.
    public func timeline(_ id: String) async throws -> [[UInt8]] {
        try await database.pool.read { db in
            try Data.fetchAll(db, sql: "SELECT entry FROM wf_timeline WHERE instance = ? ORDER BY seq", arguments: [id]).map { Array($0) }
        }
    }

    static func storedInstance(_ row: Row) -> StoredInstance {
        StoredInstance(id: row["id"], status: row["status"], wakeAt: row["wake_at"], version: UInt64(row["version"] as Int64),
                       epoch: UInt64(row["epoch"] as Int64), state: Array(row["state"] as Data))
    }

    /// A key's value in the materialized table of its partition (what this node has applied).
    public func value(for key: String, partition: Int) async throws -> [UInt8]? {
        try await database.pool.read { db in
            try Data.fetchOne(db, sql: "SELECT value FROM rkv WHERE partition = ? AND key = ?", arguments: [partition, key]).map { Array($0) }
        }
    }

    /// Keys of `partition` starting with `prefix`, in key order.
    public func scan(partition: Int, prefix: String, limit: Int) async throws -> [(String, [UInt8])] {
        try await database.pool.read { db in
            try Row.fetchAll(db, sql: "SELECT key, value FROM rkv WHERE partition = ? AND key >= ? AND key < ? ORDER BY key LIMIT ?",
                             arguments: [partition, prefix, KeyValueLimits.upperBound(of: prefix), max(0, limit)])
                .map { ($0["key"], Array($0["value"] as Data)) }
        }
    }

    static func ensureState(_ db: Database, _ partition: Int) throws {
        try db.cachedStatement(sql: "INSERT OR IGNORE INTO raft_state (partition) VALUES (?)").run(.int(Int64(partition)))
    }
}

public enum PartitionStoreError: Error, Sendable, CustomStringConvertible {
    case applyOutOfOrder(partition: Int, index: UInt64, applied: UInt64)
    case staleEpoch(partition: Int, index: UInt64, epoch: UInt64, applied: UInt64)
    case incompleteSnapshot(partition: Int, why: String)

    public var description: String {
        switch self {
        case .applyOutOfOrder(let p, let i, let a): "partition \(p): entry \(i) applied out of order (applied index is \(a))"
        case .staleEpoch(let p, let i, let e, let a): "partition \(p): entry \(i) of epoch \(e) is older than applied epoch \(a); refused"
        case .incompleteSnapshot(let p, let why): "partition \(p): the staged snapshot cannot be installed: \(why)"
        }
    }
}
