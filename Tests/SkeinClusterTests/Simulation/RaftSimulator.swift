import HeapModule
import SkeinCluster
import SkeinWorkflow

/// A whole cluster of per-partition Raft groups in one process, over a simulated network,
/// disk and set of clocks, all driven by one seed.
///
/// The network loses, delays, duplicates and reorders messages and is cut (both ways or one
/// way); nodes crash — losing everything their last fsync did not cover — and restart, pause,
/// and run clocks up to the stated drift bound fast or slow; membership sometimes reports a
/// live leader dead; leaders hand leadership over and compact their logs. Clients write
/// through whoever leads and read through whoever holds a lease.
///
/// After every event: at most one leader per partition per term; no two nodes hold a valid
/// lease for one partition at the same true time; one entry per (index, term); every
/// acknowledged write is in every later leader's log; no two nodes apply different entries
/// at one index; a lease read sees every write acknowledged before it began. Every 1000
/// events and at the end, logs match pairwise. At the end, after healing: every partition has a leader and
/// every node holds every acknowledged write.
struct RaftSimulator {
    struct Scenario: CustomStringConvertible {
        var nodes: Int
        var partitions: Int
        var loss: Double
        var duplicate: Double
        var minDelayUs: Int
        var maxDelayUs: Int
        var crashes: Bool
        var pauses: Bool
        var cuts: Bool
        var falseDownReports: Bool
        var transfers: Bool
        var writesPerSecond: Int
        var compactEvery: UInt64
        var faultPhaseMs: Int
        var quietPhaseMs: Int

        var description: String {
            "\(nodes) voters, \(partitions) partitions, loss \(Int(loss * 100))%, dup \(Int(duplicate * 100))%, delay \(minDelayUs)-\(maxDelayUs) µs, crashes \(crashes), pauses \(pauses), cuts \(cuts), false down reports \(falseDownReports), transfers \(transfers), \(writesPerSecond) writes/s, compact every \(compactEvery)"
        }
    }

    enum Event {
        case tick(Int)
        case deliver(RaftMessage, to: Int)
        case fsyncDone(Int, boot: Int)
        case crash(Int)
        case restart(Int)
        case pause(Int, ms: Int)
        case resume(Int)
        case cut([Pair])
        case heal
        case reportDown(about: Int, to: Int)
        case write
        case read
        case transfer
        case finalCheck
        /// Workflow mode: a client starts an instance; a task attempt finishes on a node.
        case startInstance
        case taskDone(node: Int, boot: Int, partition: Int, instance: String, key: String, attempt: Int)
    }

    struct Pair: Hashable { var from: Int; var to: Int }

    struct Scheduled: Comparable {
        var time: Int64
        var order: UInt64
        var event: Event
        static func < (a: Scheduled, b: Scheduled) -> Bool { (a.time, a.order) < (b.time, b.order) }
        static func == (a: Scheduled, b: Scheduled) -> Bool { (a.time, a.order) == (b.time, b.order) }
    }

    /// What survives a crash: what fsyncs covered.
    struct Disk {
        var hardState = RaftHardState()
        var snapshot: RaftSnapshotMeta
        var entries: [UInt64: RaftEntry] = [:]
        var applied: UInt64 = 0
        /// The state machine: key → version of the write that set it.
        var state: [UInt8: UInt64] = [:]
        /// Workflow mode: instances as applied (their checkpoint JSON).
        var instances: [String: InstanceState] = [:]
    }

    struct Node {
        var id: RaftNodeID
        var up = true
        var paused = false
        var boot = 0
        /// Clock rate against true time, within the drift bound.
        var rate: Double
        var bootTrue: Int64 = 0
        var bootLocal: Int64 = 0
        var groups: [Raft] = []
        var disks: [Disk]
        /// One fsync at a time; ready()s wait for it (that is the group commit).
        var inFlight: [RaftReady?] = []
        var fsyncBusy = false
        /// Writes this node proposed as leader: (partition, index) → (term, key, version).
        var pending: [PartitionIndex: (term: UInt64, key: UInt8, version: UInt64)] = [:]
        /// Workflow mode: instance checkpoints proposed and not yet answered, checkpoints answered
        /// at commit and not yet applied (the runner's state in memory), and task attempts running.
        var checkpointing: [String: Checkpoint] = [:]
        var answered: [String: Checkpoint] = [:]
        var running: Set<String> = []
    }

    struct PartitionIndex: Hashable { var partition: Int; var index: UInt64 }
    struct PartitionTerm: Hashable { var partition: Int; var term: UInt64 }
    struct Ack { var index: UInt64; var term: UInt64; var key: UInt8; var version: UInt64; var at: Int64 }

    let seed: UInt64
    let scenario: Scenario
    let config: RaftConfig
    var random: DeterministicRandom
    var now: Int64 = 0
    var queue = Heap<Scheduled>()
    var order: UInt64 = 0
    var nodes: [Node] = []
    var cut: Set<Pair> = []
    /// The loss rate now: the scenario's during faults, at most 2% once healed (liveness is
    /// only owed once the network behaves).
    var loss: Double = 0
    var nextVersion: UInt64 = 1
    private(set) var eventsRun = 0
    private(set) var recent: [String] = []
    var failure: String?

    // What the checker knows.
    var leaders: [PartitionTerm: RaftNodeID] = [:]
    var entryData: [PartitionTerm: [UInt64: [UInt8]]] = [:]
    var appliedEntries: [PartitionIndex: RaftEntry] = [:]
    var acks: [[Ack]] = []
    var maxAckedIndex: [UInt64] = []
    var wasLeader: [[UInt64]] = []
    private(set) var stats = (writes: 0, acked: 0, reads: 0, leaseReads: 0, elections: 0, snapshotsSent: 0)

    static let tickNs: Int64 = 10_000_000

    /// Workflow mode: instances run on the partitions' owners (see WorkflowSimulation.swift).
    var workflows = false
    var wf = WorkflowChecker()

    /// `clockDrift` is how far the simulated clocks really drift (default: the bound the
    /// configuration states); setting it past the bound must break leases.
    init(seed: UInt64, config: RaftConfig = RaftConfig(), scenario: Scenario? = nil, clockDrift: Double? = nil, workflows: Bool = false) {
        self.seed = seed
        self.config = config
        self.workflows = workflows
        var r = DeterministicRandom(seed: seed)
        var s = scenario ?? Self.draw(&r)
        // Workflow checkpoints are not part of the simulated snapshots: no compaction then.
        if workflows { s.compactEvery = 0 }
        self.scenario = s
        self.random = r
        self.loss = s.loss
        let ids = (1...s.nodes).map { "10.0.0.\($0):9000" }
        let configuration = RaftConfiguration(voters: ids)
        for (i, id) in ids.enumerated() {
            let drift = (random.chance(0.5) ? 1.0 : -1.0) * (clockDrift ?? config.maxDrift) * Double(random.below(101)) / 100
            let disk = Disk(snapshot: RaftSnapshotMeta(index: 0, term: 0, configuration: configuration))
            nodes.append(Node(id: id, rate: 1 + drift, bootLocal: Int64(random.below(1_000_000_000)), disks: Array(repeating: disk, count: s.partitions)))
            boot(i)
        }
        acks = Array(repeating: [], count: s.partitions)
        maxAckedIndex = Array(repeating: 0, count: s.partitions)
        wasLeader = Array(repeating: Array(repeating: 0, count: s.partitions), count: s.nodes)
    }

    static func draw(_ r: inout DeterministicRandom) -> Scenario {
        let hostile = r.chance(0.7)
        return Scenario(
            nodes: r.chance(0.6) ? 3 : 5,
            partitions: 2 + r.below(3),
            loss: hostile ? Double(r.below(25)) / 100 : Double(r.below(3)) / 100,
            duplicate: Double(r.below(6)) / 100,
            minDelayUs: 100 + r.below(400),
            maxDelayUs: r.chance(0.2) ? 30_000 : 1_000 + r.below(5_000),
            crashes: hostile && r.chance(0.8),
            pauses: hostile && r.chance(0.5),
            cuts: hostile && r.chance(0.7),
            falseDownReports: r.chance(0.5),
            transfers: r.chance(0.5),
            writesPerSecond: 50 + r.below(250),
            compactEvery: r.chance(0.5) ? UInt64(8 + r.below(40)) : 0,
            faultPhaseMs: 1_500 + r.below(1_500),
            quietPhaseMs: 3_000
        )
    }

    // MARK: - Running

    mutating func schedule(_ event: Event, inNs delay: Int64) {
        order += 1
        queue.insert(Scheduled(time: now + max(0, delay), order: order, event: event))
    }

    mutating func ms(_ n: Int) -> Int64 { Int64(n) * 1_000_000 }

    func local(_ i: Int) -> Duration {
        let n = nodes[i]
        return .nanoseconds(n.bootLocal + Int64(Double(now - n.bootTrue) * n.rate))
    }

    /// Runs to the end; nil if every invariant held, else the report.
    mutating func run() -> String? {
        let faultEnd = ms(scenario.faultPhaseMs)
        let end = faultEnd + ms(scenario.quietPhaseMs)
        if workflows {
            schedule(.startInstance, inNs: ms(20))
        } else {
            schedule(.write, inNs: ms(5))
        }
        schedule(.read, inNs: ms(7))
        planFaults(until: faultEnd)
        schedule(.heal, inNs: faultEnd)
        schedule(.finalCheck, inNs: end)
        while failure == nil, let next = queue.popMin() {
            now = next.time
            eventsRun += 1
            if eventsRun > 2_000_000 {
                // A run has some tens of thousands of events; millions mean messages feeding
                // each other without end (a livelock), which is a bug too.
                failure = "more than 2,000,000 events: a message storm"
                break
            }
            handle(next.event)
            if case .finalCheck = next.event { break }
            if failure == nil { checkInvariants(after: next.event) }
            if failure == nil, eventsRun % 1000 == 0 { checkLogsMatch() }
        }
        guard let failure else { return nil }
        let mode = workflows ? "workflow" : "raft"
        return "\(mode) simulation seed \(seed) failed at \(Double(now) / 1e9) s after \(eventsRun) events: \(failure)\nscenario: \(scenario)\nreplay: \(workflows ? "SKEIN_WF_SIM_SEED" : "SKEIN_RAFT_SIM_SEED")=\(seed) swift test --filter \(workflows ? "WorkflowSimulation" : "RaftSimulation")\nlast events:\n" + recent.joined(separator: "\n")
    }

    mutating func planFaults(until end: Int64) {
        var t: Int64 = ms(300)
        while true {
            t += ms(150 + random.below(500))
            // Every fault ends by `end`: what follows is quiet.
            guard t < end - ms(50) else { break }
            let target = random.below(scenario.nodes)
            let choice = random.below(5)
            order += 1
            switch choice {
            case 0 where scenario.crashes:
                queue.insert(Scheduled(time: t, order: order, event: .crash(target)))
                order += 1
                queue.insert(Scheduled(time: min(end, t + ms(50 + random.below(900))), order: order, event: .restart(target)))
            case 1 where scenario.pauses:
                queue.insert(Scheduled(time: t, order: order, event: .pause(target, ms: min(Int((end - t) / 1_000_000), 50 + random.below(700)))))
            case 2 where scenario.cuts:
                var pairs: [Pair] = []
                let oneWay = random.chance(0.4)
                for other in 0..<scenario.nodes where other != target {
                    pairs.append(Pair(from: target, to: other))
                    if !oneWay { pairs.append(Pair(from: other, to: target)) }
                }
                queue.insert(Scheduled(time: t, order: order, event: .cut(pairs)))
                order += 1
                queue.insert(Scheduled(time: min(end, t + ms(200 + random.below(900))), order: order, event: .cut([])))
            case 3 where scenario.falseDownReports:
                for other in 0..<scenario.nodes where other != target {
                    order += 1
                    queue.insert(Scheduled(time: t, order: order, event: .reportDown(about: target, to: other)))
                }
            case 4 where scenario.transfers:
                queue.insert(Scheduled(time: t, order: order, event: .transfer))
            default:
                break
            }
        }
    }

    mutating func note(_ s: String) {
        recent.append("\(Double(now) / 1e6) ms \(s)")
        if recent.count > 60 { recent.removeFirst(recent.count - 60) }
    }

    mutating func boot(_ i: Int) {
        nodes[i].boot += 1
        nodes[i].up = true
        nodes[i].paused = false
        nodes[i].fsyncBusy = false
        nodes[i].pending = [:]
        nodes[i].bootTrue = now
        nodes[i].bootLocal += Int64(random.below(1_000_000_000))
        nodes[i].groups = (0..<scenario.partitions).map { p in
            let d = nodes[i].disks[p]
            let entries = d.entries.keys.sorted().map { d.entries[$0]! }
            let stored = RaftStoredState(hardState: d.hardState, snapshot: d.snapshot, entries: entries, applied: d.applied)
            return Raft(id: nodes[i].id, partition: p, stored: stored, config: config, seed: random.next(), now: local(i))
        }
        schedule(.tick(i), inNs: Int64(random.below(Int(Self.tickNs))))
    }

    mutating func handle(_ event: Event) {
        switch event {
        case .tick(let i):
            guard nodes[i].up else { return }
            schedule(.tick(i), inNs: Int64(Double(Self.tickNs) / nodes[i].rate))
            guard !nodes[i].paused else { return }
            let t = local(i)
            for p in 0..<scenario.partitions { nodes[i].groups[p].tick(now: t) }
            pump(i)
            if workflows { driveWorkflows(i) }
        case .deliver(let m, let i):
            guard nodes[i].up else { return }
            if nodes[i].paused {
                schedule(.deliver(m, to: i), inNs: ms(5))
                return
            }
            nodes[i].groups[m.partition].step(m, now: local(i))
            pump(i)
            // An acknowledgement may commit a checkpoint its runner waits for.
            if workflows { driveWorkflows(i) }
        case .fsyncDone(let i, let bootNumber):
            guard nodes[i].up, nodes[i].boot == bootNumber else { return }
            if nodes[i].paused {
                schedule(.fsyncDone(i, boot: bootNumber), inNs: ms(5))
                return
            }
            completeFsync(i)
        case .crash(let i):
            guard nodes[i].up else { return }
            note("crash \(nodes[i].id)")
            nodes[i].up = false
            nodes[i].groups = []
            nodes[i].inFlight = []
            nodes[i].pending = [:]
            nodes[i].checkpointing = [:]
            nodes[i].answered = [:]
            nodes[i].running = []
        case .restart(let i):
            guard !nodes[i].up else { return }
            note("restart \(nodes[i].id)")
            boot(i)
        case .pause(let i, let pauseMs):
            guard nodes[i].up, !nodes[i].paused else { return }
            note("pause \(nodes[i].id) \(pauseMs) ms")
            nodes[i].paused = true
            schedule(.resume(i), inNs: ms(pauseMs))
        case .resume(let i):
            guard nodes[i].up else { return }
            note("resume \(nodes[i].id)")
            nodes[i].paused = false
        case .cut(let pairs):
            note("cut \(pairs.map { "\($0.from)->\($0.to)" })")
            cut = Set(pairs)
        case .heal:
            note("heal")
            cut = []
            loss = min(loss, 0.02)
            for i in nodes.indices where !nodes[i].up { boot(i) }
            for i in nodes.indices where nodes[i].paused { nodes[i].paused = false }
        case .reportDown(let about, let to):
            guard nodes[to].up, !nodes[to].paused else { return }
            let t = local(to)
            for p in 0..<scenario.partitions { nodes[to].groups[p].peerIsDown(nodes[about].id, now: t) }
            pump(to)
        case .write:
            // Writes stop before the end, so the last commits can reach everyone.
            guard now < ms(scenario.faultPhaseMs + scenario.quietPhaseMs - 2_000) else { return }
            schedule(.write, inNs: Int64(1_000_000_000 / scenario.writesPerSecond))
            write()
        case .read:
            schedule(.read, inNs: ms(5))
            read()
        case .transfer:
            let p = random.below(scenario.partitions)
            guard let i = nodes.indices.first(where: { nodes[$0].up && !nodes[$0].paused && nodes[$0].groups[p].role == .leader }) else { return }
            let target = nodes[(i + 1 + random.below(scenario.nodes - 1)) % scenario.nodes].id
            note("transfer p\(p) \(nodes[i].id) → \(target)")
            nodes[i].groups[p].transferLeadership(to: target, now: local(i))
            pump(i)
        case .finalCheck:
            checkLogsMatch()
            if failure == nil { finalCheck() }
            if failure == nil, workflows { finalWorkflowCheck() }
        case .startInstance:
            guard now < ms(scenario.faultPhaseMs) else { return }
            schedule(.startInstance, inNs: ms(40))
            startInstance()
        case .taskDone(let i, let bootNumber, let p, let id, let key, let attempt):
            taskDone(i, boot: bootNumber, partition: p, instance: id, key: key, attempt: attempt)
        }
    }

    /// Hands the next ready to the simulated disk, unless an fsync is under way. As in the
    /// node, a leader's appends and heartbeats leave at once, also while an fsync is under way;
    /// everything else leaves once the ready is durable.
    mutating func pump(_ i: Int) {
        guard nodes[i].up else { return }
        guard !nodes[i].fsyncBusy else {
            for p in 0..<scenario.partitions {
                for m in nodes[i].groups[p].takeMessagesThatCanLeave() { send(m, from: i) }
            }
            return
        }
        var readies: [RaftReady?] = []
        var any = false
        for p in 0..<scenario.partitions {
            if nodes[i].groups[p].hasReady {
                var r = nodes[i].groups[p].ready()
                for m in r.messages where m.canLeaveBeforeFsync { send(m, from: i) }
                r.messages.removeAll(where: \.canLeaveBeforeFsync)
                readies.append(r)
                any = true
            } else {
                readies.append(nil)
            }
        }
        guard any else {
            if workflows { driveWorkflows(i) }
            return
        }
        nodes[i].inFlight = readies
        nodes[i].fsyncBusy = true
        schedule(.fsyncDone(i, boot: nodes[i].boot), inNs: Int64(50_000 + random.below(1_500_000)))
    }

    /// The fsync finished: the ready is durable; send, apply, advance.
    mutating func completeFsync(_ i: Int) {
        let readies = nodes[i].inFlight
        nodes[i].inFlight = []
        nodes[i].fsyncBusy = false
        for (p, maybe) in readies.enumerated() {
            guard let r = maybe else { continue }
            // Take the disk out (so it is uniquely referenced and mutates in place) and put
            // it back below.
            var disk = nodes[i].disks[p]
            nodes[i].disks[p] = Disk(snapshot: disk.snapshot)
            if let h = r.hardState { disk.hardState = h }
            if let s = r.snapshot {
                disk.snapshot = s.meta
                disk.entries = [:]
                disk.state = Self.decodeState(s.data)
                disk.applied = s.meta.index
                note("\(nodes[i].id) p\(p) installs snapshot at \(s.meta.index)")
            }
            if let first = r.entries.first?.index {
                for k in disk.entries.keys where k >= first { disk.entries[k] = nil }
                for e in r.entries {
                    disk.entries[e.index] = e
                    recordEntry(p, e)
                }
            }
            // Snapshot messages carry the state as of before this ready's commits.
            for var m in r.messages {
                if case .snapshot(let meta, _, let sentAt) = m.body {
                    precondition(meta.index == disk.applied, "snapshot meta \(meta.index) is not the applied index \(disk.applied)")
                    m.body = .snapshot(meta: meta, data: Self.encodeState(disk.state), sentAt: sentAt)
                    stats.snapshotsSent += 1
                }
                send(m, from: i)
            }
            for e in r.committed {
                guard e.index == disk.applied + 1 else {
                    failure = "\(nodes[i].id) p\(p) applies \(e.index) after \(disk.applied)"
                    nodes[i].disks[p] = disk
                    return
                }
                disk.applied = e.index
                if e.kind == .command, e.data.count == 9 {
                    disk.state[e.data[0]] = Self.version(e.data)
                }
                let key = PartitionIndex(partition: p, index: e.index)
                let firstApply = appliedEntries[key] == nil
                if let seen = appliedEntries[key] {
                    if seen != e {
                        failure = "state machine safety: \(nodes[i].id) p\(p) applies \(e.term)/\(e.data) at \(e.index), another node applied \(seen.term)/\(seen.data)"
                        nodes[i].disks[p] = disk
                        return
                    }
                } else {
                    appliedEntries[key] = e
                }
                if e.kind == .command, e.data.first == WorkflowEntry.tag {
                    applyWorkflowEntry(e, partition: p, node: i, disk: &disk, first: firstApply)
                    if failure != nil {
                        nodes[i].disks[p] = disk
                        return
                    }
                }
                if let w = nodes[i].pending.removeValue(forKey: key) {
                    if w.term == e.term {
                        acks[p].append(Ack(index: e.index, term: e.term, key: w.key, version: w.version, at: now))
                        maxAckedIndex[p] = max(maxAckedIndex[p], e.index)
                        stats.acked += 1
                    }
                }
            }
            nodes[i].disks[p] = disk
            nodes[i].groups[p].advance(now: local(i))
            if scenario.compactEvery > 0, disk.applied >= nodes[i].groups[p].snapshotMeta.index + scenario.compactEvery * 2,
               let meta = nodes[i].groups[p].compact(to: disk.applied - scenario.compactEvery) {
                nodes[i].disks[p].snapshot = meta
                for k in nodes[i].disks[p].entries.keys where k <= meta.index { nodes[i].disks[p].entries[k] = nil }
            }
        }
        pump(i)
        if workflows { driveWorkflows(i) }
    }

    mutating func recordEntry(_ p: Int, _ e: RaftEntry) {
        let key = PartitionTerm(partition: p, term: e.term)
        if let seen = entryData[key]?[e.index] {
            if seen != e.data { failure = "two entries at p\(p) index \(e.index) term \(e.term)" }
        } else {
            entryData[key, default: [:]][e.index] = e.data
        }
    }

    mutating func send(_ m: RaftMessage, from i: Int) {
        guard let to = nodes.firstIndex(where: { $0.id == m.to }) else { return }
        if cut.contains(Pair(from: i, to: to)) { return }
        if random.chance(loss) { return }
        let copies = random.chance(scenario.duplicate) ? 2 : 1
        for _ in 0..<copies {
            let delayUs = scenario.minDelayUs + random.below(max(1, scenario.maxDelayUs - scenario.minDelayUs))
            schedule(.deliver(m, to: to), inNs: Int64(delayUs) * 1_000)
        }
    }

    mutating func write() {
        let p = random.below(scenario.partitions)
        guard let i = nodes.indices.first(where: { nodes[$0].up && !nodes[$0].paused && nodes[$0].groups[p].role == .leader && nodes[$0].groups[p].transferee == nil }) else { return }
        let key = UInt8(random.below(4))
        let version = nextVersion
        nextVersion += 1
        var data: [UInt8] = [key]
        for shift in stride(from: 56, through: 0, by: -8) { data.append(UInt8(truncatingIfNeeded: version >> UInt64(shift))) }
        guard let (index, term) = nodes[i].groups[p].propose(data, now: local(i)) else { return }
        recordEntry(p, RaftEntry(index: index, term: term, kind: .command, data: data))
        nodes[i].pending[PartitionIndex(partition: p, index: index)] = (term, key, version)
        stats.writes += 1
        pump(i)
    }

    /// A lease read: whoever can serve reads for a random partition answers from its applied
    /// state, which must include every write acknowledged before now.
    mutating func read() {
        let p = random.below(scenario.partitions)
        stats.reads += 1
        for i in nodes.indices where nodes[i].up && !nodes[i].paused {
            guard nodes[i].groups[p].canServeReads(now: local(i)) else { continue }
            stats.leaseReads += 1
            let applied = nodes[i].disks[p].applied
            if applied < maxAckedIndex[p] {
                failure = "stale lease read: \(nodes[i].id) p\(p) serves applied \(applied) but index \(maxAckedIndex[p]) was acknowledged"
            }
        }
    }

    // MARK: - Invariants

    /// Checks after `event`. Only the node an event reached can have changed role, term or
    /// lease (time passing only shortens leases), so for node events that node is checked
    /// against all others; for cluster-wide events, everyone. Either way it is the full check.
    mutating func checkInvariants(after event: Event) {
        switch event {
        case .tick(let i), .deliver(_, let i), .fsyncDone(let i, _), .reportDown(_, let i), .restart(let i):
            checkInvariants(nodes: i...i)
        case .write, .read, .startInstance, .taskDone:
            break  // proposals and reads change no role, term or lease
        default:
            checkInvariants(nodes: nodes.indices)
        }
    }

    mutating func checkInvariants<R: Sequence<Int>>(nodes changed: R) {
        for p in 0..<scenario.partitions {
            var holders: [RaftNodeID] = []
            for i in changed where nodes[i].up {
                let g = nodes[i].groups[p]
                let role = g.role, term = g.term, lease = g.holdsLease(now: local(i))
                if role == .leader {
                    let key = PartitionTerm(partition: p, term: term)
                    if let other = leaders[key], other != nodes[i].id {
                        failure = "two leaders in p\(p) term \(term): \(other) and \(nodes[i].id)"
                        return
                    }
                    if leaders[key] == nil {
                        leaders[key] = nodes[i].id
                        stats.elections += 1
                        note("\(nodes[i].id) leads p\(p) term \(term)")
                    }
                    if wasLeader[i][p] != term {
                        wasLeader[i][p] = term
                        // Leader completeness binds leaders of later terms: a candidate of an
                        // older term may still win it (paused mid-election, it counts the votes
                        // of that term on waking) and lack what a newer term committed; it
                        // cannot commit, nor hold a lease, since the voters have moved on.
                        for a in acks[p] where a.index > g.snapshotMeta.index && a.term <= g.term {
                            if g.term(at: a.index) != a.term {
                                failure = "acknowledged write p\(p) \(a.index)/\(a.term) missing from new leader \(g.id) term \(g.term)"
                                return
                            }
                        }
                    }
                }
                if lease {
                    holders.append(nodes[i].id)
                    for other in nodes.indices where other != i && nodes[other].up && !changed.contains(other) {
                        if nodes[other].groups[p].holdsLease(now: local(other)) { holders.append(nodes[other].id) }
                    }
                }
            }
            if holders.count > 1 {
                failure = "p\(p): \(holders) hold leases at the same time"
                return
            }
        }
    }

    /// Log matching: where two logs hold an entry of the same index and term, they hold the
    /// same entries up to it.
    mutating func checkLogsMatch() {
        for p in 0..<scenario.partitions {
            let live = nodes.indices.filter { nodes[$0].up }
            for a in live {
                for b in live where b > a {
                    let x = nodes[a].groups[p], y = nodes[b].groups[p]
                    let low = max(x.firstIndex, y.firstIndex)
                    var i = min(x.lastIndex, y.lastIndex)
                    while i >= low, x.term(at: i) != y.term(at: i) { i -= 1 }
                    while i >= low {
                        if x.entry(at: i) != y.entry(at: i) {
                            failure = "logs of \(x.id) and \(y.id) differ at p\(p) index \(i) below a matching entry"
                            return
                        }
                        i -= 1
                    }
                }
            }
        }
    }

    mutating func finalCheck() {
        for p in 0..<scenario.partitions {
            let leadersNow = nodes.indices.filter { nodes[$0].up && nodes[$0].groups[p].role == .leader }
            guard leadersNow.count == 1, let l = leadersNow.first else {
                failure = "p\(p) has \(leadersNow.count) leaders after \(scenario.quietPhaseMs) ms of quiet"
                return
            }
            let commit = nodes[l].groups[p].commit
            for i in nodes.indices {
                let d = nodes[i].disks[p]
                guard d.applied >= maxAckedIndex[p] else {
                    failure = "\(nodes[i].id) p\(p) applied only \(d.applied) after quiet; \(maxAckedIndex[p]) was acknowledged (leader commit \(commit), follower commit \(nodes[i].groups[p].commit) last \(nodes[i].groups[p].lastIndex) term \(nodes[i].groups[p].term), leader term \(nodes[l].groups[p].term) progress \(nodes[l].groups[p].progressDescription))"
                    return
                }
            }
            // Every node's state machine agrees with the latest acknowledged value of each key
            // unless a later write (acknowledged or not) replaced it.
            var latest: [UInt8: UInt64] = [:]
            for a in acks[p] { latest[a.key] = max(latest[a.key] ?? 0, a.version) }
            for i in nodes.indices {
                for (key, version) in latest where (nodes[i].disks[p].state[key] ?? 0) < version {
                    failure = "\(nodes[i].id) p\(p) lost acknowledged write of key \(key) version \(version)"
                    return
                }
            }
        }
    }

    static func version(_ data: [UInt8]) -> UInt64 {
        data[1...8].reduce(0) { $0 << 8 | UInt64($1) }
    }

    static func encodeState(_ state: [UInt8: UInt64]) -> [UInt8] {
        var out: [UInt8] = []
        for key in state.keys.sorted() {
            out.append(key)
            let v = state[key]!
            for shift in stride(from: 56, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: v >> UInt64(shift))) }
        }
        return out
    }

    static func decodeState(_ data: [UInt8]) -> [UInt8: UInt64] {
        var state: [UInt8: UInt64] = [:]
        var i = 0
        while i + 9 <= data.count {
            state[data[i]] = Array(data[i..<i + 9]).withUnsafeBufferPointer { Self.version(Array($0)) }
            i += 9
        }
        return state
    }
}
