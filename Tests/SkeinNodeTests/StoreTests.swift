import Foundation
import GRDB
import SkeinPipeline
@testable import SkeinStore
import Testing

@Suite struct StoreTests {
    @Test func durableSettingsHold() async throws {
        let db = try NodeDatabase(directory: temporaryDirectory())
        #expect(try db.synchronousMode() == 2, "synchronous must stay FULL after GRDB sets up WAL")
        #expect(try db.journalMode() == "wal")
        // Still FULL after writes went through the pool's writer.
        let kv = LocalKeyValueStore(database: db)
        for i in 0..<10 { try await kv.put("k\(i)", Data("v".utf8)) }
        #expect(try db.synchronousMode() == 2)
    }

    /// A database an older node left, its replicated key-value rows keyed by key alone with an
    /// index by partition, opens with every row in place, now keyed by (partition, key).
    @Test func replicatedRowsSurviveTheMoveToPartitionKeys() async throws {
        let directory = temporaryDirectory()
        do {
            let old = try NodeDatabase(directory: directory, migratingUpTo: "v3: workflows")
            try await old.pool.write { db in
                try db.execute(sql: "INSERT INTO rkv (key, partition, value) VALUES ('a', 3, x'01'), ('b', 3, x'02'), ('c', 5, x'03')")
            }
        }
        let database = try NodeDatabase(directory: directory)
        let store = try PartitionStore(database: database, partitions: 16)
        #expect(try await store.value(for: "a", partition: 3) == [1])
        #expect(try await store.value(for: "c", partition: 5) == [3])
        #expect(try await store.value(for: "a", partition: 5) == nil, "a key is looked up in its own partition")
        #expect(try await store.scan(partition: 3, prefix: "", limit: 10).map(\.0) == ["a", "b"])
        let indexes = try await database.pool.read { db in
            try String.fetchAll(db, sql: "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'rkv'")
        }
        #expect(indexes.isEmpty, "one B-tree per write: no index beside the table")
    }

    @Test func keyValueOperations() async throws {
        let kv = LocalKeyValueStore(database: try NodeDatabase(directory: temporaryDirectory()))
        #expect(try await kv.get("a") == nil)
        try await kv.put("a", Data("1".utf8))
        try await kv.put("a", Data("2".utf8))
        #expect(try await kv.get("a") == Data("2".utf8))
        try await kv.put("p/1", Data([0, 255]))
        try await kv.put("p/2", Data())
        try await kv.put("p0", Data("x".utf8))
        try await kv.put("p/\u{1F600}", Data("emoji".utf8))
        #expect(try await kv.scan(prefix: "p/", limit: 10).map(\.key) == ["p/1", "p/2", "p/\u{1F600}"])
        #expect(try await kv.scan(prefix: "p/", limit: 1).map(\.key) == ["p/1"])
        #expect(try await kv.get("p/1") == Data([0, 255]), "bytes round-trip exactly")
        #expect(try await kv.delete("a") == true)
        #expect(try await kv.delete("a") == false)
    }

    @Test func badKeysAndValuesAreClearErrors() async throws {
        let kv = LocalKeyValueStore(database: try NodeDatabase(directory: temporaryDirectory()), limits: KeyValueLimits(maxKeyBytes: 8, maxValueBytes: 4))
        await #expect(throws: SkeinError.self) { try await kv.put("", Data()) }
        await #expect(throws: SkeinError.self) { try await kv.put("123456789", Data()) }
        await #expect(throws: SkeinError.self) { try await kv.put("a\u{0}b", Data()) }
        do {
            try await kv.put("k", Data(count: 5))
            Issue.record("expected 413")
        } catch let error as SkeinError {
            #expect(error.code == 413)
        }
    }

    @Test func unusableDirectoriesAreNamed() throws {
        let file = temporaryDirectory() + "/plain-file"
        FileManager.default.createFile(atPath: file, contents: Data())
        #expect {
            try NodeDatabase(directory: file)
        } throws: { error in
            "\(error)".contains("is a file")
        }
    }
}

