import Foundation
import SkeinCluster
import SkeinWorkflow

/// One partition's disk in the simulation: what the real store keeps in SQLite.
struct SimDisk {
    var hardState = RaftHardState()
    var snapshot: RaftSnapshotMeta
    var entries: [UInt64: RaftEntry] = [:]
    var applied: UInt64 = 0
    var appliedTerm: UInt64 = 0
    /// The key-value state machine: key → version of the write that set it.
    var state: [UInt8: UInt64] = [:]
    /// Workflow mode: instances as applied (their checkpoint state).
    var instances: [String: InstanceState] = [:]
}

/// A node's storage under the simulator, behind the same protocol the real store implements:
/// writes run one at a time in the order asked (the writer queue), each taking simulated time;
/// a write that asks for an fsync makes everything before it durable, one that does not stays
/// in the page cache; a crash loses the page cache and every write still queued, and the write
/// under way may be torn (caught at the next open by its checksum and dropped). In the fault
/// phase fsyncs are slow or fail, one partition's share fails, the disk fills up for a while,
/// and reading or staging a snapshot chunk fails now and then.
final class SimStore: ReplicationStorage {
    unowned let sim: RaftSimulator
    let node: Int
    /// What the process sees, and what survives a crash.
    var current: [SimDisk]
    var durable: [SimDisk]
    /// Chunks staged for snapshots being received (volatile: the transfer restarts after a crash).
    var staged: [Int: [Int: [UInt8]]] = [:]
    var views: [SnapshotViewID: SimDisk] = [:]
    var nextView: SnapshotViewID = 1
    /// The writer queue: operations waiting, and whether one is under way.
    private var queue: [() -> Void] = []
    private var busy = false
    /// Completions waiting for their event, by id; dropped at a crash.
    private var completions: [Int: () -> Void] = [:]
    private var nextOp = 0
    var faultsOn = false
    var diskFullUntil: Int64 = 0
    private(set) var tornAtOpen = 0

    init(sim: RaftSimulator, node: Int, partitions: Int, configuration: RaftConfiguration) {
        self.sim = sim
        self.node = node
        let disk = SimDisk(snapshot: RaftSnapshotMeta(index: 0, term: 0, configuration: configuration))
        current = Array(repeating: disk, count: partitions)
        durable = current
    }

    /// What a restart loads.
    func stored() -> [RaftStoredState] {
        current.map { d in
            RaftStoredState(hardState: d.hardState, snapshot: d.snapshot, entries: d.entries.keys.sorted().map { d.entries[$0]! }, applied: d.applied)
        }
    }

    func crash(tearing: Bool) {
        if tearing, busy { tornAtOpen += 1 }
        current = durable
        staged = [:]
        views = [:]
        queue = []
        busy = false
        completions = [:]
    }

    // MARK: - The writer queue

    private func enqueue(_ op: @escaping () -> Void) {
        queue.append(op)
        runNext()
    }

    private func runNext() {
        guard !busy, !queue.isEmpty else { return }
        busy = true
        queue.removeFirst()()
    }

    /// Finishes the operation under way after `delayNs`: `body` then runs and calls back.
    private func finish(after delayNs: Int64, _ body: @escaping () -> Void) {
        nextOp += 1
        let op = nextOp
        completions[op] = { [unowned self] in
            busy = false
            body()
            runNext()
        }
        sim.schedule(.storageDone(node: node, boot: sim.nodes[node].boot, op: op), inNs: delayNs)
    }

    /// Off the writer queue (a read of a pinned view).
    private func finishRead(after delayNs: Int64, _ body: @escaping () -> Void) {
        nextOp += 1
        let op = nextOp
        completions[op] = body
        sim.schedule(.storageDone(node: node, boot: sim.nodes[node].boot, op: op), inNs: delayNs)
    }

    func complete(op: Int) {
        completions.removeValue(forKey: op)?()
    }

    private var fsyncNs: Int64 {
        if faultsOn, sim.random.chance(0.05) { return Int64(20_000_000 + sim.random.below(80_000_000)) }
        return Int64(50_000 + sim.random.below(1_500_000))
    }

    // MARK: - ReplicationStorage

    func commit(_ writes: [PartitionWrite], done: @escaping (GroupCommitOutcome) -> Void) {
        enqueue { [unowned self] in
            let sync = writes.contains(where: \.mustSync)
            finish(after: sync ? fsyncNs : 20_000) { [unowned self] in
                done(perform(writes, sync: sync))
            }
        }
    }

    private func perform(_ writes: [PartitionWrite], sync: Bool) -> GroupCommitOutcome {
        if faultsOn, sim.now < diskFullUntil {
            return .allFailed(writes, StorageFault("database or disk is full", diskFull: true))
        }
        if faultsOn, sim.random.chance(0.02) {
            if sim.random.chance(0.2) { diskFullUntil = sim.now + Int64(50_000_000 + sim.random.below(300_000_000)) }
            return .allFailed(writes, StorageFault("disk I/O error (simulated)"))
        }
        var outcome = GroupCommitOutcome()
        for w in writes {
            if faultsOn, sim.random.chance(0.01) {
                outcome.failed[w.partition] = StorageFault("a partition's share failed (simulated)")
                continue
            }
            var disk = current[w.partition]
            do {
                if let h = w.hardState { disk.hardState = h }
                if let meta = w.installSnapshot { try install(meta, partition: w.partition, into: &disk) }
                if let first = w.entries.first?.index {
                    for k in disk.entries.keys where k >= first { disk.entries[k] = nil }
                    for e in w.entries {
                        disk.entries[e.index] = e
                        sim.recordEntry(w.partition, e)
                    }
                }
                if w.openView {
                    let id = nextView
                    nextView += 1
                    views[id] = disk
                    outcome.views[w.partition] = id
                }
                var applied: [AppliedEntry] = []
                for e in w.committed { applied.append(try apply(e, partition: w.partition, to: &disk)) }
                if let meta = w.compactTo {
                    guard meta.index <= disk.applied else { throw StorageFault("compacting past the applied index") }
                    disk.snapshot = meta
                    for k in disk.entries.keys where k <= meta.index { disk.entries[k] = nil }
                }
                current[w.partition] = disk
                outcome.applied += applied
            } catch {
                if let view = outcome.views.removeValue(forKey: w.partition) { views[view] = nil }
                outcome.failed[w.partition] = error as? StorageFault ?? StorageFault("\(error)")
                if sim.failure == nil, !faultsOn { sim.failure = "\(sim.nodes[node].id) p\(w.partition): a write failed without an injected fault: \(error)" }
            }
        }
        if sync { durable = current }
        return outcome
    }

    private func apply(_ e: RaftEntry, partition p: Int, to disk: inout SimDisk) throws -> AppliedEntry {
        guard e.index == disk.applied + 1 else { throw StorageFault("entry \(e.index) applied after \(disk.applied)") }
        guard e.term >= disk.appliedTerm else { throw StorageFault("entry \(e.index) of term \(e.term) after applied term \(disk.appliedTerm)") }
        disk.applied = e.index
        disk.appliedTerm = e.term
        var result = AppliedEntry(partition: p, index: e.index, term: e.term)
        sim.checkApply(node: node, partition: p, entry: e)
        if e.kind == .command, e.data.count == 9 {
            disk.state[e.data[0]] = RaftSimulator.version(e.data)
        } else if e.kind == .command, let entry = WorkflowEntry.decode(e.data) {
            let found = disk.instances[entry.instance]
            let accepted = entry.base == 0 ? found == nil : found?.version == entry.base
            result.key = entry.instance
            if accepted {
                disk.instances[entry.instance] = entry.state
                result.version = entry.state.version
            } else {
                result.conflict = true
                result.version = found?.version ?? 0
            }
            sim.appliedWorkflowEntry(entry, accepted: accepted, node: node, partition: p, index: e.index)
        }
        return result
    }

    private func install(_ meta: RaftSnapshotMeta, partition p: Int, into disk: inout SimDisk) throws {
        guard let chunks = staged.removeValue(forKey: p), !chunks.isEmpty else { throw StorageFault("nothing is staged to install") }
        var state: [UInt8: UInt64] = [:]
        var instances: [String: InstanceState] = [:]
        for seq in 0..<chunks.count {
            guard let data = chunks[seq] else { throw StorageFault("staged chunk \(seq) is missing") }
            try Self.decode(data, state: &state, instances: &instances)
        }
        disk.state = state
        disk.instances = instances
        disk.entries = [:]
        disk.snapshot = meta
        disk.applied = meta.index
        disk.appliedTerm = meta.term
        disk.hardState.commit = max(disk.hardState.commit, meta.index)
        sim.note("\(sim.nodes[node].id) p\(p) installs snapshot at \(meta.index) (\(chunks.count) chunks)")
    }

    func load(partition p: Int, done: @escaping (Result<RaftStoredState, StorageFault>) -> Void) {
        enqueue { [unowned self] in
            finish(after: 30_000) { [unowned self] in
                let d = current[p]
                done(.success(RaftStoredState(hardState: d.hardState, snapshot: d.snapshot, entries: d.entries.keys.sorted().map { d.entries[$0]! }, applied: d.applied)))
            }
        }
    }

    func readChunk(view: SnapshotViewID, cursor: [UInt8], maxBytes: Int, done: @escaping (Result<SnapshotChunkRead, StorageFault>) -> Void) {
        let delay = Int64(20_000 + sim.random.below(200_000))
        let fail = faultsOn && sim.random.chance(0.02)
        finishRead(after: delay) { [unowned self] in
            guard let disk = views[view] else { return done(.failure(StorageFault("view \(view) is closed"))) }
            if fail { return done(.failure(StorageFault("read failed (simulated)"))) }
            done(.success(Self.chunk(of: disk, cursor: cursor, maxBytes: maxBytes)))
        }
    }

    func stageChunk(partition p: Int, sequence: Int, data: [UInt8], done: @escaping (Result<Void, StorageFault>) -> Void) {
        enqueue { [unowned self] in
            let fail = faultsOn && sim.random.chance(0.02)
            finish(after: Int64(20_000 + sim.random.below(100_000))) { [unowned self] in
                if fail { return done(.failure(StorageFault("staging failed (simulated)"))) }
                if sequence == 0 { staged[p] = [:] }
                staged[p, default: [:]][sequence] = data
                done(.success(()))
            }
        }
    }

    func discardStaged(partition p: Int) {
        enqueue { [unowned self] in
            finish(after: 10_000) { [unowned self] in staged[p] = nil }
        }
    }

    func closeView(_ view: SnapshotViewID) {
        views[view] = nil
    }

    // MARK: - Snapshot records

    /// The state as records (`1 · key · version`, `2 · id · state JSON`) from record `cursor`
    /// on, at least one, until `maxBytes`.
    static func chunk(of disk: SimDisk, cursor: [UInt8], maxBytes: Int) -> SnapshotChunkRead {
        var records: [[UInt8]] = []
        for key in disk.state.keys.sorted() {
            var r: [UInt8] = [1, key]
            for shift in stride(from: 56, through: 0, by: -8) { r.append(UInt8(truncatingIfNeeded: disk.state[key]! >> UInt64(shift))) }
            records.append(r)
        }
        for id in disk.instances.keys.sorted() {
            var w = WireWriter()
            w.byte(2)
            w.string(id, max: 1 << 16)
            w.blob(Array(try! JSONEncoder().encode(disk.instances[id]!)))
            records.append(w.bytes)
        }
        var start = 0
        for b in cursor { start = start << 8 | Int(b) }
        var data: [UInt8] = []
        var i = start
        while i < records.count, data.isEmpty || data.count + records[i].count <= maxBytes {
            data += records[i]
            i += 1
        }
        let next: [UInt8]? = i < records.count ? [UInt8(i >> 24 & 0xFF), UInt8(i >> 16 & 0xFF), UInt8(i >> 8 & 0xFF), UInt8(i & 0xFF)] : nil
        return SnapshotChunkRead(data: data, next: next)
    }

    static func decode(_ data: [UInt8], state: inout [UInt8: UInt64], instances: inout [String: InstanceState]) throws {
        var r = WireReader(bytes: data)
        while !r.atEnd {
            switch try r.byte("record") {
            case 1:
                let key = try r.byte("key")
                var v: UInt64 = 0
                for _ in 0..<8 { v = v << 8 | UInt64(try r.byte("version")) }
                state[key] = v
            case 2:
                let id = try r.string("id", max: 1 << 16)
                instances[id] = try JSONDecoder().decode(InstanceState.self, from: Data(try r.blob("state", max: 1 << 24)))
            default:
                throw StorageFault("unknown snapshot record")
            }
        }
    }
}

/// The simulated network as the host's transport: each message is lost, delayed, duplicated
/// or cut as the simulator decides.
final class SimTransport: ReplicationTransport {
    unowned let sim: RaftSimulator
    let node: Int

    init(sim: RaftSimulator, node: Int) {
        self.sim = sim
        self.node = node
    }

    func send(_ messages: [RaftMessage], to peer: RaftNodeID) {
        for m in messages { sim.send(m, from: node) }
    }
}
