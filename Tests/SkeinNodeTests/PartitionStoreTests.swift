import Foundation
import GRDB
import SkeinCluster
@testable import SkeinStore
import Testing

/// The partition log's storage on its own: group commits and their per-partition faults,
/// epoch and version refusal, compaction across a restart, and snapshots read from a pinned
/// view in bounded chunks, staged elsewhere and installed over what was there.
@Suite struct PartitionStoreTests {
    static let configuration = RaftConfiguration(voters: ["a:1", "b:2", "c:3"])

    static func open(_ directory: String, partitions: Int = 4) throws -> PartitionStore {
        let store = try PartitionStore(database: try NodeDatabase(directory: directory), partitions: partitions)
        for p in 0..<partitions { _ = try store.load(partition: p, configuration: configuration) }
        return store
    }

    static func commit(_ store: PartitionStore, _ writes: [PartitionWrite]) async -> GroupCommitOutcome {
        await withCheckedContinuation { c in store.commit(writes) { c.resume(returning: $0) } }
    }

    static func entry(_ index: UInt64, term: UInt64 = 1, _ command: PartitionCommand) -> RaftEntry {
        RaftEntry(index: index, term: term, kind: .command, data: command.encode())
    }

    /// Persists and applies `commands` as entries `from`… of `partition` in one group commit.
    @discardableResult
    static func write(_ store: PartitionStore, partition p: Int, from first: UInt64, term: UInt64 = 1, _ commands: [PartitionCommand]) async -> GroupCommitOutcome {
        let entries = commands.enumerated().map { entry(first + UInt64($0.offset), term: term, $0.element) }
        return await commit(store, [PartitionWrite(partition: p, hardState: RaftHardState(term: term, vote: nil, commit: entries.last?.index ?? 0),
                                                   entries: entries, committed: entries, mustSync: true)])
    }

    static func change(_ id: String, base: UInt64, version: UInt64, replace: Bool = false) -> PartitionCommand {
        .instance(InstanceChange(id: id, workflow: "w", status: "in_progress", wakeAt: nil, baseVersion: base, version: version, replace: replace,
                                 state: Array("{\"v\":\(version)}".utf8), results: ["t\(version)": [UInt8(version)]], timeline: [Array("line \(version)".utf8)]))
    }

    @Test func entriesApplyInOrderAndNotFromAnOlderEpoch() async throws {
        let store = try Self.open(temporaryDirectory())
        let ok = await Self.write(store, partition: 0, from: 1, term: 2, [.put(key: "a", value: [1])])
        #expect(ok.failed.isEmpty)
        // A gap: index 3 after 1.
        let gap = await Self.write(store, partition: 0, from: 3, term: 2, [.put(key: "a", value: [3])])
        #expect(gap.failed[0]?.message.contains("out of order") == true, "\(gap.failed)")
        // An older epoch than the one applied: a deposed leader's entry.
        let stale = await Self.write(store, partition: 0, from: 2, term: 1, [.put(key: "a", value: [2])])
        #expect(stale.failed[0]?.message.contains("older than applied epoch") == true, "\(stale.failed)")
        #expect(try await store.value(for: "a", partition: 0) == [1], "a refused share writes nothing")
    }

    @Test func oneFailingPartitionDoesNotStopTheOthers() async throws {
        let store = try Self.open(temporaryDirectory())
        let outcome = await Self.commit(store, [
            PartitionWrite(partition: 0, entries: [Self.entry(1, .put(key: "x", value: [7]))], committed: [Self.entry(1, .put(key: "x", value: [7]))], mustSync: true),
            PartitionWrite(partition: 1, entries: [Self.entry(5, .put(key: "y", value: [8]))], committed: [Self.entry(5, .put(key: "y", value: [8]))], mustSync: true),
        ])
        #expect(outcome.failed.keys.sorted() == [1])
        #expect(outcome.applied.map(\.partition) == [0])
        #expect(try await store.value(for: "x", partition: 0) == [7])
        #expect(try store.load(partition: 1, configuration: Self.configuration).entries.isEmpty, "the failed share is rolled back whole")
        #expect(try store.load(partition: 0, configuration: Self.configuration).entries.map(\.index) == [1])
    }

    @Test func versionedChangesReportTheVersionTheyLeaveOrFind() async throws {
        let store = try Self.open(temporaryDirectory())
        var applied = await Self.write(store, partition: 2, from: 1, [Self.change("i", base: 0, version: 1), Self.change("i", base: 1, version: 2)]).applied
        #expect(applied.map(\.conflict) == [false, false])
        #expect(applied.map(\.version) == [1, 2])
        #expect(applied.allSatisfy { $0.key == "i" })
        // A change computed from version 1 is refused and says the instance is at 2.
        applied = await Self.write(store, partition: 2, from: 3, [Self.change("i", base: 1, version: 3), Self.change("i", base: 0, version: 1)]).applied
        #expect(applied.map(\.conflict) == [true, true])
        #expect(applied.map(\.version) == [2, 2])
        // A replacement always applies.
        applied = await Self.write(store, partition: 2, from: 5, [Self.change("i", base: 0, version: 1, replace: true)]).applied
        #expect(applied.map(\.conflict) == [false])
        #expect(try await store.instance("i")?.version == 1)
        #expect(try await store.timeline("i").count == 1, "a replacement starts the timeline anew")
    }

    @Test func compactionSurvivesARestart() async throws {
        let directory = temporaryDirectory()
        do {
            let store = try Self.open(directory)
            await Self.write(store, partition: 1, from: 1, (1...30).map { .put(key: "k\($0)", value: [UInt8($0)]) })
            let meta = RaftSnapshotMeta(index: 20, term: 1, configuration: Self.configuration)
            let outcome = await Self.commit(store, [PartitionWrite(partition: 1, compactTo: meta)])
            #expect(outcome.failed.isEmpty)
        }
        let store = try Self.open(directory)
        let state = try store.load(partition: 1, configuration: RaftConfiguration(voters: ["other:1"]))
        #expect(state.snapshot.index == 20)
        #expect(state.snapshot.configuration == Self.configuration, "the stored configuration, not the one asked for")
        #expect(state.entries.map(\.index) == Array(21...30))
        #expect(state.applied == 30)
        #expect(try await store.value(for: "k30", partition: 1) == [30])
    }

    /// A partition of many rows (two thousand values of 4 KiB and instances with results and
    /// timelines) is read from a view pinned before the write's entries apply, in chunks of
    /// about 64 KiB, staged in another node's store and installed over that partition's data.
    @Test func aSnapshotRoundTripsInBoundedChunks() async throws {
        let source = try Self.open(temporaryDirectory())
        let value = [UInt8](repeating: 0xAB, count: 4096)
        await Self.write(source, partition: 3, from: 1, (0..<2_000).map { .put(key: String(format: "key-%05d", $0), value: value) })
        var next: UInt64 = 2_001
        for i in 0..<50 {
            await Self.write(source, partition: 3, from: next, [Self.change("inst-\(i)", base: 0, version: 1), Self.change("inst-\(i)", base: 1, version: 2)])
            next += 2
        }
        // Another partition's rows never enter partition 3's snapshot.
        await Self.write(source, partition: 0, from: 1, [.put(key: "elsewhere", value: [1])])
        // The view is pinned before this write's entry applies: "late" is not in the snapshot.
        let late = Self.entry(next, .put(key: "late", value: [9]))
        let pinned = await Self.commit(source, [PartitionWrite(partition: 3, entries: [late], openView: true, committed: [late], mustSync: true)])
        let view = try #require(pinned.views[3])
        #expect(pinned.applied.map(\.index) == [next], "the held-back entry still applies")
        #expect(try await source.value(for: "late", partition: 3) == [9])

        let target = try Self.open(temporaryDirectory())
        await Self.write(target, partition: 3, from: 1, [.put(key: "stale", value: [0]), Self.change("inst-0", base: 0, version: 1)])
        await Self.write(target, partition: 1, from: 1, [.put(key: "kept", value: [5])])
        var cursor: [UInt8]? = []
        var sequence = 0
        var largest = 0
        while let at = cursor {
            let chunk = try await withCheckedThrowingContinuation { c in
                source.readChunk(view: view, cursor: at, maxBytes: 64 << 10) { c.resume(with: $0.mapError { $0 as any Error }) }
            }
            largest = max(largest, chunk.data.count)
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, any Error>) in
                target.stageChunk(partition: 3, sequence: sequence, data: chunk.data) { c.resume(with: $0.mapError { $0 as any Error }) }
            }
            sequence += 1
            cursor = chunk.next
        }
        source.closeView(view)
        #expect(source.openViews == 0)
        #expect(sequence > 100, "\(sequence) chunks: the state was not cut up")
        #expect(largest <= (64 << 10) + 4096 + 64, "a chunk holds about maxBytes, plus at most one row")
        #expect(try target.stagedChunks(partition: 3) == sequence)
        let meta = RaftSnapshotMeta(index: next - 1, term: 1, configuration: Self.configuration)
        let installed = await Self.commit(target, [PartitionWrite(partition: 3, installSnapshot: meta, mustSync: true)])
        #expect(installed.failed.isEmpty, "\(installed.failed)")
        #expect(try target.stagedChunks(partition: 3) == 0)

        #expect(try await target.value(for: "stale", partition: 3) == nil, "the install replaces what was there")
        #expect(try await target.value(for: "late", partition: 3) == nil)
        #expect(try await target.value(for: "kept", partition: 1) == [5], "other partitions are untouched")
        #expect(try await target.value(for: "elsewhere", partition: 3) == nil)
        #expect(try await target.scan(partition: 3, prefix: "key-", limit: 10_000).count == 2_000)
        #expect(try await target.value(for: "key-01999", partition: 3) == value)
        #expect(try await target.instances(partition: 3).count == 50)
        #expect(try await target.instance("inst-0")?.version == 2)
        #expect(try await target.timeline("inst-7").count == 2)
        let state = try target.load(partition: 3, configuration: Self.configuration)
        #expect(state.snapshot.index == meta.index)
        #expect(state.applied == meta.index)
        #expect(state.entries.isEmpty)
        #expect(state.hardState.commit == meta.index)
        // The next entry applies on top of the installed state.
        let after = await Self.write(target, partition: 3, from: meta.index + 1, [.put(key: "after", value: [1])])
        #expect(after.failed.isEmpty)
    }

    @Test func anIncompleteStagingIsRefused() async throws {
        let store = try Self.open(temporaryDirectory())
        await Self.write(store, partition: 0, from: 1, [.put(key: "a", value: [1])])
        for sequence in [0, 2] {
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, any Error>) in
                store.stageChunk(partition: 0, sequence: sequence, data: []) { c.resume(with: $0.mapError { $0 as any Error }) }
            }
        }
        let outcome = await Self.commit(store, [PartitionWrite(partition: 0, installSnapshot: RaftSnapshotMeta(index: 9, term: 1, configuration: Self.configuration), mustSync: true)])
        #expect(outcome.failed[0]?.message.contains("chunk 1 is missing") == true, "\(outcome.failed)")
        #expect(try await store.value(for: "a", partition: 0) == [1], "nothing of the install happened")
    }

    @Test func whatAStopLeftStagedIsDroppedAtOpen() async throws {
        let directory = temporaryDirectory()
        do {
            let store = try Self.open(directory)
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, any Error>) in
                store.stageChunk(partition: 2, sequence: 0, data: [1, 2, 3]) { c.resume(with: $0.mapError { $0 as any Error }) }
            }
            #expect(try store.stagedChunks(partition: 2) == 1)
        }
        #expect(try Self.open(directory).stagedChunks(partition: 2) == 0)
    }
}
