import Foundation
import GRDB
import SkeinCluster

/// Applying committed entries to the tables they materialize, inside the group commit.
extension PartitionStore {
    /// Writes an instance change unless it conflicts (writing nothing then). Returns whether
    /// it applied, and the instance's version after (as found, when refused; 0 when absent).
    static func applyInstance(_ db: Database, partition: Int, epoch: UInt64, _ c: InstanceChange) throws -> (applied: Bool, version: UInt64) {
        let current = try db.cachedStatement(sql: "SELECT version FROM wf_instances WHERE id = ?").integers(.text(c.id), count: 1)?[0]
        if c.replace {
            if current != nil {
                try db.cachedStatement(sql: "DELETE FROM wf_results WHERE instance = ?").execute(arguments: [c.id])
                try db.cachedStatement(sql: "DELETE FROM wf_timeline WHERE instance = ?").execute(arguments: [c.id])
            }
        } else if c.baseVersion == 0 ? current != nil : current.map({ UInt64($0) }) != c.baseVersion {
            return (false, current.map { UInt64($0) } ?? 0)
        }
        try db.cachedStatement(sql: """
            INSERT INTO wf_instances (id, partition, workflow, status, wake_at, version, epoch, state, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT(id) DO UPDATE SET partition = excluded.partition, workflow = excluded.workflow, status = excluded.status,
                wake_at = excluded.wake_at, version = excluded.version, epoch = excluded.epoch, state = excluded.state, updated_at = excluded.updated_at
            """).run(.text(c.id), .int(Int64(partition)), .text(c.workflow), .text(c.status), c.wakeAt.map { .int($0) } ?? .null,
                     .int(Int64(c.version)), .int(Int64(epoch)), .blob(c.state), .int(Int64(Date().timeIntervalSince1970 * 1000)))
        let result = try db.cachedStatement(sql: "INSERT OR REPLACE INTO wf_results (instance, key, partition, value) VALUES (?, ?, ?, ?)")
        for (key, value) in c.results { try result.run(.text(c.id), .text(key), .int(Int64(partition)), .blob(value)) }
        try appendTimeline(db, partition: partition, instance: c.id, c.timeline)
        return (true, c.version)
    }

    static func appendTimeline(_ db: Database, partition: Int, instance: String, _ lines: [[UInt8]]) throws {
        let insert = try db.cachedStatement(sql: "INSERT INTO wf_timeline (instance, partition, entry) VALUES (?, ?, ?)")
        for line in lines { try insert.run(.text(instance), .int(Int64(partition)), .blob(line)) }
    }

    static func apply(_ db: Database, partition: Int, entries: [RaftEntry]) throws -> [AppliedEntry] {
        guard let row = try db.cachedStatement(sql: "SELECT applied_index, applied_term FROM raft_state WHERE partition = ?").integers(.int(Int64(partition)), count: 2) else {
            throw PartitionStoreError.applyOutOfOrder(partition: partition, index: entries[0].index, applied: 0)
        }
        var appliedIndex = UInt64(row[0])
        var appliedTerm = UInt64(row[1])
        var results: [AppliedEntry] = []
        let put = try db.cachedStatement(sql: "INSERT INTO rkv (key, partition, value) VALUES (?, ?, ?) ON CONFLICT(partition, key) DO UPDATE SET value = excluded.value")
        let delete = try db.cachedStatement(sql: "DELETE FROM rkv WHERE partition = ? AND key = ?")
        for e in entries {
            guard e.index == appliedIndex + 1 else {
                throw PartitionStoreError.applyOutOfOrder(partition: partition, index: e.index, applied: appliedIndex)
            }
            // Fencing: an entry of an epoch older than one already applied is a deposed
            // leader's, and can never be applied after it.
            guard e.term >= appliedTerm else {
                throw PartitionStoreError.staleEpoch(partition: partition, index: e.index, epoch: e.term, applied: appliedTerm)
            }
            var existed = false
            var conflict = false
            var key: String?
            var version: UInt64 = 0
            if e.kind == .command, let command = PartitionCommand.decode(e.data) {
                switch command {
                case .put(let key, let value):
                    try put.run(.text(key), .int(Int64(partition)), .blob(value))
                case .delete(let key):
                    try delete.run(.int(Int64(partition)), .text(key))
                    existed = db.changesCount > 0
                case .instance(let change):
                    let outcome = try applyInstance(db, partition: partition, epoch: e.term, change)
                    conflict = !outcome.applied
                    key = change.id
                    version = outcome.version
                case .timelines(let batches):
                    for b in batches where try db.cachedStatement(sql: "SELECT version FROM wf_instances WHERE id = ?").integers(.text(b.instance), count: 1) != nil {
                        try appendTimeline(db, partition: partition, instance: b.instance, b.entries)
                    }
                }
            }
            appliedIndex = e.index
            appliedTerm = e.term
            results.append(AppliedEntry(partition: partition, index: e.index, term: e.term, existed: existed, conflict: conflict, key: key, version: version))
        }
        try db.cachedStatement(sql: "UPDATE raft_state SET applied_index = ?, applied_term = ? WHERE partition = ?")
            .run(.int(Int64(appliedIndex)), .int(Int64(appliedTerm)), .int(Int64(partition)))
        return results
    }
}
