import Foundation
import GRDB
import SkeinCluster

/// A partition's state machine as snapshot chunks: its key-value pairs, then its workflow
/// instances, their task results and their timeline lines, each table in key order, as
/// records `tag · fields` of about ``HostConfig/chunkBytes`` a chunk (at least one record).
/// A cursor says where the next chunk starts: `tag · the last key read` (`[]`: the start).
/// Reading walks the indexes by partition, so each chunk costs what it holds, whatever the
/// partition's size; installing reads the staged chunks one at a time, so neither side ever
/// holds more than a chunk.
enum SnapshotChunks {
    enum Table: UInt8 { case keyValue = 1, instances = 2, results = 3, timeline = 4 }
    static let batch = 64

    static func read(_ db: Database, partition: Int, cursor: [UInt8], maxBytes: Int) throws -> SnapshotChunkRead {
        var out = WireWriter()
        var table = Table.keyValue
        var after: Cursor?
        if !cursor.isEmpty {
            var r = WireReader(bytes: cursor)
            guard let t = Table(rawValue: try r.byte("table")) else { throw WireError("unknown snapshot table") }
            table = t
            after = try Cursor.decode(&r, table: t)
        }
        while true {
            let rows = try fetch(db, table: table, partition: partition, after: after)
            for row in rows {
                after = encode(row, table: table, into: &out)
                if out.bytes.count >= maxBytes {
                    var next = WireWriter()
                    next.byte(table.rawValue)
                    after!.encode(&next)
                    return SnapshotChunkRead(data: out.bytes, next: next.bytes)
                }
            }
            if rows.count < batch {
                guard let following = Table(rawValue: table.rawValue + 1) else { return SnapshotChunkRead(data: out.bytes, next: nil) }
                table = following
                after = nil
            }
        }
    }

    /// Where a table's walk stands: the key of the last row read.
    enum Cursor {
        case key(String)
        case pair(String, String)
        case sequence(Int64)

        func encode(_ w: inout WireWriter) {
            switch self {
            case .key(let k): w.string(k, max: 1 << 16)
            case .pair(let a, let b): w.string(a, max: 1 << 16); w.string(b, max: 1 << 16)
            case .sequence(let s): w.zigzag(s)
            }
        }

        static func decode(_ r: inout WireReader, table: Table) throws -> Cursor {
            switch table {
            case .keyValue, .instances: .key(try r.string("cursor key", max: 1 << 16))
            case .results: .pair(try r.string("cursor instance", max: 1 << 16), try r.string("cursor key", max: 1 << 16))
            case .timeline: .sequence(try r.zigzag("cursor sequence"))
            }
        }
    }

    private static func fetch(_ db: Database, table: Table, partition: Int, after: Cursor?) throws -> [Row] {
        let p = Int64(partition)
        switch (table, after) {
        case (.keyValue, .key(let k)?):
            return try Row.fetchAll(db.cachedStatement(sql: "SELECT key, value FROM rkv WHERE partition = ? AND key > ? ORDER BY key LIMIT \(batch)"), arguments: [p, k])
        case (.keyValue, _):
            return try Row.fetchAll(db.cachedStatement(sql: "SELECT key, value FROM rkv WHERE partition = ? ORDER BY key LIMIT \(batch)"), arguments: [p])
        case (.instances, .key(let id)?):
            return try Row.fetchAll(db.cachedStatement(sql: "SELECT * FROM wf_instances WHERE partition = ? AND id > ? ORDER BY id LIMIT \(batch)"), arguments: [p, id])
        case (.instances, _):
            return try Row.fetchAll(db.cachedStatement(sql: "SELECT * FROM wf_instances WHERE partition = ? ORDER BY id LIMIT \(batch)"), arguments: [p])
        case (.results, .pair(let instance, let key)?):
            return try Row.fetchAll(db.cachedStatement(sql: """
                SELECT instance, key, value FROM wf_results WHERE partition = ? AND (instance > ? OR (instance = ? AND key > ?))
                ORDER BY instance, key LIMIT \(batch)
                """), arguments: [p, instance, instance, key])
        case (.results, _):
            return try Row.fetchAll(db.cachedStatement(sql: "SELECT instance, key, value FROM wf_results WHERE partition = ? ORDER BY instance, key LIMIT \(batch)"), arguments: [p])
        case (.timeline, .sequence(let seq)?):
            return try Row.fetchAll(db.cachedStatement(sql: "SELECT seq, instance, entry FROM wf_timeline WHERE partition = ? AND seq > ? ORDER BY seq LIMIT \(batch)"), arguments: [p, seq])
        case (.timeline, _):
            return try Row.fetchAll(db.cachedStatement(sql: "SELECT seq, instance, entry FROM wf_timeline WHERE partition = ? ORDER BY seq LIMIT \(batch)"), arguments: [p])
        }
    }

    /// Appends `row` as a record; returns the cursor after it.
    private static func encode(_ row: Row, table: Table, into w: inout WireWriter) -> Cursor {
        w.byte(table.rawValue)
        switch table {
        case .keyValue:
            let key: String = row["key"]
            w.string(key, max: 1 << 16)
            w.blob(Array(row["value"] as Data))
            return .key(key)
        case .instances:
            let id: String = row["id"]
            w.string(id, max: 1 << 16); w.string(row["workflow"], max: 1 << 16); w.string(row["status"])
            if let wake = row["wake_at"] as Int64? { w.byte(1); w.varint(UInt64(bitPattern: wake)) } else { w.byte(0) }
            w.varint(UInt64(row["version"] as Int64)); w.varint(UInt64(row["epoch"] as Int64))
            w.blob(Array(row["state"] as Data))
            w.varint(UInt64(bitPattern: row["updated_at"] as Int64))
            return .key(id)
        case .results:
            let instance: String = row["instance"], key: String = row["key"]
            w.string(instance, max: 1 << 16); w.string(key, max: 1 << 16); w.blob(Array(row["value"] as Data))
            return .pair(instance, key)
        case .timeline:
            w.string(row["instance"], max: 1 << 16); w.blob(Array(row["entry"] as Data))
            return .sequence(row["seq"])
        }
    }

    /// Replaces `partition`'s state machine with the staged chunks, forgets its log, and sets
    /// its snapshot point, applied index and commit index to `meta` (inside the group commit's
    /// transaction: all of it, or none).
    static func install(_ db: Database, partition: Int, meta: RaftSnapshotMeta) throws {
        let p = Int64(partition)
        for table in ["rkv", "wf_instances", "wf_results", "wf_timeline", "raft_log"] {
            try db.execute(sql: "DELETE FROM \(table) WHERE partition = ?", arguments: [p])
        }
        let kv = try db.cachedStatement(sql: "INSERT INTO rkv (partition, key, value) VALUES (?, ?, ?)")
        let instance = try db.cachedStatement(sql: "INSERT INTO wf_instances (id, partition, workflow, status, wake_at, version, epoch, state, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
        let result = try db.cachedStatement(sql: "INSERT INTO wf_results (instance, key, partition, value) VALUES (?, ?, ?, ?)")
        let line = try db.cachedStatement(sql: "INSERT INTO wf_timeline (instance, partition, entry) VALUES (?, ?, ?)")
        var expected: Int64 = 0
        let chunks = try Row.fetchCursor(db, sql: "SELECT seq, data FROM raft_snapshot_chunks WHERE partition = ? ORDER BY seq", arguments: [p])
        while let chunk = try chunks.next() {
            let seq: Int64 = chunk["seq"]
            guard seq == expected else {
                throw PartitionStoreError.incompleteSnapshot(partition: partition, why: "chunk \(expected) is missing (found \(seq))")
            }
            expected += 1
            let data = Array(chunk["data"] as Data)
            var r = WireReader(bytes: data)
            while !r.atEnd {
                guard let table = Table(rawValue: try r.byte("record")) else { throw WireError("unknown snapshot record") }
                switch table {
                case .keyValue:
                    try kv.run(.int(p), .text(try r.string("key", max: 1 << 16)), .blob(try r.blob("value", max: RaftCodec.maxPayload)))
                case .instances:
                    let id = try r.string("id", max: 1 << 16), workflow = try r.string("workflow", max: 1 << 16), status = try r.string("status")
                    let wake: BoundValue = try r.byte("wake flag") == 1 ? .int(Int64(bitPattern: try r.varint("wake"))) : .null
                    let version = Int64(try r.varint("version")), epoch = Int64(try r.varint("epoch"))
                    let state = try r.blob("state", max: RaftCodec.maxPayload)
                    let updated = Int64(bitPattern: try r.varint("updated"))
                    try instance.run(.text(id), .int(p), .text(workflow), .text(status), wake, .int(version), .int(epoch), .blob(state), .int(updated))
                case .results:
                    try result.run(.text(try r.string("instance", max: 1 << 16)), .text(try r.string("key", max: 1 << 16)), .int(p),
                                   .blob(try r.blob("value", max: RaftCodec.maxPayload)))
                case .timeline:
                    try line.run(.text(try r.string("instance", max: 1 << 16)), .int(p), .blob(try r.blob("line", max: RaftCodec.maxPayload)))
                }
            }
        }
        guard expected > 0 else { throw PartitionStoreError.incompleteSnapshot(partition: partition, why: "nothing is staged") }
        try db.execute(sql: "DELETE FROM raft_snapshot_chunks WHERE partition = ?", arguments: [p])
        try db.execute(sql: """
            UPDATE raft_state SET snapshot_index = ?, snapshot_term = ?, snapshot_config = ?, applied_index = ?, applied_term = ?,
                commit_index = MAX(commit_index, ?) WHERE partition = ?
            """, arguments: [Int64(meta.index), Int64(meta.term), Data(RaftConfigurationCodec.encode(meta.configuration)),
                             Int64(meta.index), Int64(meta.term), Int64(meta.index), p])
    }
}

extension PartitionStore {
    static func installStaged(_ db: Database, partition: Int, meta: RaftSnapshotMeta) throws {
        try SnapshotChunks.install(db, partition: partition, meta: meta)
    }
}
