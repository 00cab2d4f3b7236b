public import Foundation

/// Performs one attempt of an effect's I/O. The node supplies the real one; a test supplies
/// results of its own. Implementations must honour task cancellation.
public protocol EffectPerformer: Sendable {
    func perform(_ operation: EffectOperation, context: EffectContext) async throws -> EffectOutput
}

/// What a performer knows about the request an effect serves.
public struct EffectContext: Sendable {
    public var traceID: String
    /// The attempt number, counted from 1.
    public var attempt: Int
    public init(traceID: String, attempt: Int) {
        self.traceID = traceID
        self.attempt = attempt
    }
}

/// The key-value store behind the `kv_*` effects: the node's own SQLite database now, the
/// replicated partition log's store later. One protocol for both.
public protocol KeyValueStore: Sendable {
    func get(_ key: String) async throws -> Data?
    func put(_ key: String, _ value: Data) async throws
    /// Deletes a key; returns whether it existed.
    func delete(_ key: String) async throws -> Bool
    /// Keys starting with `prefix`, in key order, at most `limit`.
    func scan(prefix: String, limit: Int) async throws -> [KVEntry]
}

/// The SQL database behind the `sql_*` effects: the node's own SQLite.
public protocol SQLDatabase: Sendable {
    func query(_ sql: String, _ arguments: [SQLValue]) async throws -> [SQLRow]
    func execute(_ sql: String, _ arguments: [SQLValue]) async throws -> Int
}

