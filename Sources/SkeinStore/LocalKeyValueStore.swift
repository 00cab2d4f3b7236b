public import Foundation
import GRDB
public import SkeinPipeline

/// The `kv_*` effects' store on this node's own SQLite. The replicated store of the partition
/// log implements the same ``KeyValueStore`` protocol.
public struct LocalKeyValueStore: KeyValueStore {
    let database: NodeDatabase
    public let limits: KeyValueLimits

    public init(database: NodeDatabase, limits: KeyValueLimits = KeyValueLimits()) {
        self.database = database
        self.limits = limits
    }

    public func get(_ key: String) async throws -> Data? {
        try limits.check(key: key)
        return try await database.pool.read { db in
            try Data.fetchOne(db, sql: "SELECT value FROM kv WHERE key = ?", arguments: [key])
        }
    }

    public func put(_ key: String, _ value: Data) async throws {
        try limits.check(key: key)
        try limits.check(value: value, key: key)
        try await database.pool.write { db in
            try db.execute(sql: "INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                           arguments: [key, value])
        }
    }

    public func delete(_ key: String) async throws -> Bool {
        try limits.check(key: key)
        return try await database.pool.write { db in
            try db.execute(sql: "DELETE FROM kv WHERE key = ?", arguments: [key])
            return db.changesCount > 0
        }
    }

    public func scan(prefix: String, limit: Int) async throws -> [KVEntry] {
        try await database.pool.read { db in
            // Keys are compared as text; the upper bound is the prefix with its last scalar bumped.
            let rows = try Row.fetchAll(
                db, sql: "SELECT key, value FROM kv WHERE key >= ? AND key < ? ORDER BY key LIMIT ?",
                arguments: [prefix, KeyValueLimits.upperBound(of: prefix), max(0, limit)])
            return rows.map { KVEntry(key: $0["key"], value: $0["value"]) }
        }
    }
}

/// Limits every key-value store enforces, so bad input gets a clear 400/413 instead of a failure deep down.
public struct KeyValueLimits: Sendable {
    public var maxKeyBytes: Int
    public var maxValueBytes: Int

    public init(maxKeyBytes: Int = 1024, maxValueBytes: Int = 1 << 20) {
        self.maxKeyBytes = maxKeyBytes
        self.maxValueBytes = maxValueBytes
    }

    public func check(key: String) throws(SkeinError) {
        if key.isEmpty { throw SkeinError(code: 400, what: "invalid_key", key: key, message: "a key cannot be empty") }
        if key.utf8.count > maxKeyBytes {
            throw SkeinError(code: 400, what: "invalid_key", key: String(key.prefix(64)), message: "a key is at most \(maxKeyBytes) bytes")
        }
        if key.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7f }) {
            throw SkeinError(code: 400, what: "invalid_key", key: key, message: "a key cannot contain control characters")
        }
    }

    public func check(value: Data, key: String) throws(SkeinError) {
        if value.count > maxValueBytes {
            throw SkeinError(code: 413, what: "value_too_large", key: key, message: "a value is at most \(maxValueBytes) bytes; this one has \(value.count)")
        }
    }

    static func upperBound(of prefix: String) -> String {
        guard !prefix.isEmpty else { return "\u{10FFFF}" }
        return prefix + "\u{10FFFF}"
    }
}
