public import Foundation
public import GRDB

/// The node's own SQLite database (GRDB, WAL, `synchronous=FULL`): one file per node,
/// `skein.sqlite` in the data directory.
public final class NodeDatabase: Sendable {
    public let pool: DatabasePool
    public let path: String

    /// Opens (creating if needed) the database in `directory`. Every failure is a
    /// ``StoreError`` with one line a person can act on.
    public convenience init(directory: String) throws(StoreError) {
        try self.init(directory: directory, migratingUpTo: nil)
    }

    /// With `migratingUpTo`, the schema stops at that migration: tests build a database as an
    /// older node left it.
    init(directory: String, migratingUpTo last: String?) throws(StoreError) {
        var isDirectory: ObjCBool = false
        let fm = FileManager.default
        if fm.fileExists(atPath: directory, isDirectory: &isDirectory) {
            guard isDirectory.boolValue else { throw StoreError.unusableDirectory(directory, "it is a file, not a directory") }
        } else {
            do {
                try fm.createDirectory(atPath: directory, withIntermediateDirectories: true)
            } catch {
                throw StoreError.unusableDirectory(directory, "cannot create it (\(Self.reason(error)))")
            }
        }
        guard fm.isWritableFile(atPath: directory) else { throw StoreError.unusableDirectory(directory, "it is not writable") }
        path = (directory as NSString).appendingPathComponent("skein.sqlite")
        var configuration = Configuration()
        configuration.busyMode = .timeout(5)
        configuration.label = "skein"
        do {
            pool = try DatabasePool(path: path, configuration: configuration)
            // GRDB sets synchronous=NORMAL while it sets up WAL; durability here means an fsync
            // per commit, so set FULL on the writer connection after opening.
            try pool.writeWithoutTransaction { db in try db.execute(sql: "PRAGMA synchronous = FULL") }
            if let last { try Self.migrator.migrate(pool, upTo: last) } else { try Self.migrator.migrate(pool) }
        } catch {
            throw StoreError.unusableDirectory(directory, "cannot open \(path) (\(Self.reason(error)))")
        }
    }

    static func reason(_ error: any Error) -> String {
        if let error = error as? DatabaseError { return error.message ?? "\(error.resultCode)" }
        return (error as NSError).localizedDescription
    }

    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1: key-value") { db in
            try db.execute(sql: """
                CREATE TABLE kv (
                    key TEXT PRIMARY KEY NOT NULL,
                    value BLOB NOT NULL
                ) WITHOUT ROWID
                """)
        }
        migrator.registerMigration("v2: partition log") { db in
            try db.execute(sql: """
                CREATE TABLE raft_meta (key TEXT PRIMARY KEY NOT NULL, value) WITHOUT ROWID;
                CREATE TABLE raft_state (
                    partition INTEGER PRIMARY KEY NOT NULL,
                    term INTEGER NOT NULL DEFAULT 0,
                    vote TEXT,
                    commit_index INTEGER NOT NULL DEFAULT 0,
                    applied_index INTEGER NOT NULL DEFAULT 0,
                    applied_term INTEGER NOT NULL DEFAULT 0,
                    snapshot_index INTEGER NOT NULL DEFAULT 0,
                    snapshot_term INTEGER NOT NULL DEFAULT 0,
                    snapshot_config BLOB
                );
                CREATE TABLE raft_log (
                    partition INTEGER NOT NULL,
                    idx INTEGER NOT NULL,
                    term INTEGER NOT NULL,
                    kind INTEGER NOT NULL,
                    data BLOB NOT NULL,
                    PRIMARY KEY (partition, idx)
                ) WITHOUT ROWID;
                CREATE TABLE rkv (
                    key TEXT PRIMARY KEY NOT NULL,
                    partition INTEGER NOT NULL,
                    value BLOB NOT NULL
                ) WITHOUT ROWID;
                CREATE INDEX rkv_partition ON rkv (partition, key);
                """)
        }
        migrator.registerMigration("v3: workflows") { db in
            try db.execute(sql: """
                CREATE TABLE wf_instances (
                    id TEXT PRIMARY KEY NOT NULL,
                    partition INTEGER NOT NULL,
                    workflow TEXT NOT NULL,
                    status TEXT NOT NULL,
                    wake_at INTEGER,
                    version INTEGER NOT NULL,
                    epoch INTEGER NOT NULL,
                    state BLOB NOT NULL,
                    updated_at INTEGER NOT NULL
                ) WITHOUT ROWID;
                CREATE INDEX wf_instances_partition ON wf_instances (partition, status);
                CREATE TABLE wf_results (
                    instance TEXT NOT NULL,
                    key TEXT NOT NULL,
                    partition INTEGER NOT NULL,
                    value BLOB NOT NULL,
                    PRIMARY KEY (instance, key)
                ) WITHOUT ROWID;
                CREATE INDEX wf_results_partition ON wf_results (partition);
                CREATE TABLE wf_timeline (
                    seq INTEGER PRIMARY KEY AUTOINCREMENT,
                    instance TEXT NOT NULL,
                    partition INTEGER NOT NULL,
                    entry BLOB NOT NULL
                );
                CREATE INDEX wf_timeline_instance ON wf_timeline (instance, seq);
                CREATE INDEX wf_timeline_partition ON wf_timeline (partition);
                """)
        }
        // Keyed by (partition, key): every apply writes one B-tree instead of the table and an
        // index by partition, and a partition's keys stay together for its snapshot and scans.
        // A key belongs to one partition only (a stable hash), so the key stays unique.
        migrator.registerMigration("v4: key-value by partition") { db in
            try db.execute(sql: """
                CREATE TABLE rkv_by_partition (
                    partition INTEGER NOT NULL,
                    key TEXT NOT NULL,
                    value BLOB NOT NULL,
                    PRIMARY KEY (partition, key)
                ) WITHOUT ROWID;
                INSERT INTO rkv_by_partition (partition, key, value) SELECT partition, key, value FROM rkv;
                DROP TABLE rkv;
                ALTER TABLE rkv_by_partition RENAME TO rkv;
                """)
        }
        // Snapshots stream in chunks: the receiver stages them here until the install, and the
        // sender walks each table by partition in key order (the indexes below), so a chunk
        // costs what it holds whatever the partition's size. The older indexes by partition
        // alone are prefixes of the new ones.
        migrator.registerMigration("v5: snapshot chunks") { db in
            try db.execute(sql: """
                CREATE TABLE raft_snapshot_chunks (
                    partition INTEGER NOT NULL,
                    seq INTEGER NOT NULL,
                    data BLOB NOT NULL,
                    PRIMARY KEY (partition, seq)
                ) WITHOUT ROWID;
                CREATE INDEX wf_instances_partition_id ON wf_instances (partition, id);
                DROP INDEX wf_results_partition;
                CREATE INDEX wf_results_partition ON wf_results (partition, instance, key);
                DROP INDEX wf_timeline_partition;
                CREATE INDEX wf_timeline_partition ON wf_timeline (partition, seq);
                """)
        }
        return migrator
    }

    /// The writer connection's `synchronous` setting (2 = FULL).
    public func synchronousMode() throws -> Int {
        try pool.writeWithoutTransaction { db in try Int.fetchOne(db, sql: "PRAGMA synchronous") ?? -1 }
    }

    /// The journal mode (`wal`).
    public func journalMode() throws -> String {
        try pool.read { db in try String.fetchOne(db, sql: "PRAGMA journal_mode") ?? "" }
    }
}

/// A failure of the node's storage, with the sentence a person needs.
public enum StoreError: Error, Sendable, CustomStringConvertible {
    case unusableDirectory(String, String)
    case partitionMismatch(stored: Int, asked: Int, path: String)

    public var description: String {
        switch self {
        case .unusableDirectory(let dir, let why): "data directory \(dir) is unusable: \(why)"
        case .partitionMismatch(let stored, let asked, let path):
            "\(path) was created with \(stored) partitions, not \(asked): start with --partitions \(stored) (the count is fixed when a cluster is created)"
        }
    }
}
