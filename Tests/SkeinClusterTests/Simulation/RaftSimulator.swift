import HeapModule
import SkeinCluster
import SkeinWorkflow

/// A whole cluster of the nodes' real replication hosts (``ReplicationHost``: the code a node
/// runs) in one process, over a simulated network, disk (``SimStore``) and set of clocks, all
/// driven by one seed.
///
/// The network loses, delays, duplicates and reorders messages and is cut (both ways or one
/// way); nodes crash — losing what their last fsync did not cover, and tearing the write under
/// way — and restart, pause, and run clocks up to the stated drift bound fast or slow; disks are
/// slow, fail a write or one partition's share of it, fill up, and fail snapshot reads and
/// stages; membership sometimes reports a live leader dead; leaders hand leadership over.
/// Logs are compacted after a few dozen entries, so followers that fall behind catch up by
/// streamed snapshots all the time. Clients write through whoever leads (acknowledged at
/// commit) and read through whoever holds a lease.
///
/// After every event: at most one leader per partition per term; no two nodes hold a valid
/// lease for one partition at the same true time; one entry per (index, term); every
/// acknowledged write is in every later leader's log; no two nodes apply different entries at
/// one index; a lease read sees every write acknowledged before it began; nothing answered at
/// commit is refused at apply; no write fails without an injected fault. Every 1000 events
/// and at the end, logs match pairwise. At the end, after healing: every partition has a
/// leader and every node holds every acknowledged write.
final class RaftSimulator {
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
        var storageFaults: Bool
        var writesPerSecond: Int
        var keys: Int
        /// Compact past this many entries (0: never).
        var compactEvery: Int
        var chunkBytes: Int
        var faultPhaseMs: Int
        var quietPhaseMs: Int

        var description: String {
            "\(nodes) voters, \(partitions) partitions, loss \(Int(loss * 100))%, dup \(Int(duplicate * 100))%, delay \(minDelayUs)-\(maxDelayUs) µs, crashes \(crashes), pauses \(pauses), cuts \(cuts), false down reports \(falseDownReports), transfers \(transfers), storage faults \(storageFaults), \(writesPerSecond) writes/s over \(keys) keys, compact every \(compactEvery), chunks of \(chunkBytes) bytes"
        }
    }

    enum Event {
        case tick(Int)
        case deliver(RaftMessage, to: Int)
        case storageDone(node: Int, boot: Int, op: Int)
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

    struct Node {
        var id: RaftNodeID
        var up = true
        var paused = false
        var boot = 0
        /// Clock rate against true time, within the drift bound.
        var rate: Double
        var bootTrue: Int64 = 0
        var bootLocal: Int64 = 0
        var host: ReplicationHost?
        var store: SimStore!
        /// Workflow mode: checkpoints proposed and not yet answered, checkpoints answered at
        /// commit and not yet applied (the runner's state in memory), and task attempts running.
        var checkpointing: [String: Checkpoint] = [:]
        var answered: [String: Checkpoint] = [:]
        var running: Set<String> = []
    }

    struct PartitionIndex: Hashable { var partition: Int; var index: UInt64 }
    struct PartitionTerm: Hashable { var partition: Int; var term: UInt64 }
    struct Ack { var index: UInt64; var term: UInt64; var key: UInt8; var version: UInt64; var at: Int64 }

    let seed: UInt64
    let scenario: Scenario
    let config: HostConfig
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
    var stats = Stats()
    struct Stats: Equatable {
        var writes = 0, acked = 0, reads = 0, leaseReads = 0, elections = 0
        var snapshotsInstalled = 0, compactions = 0, storageFaults = 0, torn = 0
    }

    static let tickNs: Int64 = 10_000_000
    var leaderlessGrace = 0
    var finished = false

    /// Workflow mode: instances run on the partitions' owners (see WorkflowSimulation.swift).
    let workflows: Bool
    var wf = WorkflowChecker()

    /// `clockDrift` is how far the simulated clocks really drift (default: the bound the
    /// configuration states); setting it past the bound must break leases.
    init(seed: UInt64, raft: RaftConfig = RaftConfig(), scenario: Scenario? = nil, clockDrift: Double? = nil, workflows: Bool = false) {
        self.seed = seed
        self.workflows = workflows
        var r = DeterministicRandom(seed: seed)
        let s = scenario ?? Self.draw(&r)
        self.scenario = s
        var c = HostConfig()
        c.raft = raft
        c.raft.snapshotStall = .milliseconds(500)
        c.compactAfterEntries = s.compactEvery > 0 ? s.compactEvery : .max
        c.keepEntries = max(1, s.compactEvery / 4)
        c.chunkBytes = s.chunkBytes
        c.chunkTimeout = .milliseconds(100)
        c.viewIdleLimit = .seconds(1)
        c.fenceRetryFirst = .milliseconds(20)
        c.fenceRetryLimit = .milliseconds(300)
        c.waitLimit = .seconds(2)
        self.config = c
        self.random = r
        self.loss = s.loss
        acks = Array(repeating: [], count: s.partitions)
        maxAckedIndex = Array(repeating: 0, count: s.partitions)
        wasLeader = Array(repeating: Array(repeating: 0, count: s.partitions), count: s.nodes)
        let ids = (1...s.nodes).map { "10.0.0.\($0):9000" }
        let configuration = RaftConfiguration(voters: ids)
        for id in ids {
            let drift = (random.chance(0.5) ? 1.0 : -1.0) * (clockDrift ?? raft.maxDrift) * Double(random.below(101)) / 100
            nodes.append(Node(id: id, rate: 1 + drift, bootLocal: Int64(random.below(1_000_000_000))))
        }
        for i in nodes.indices {
            nodes[i].store = SimStore(sim: self, node: i, partitions: s.partitions, configuration: configuration)
            boot(i)
        }
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
            storageFaults: hostile && r.chance(0.5),
            writesPerSecond: 50 + r.below(250),
            keys: 4 + r.below(28),
            compactEvery: r.chance(0.8) ? 8 + r.below(40) : 0,
            chunkBytes: 9 * (1 + r.below(12)),
            faultPhaseMs: 1_500 + r.below(1_500),
            quietPhaseMs: 3_000
        )
    }

    // MARK: - Running

    func schedule(_ event: Event, inNs delay: Int64) {
        order += 1
        queue.insert(Scheduled(time: now + max(0, delay), order: order, event: event))
    }

    func ms(_ n: Int) -> Int64 { Int64(n) * 1_000_000 }

    func local(_ i: Int) -> Duration {
        let n = nodes[i]
        return .nanoseconds(n.bootLocal + Int64(Double(now - n.bootTrue) * n.rate))
    }

    /// Runs to the end; nil if every invariant held, else the report.
    func run() -> String? {
        let faultEnd = ms(scenario.faultPhaseMs)
        let end = faultEnd + ms(scenario.quietPhaseMs)
        if workflows {
            schedule(.startInstance, inNs: ms(20))
        } else {
            schedule(.write, inNs: ms(5))
        }
        schedule(.read, inNs: ms(7))
        planFaults(until: faultEnd)
        if scenario.storageFaults { for n in nodes { n.store.faultsOn = true } }
        schedule(.heal, inNs: faultEnd)
        schedule(.finalCheck, inNs: end)
        while failure == nil, let next = queue.popMin() {
            now = next.time
            eventsRun += 1
            if eventsRun > 3_000_000 {
                // A run has some tens of thousands of events; millions mean messages feeding
                // each other without end (a livelock), which is a bug too.
                failure = "more than 3,000,000 events: a message storm"
                break
            }
            handle(next.event)
            if finished { break }
            if failure == nil { checkInvariants(after: next.event) }
            if failure == nil, eventsRun % 1000 == 0 { checkLogsMatch() }
        }
        for n in nodes {
            stats.torn += n.store.tornAtOpen
            if let c = n.host?.counters {
                stats.snapshotsInstalled += c.snapshotsInstalled
                stats.compactions += c.compactions
                stats.storageFaults += c.storageFaults
            }
        }
        guard let failure else { return nil }
        let mode = workflows ? "workflow" : "raft"
        return "\(mode) simulation seed \(seed) failed at \(Double(now) / 1e9) s after \(eventsRun) events: \(failure)\nscenario: \(scenario)\nreplay: \(workflows ? "SKEIN_WF_SIM_SEED" : "SKEIN_RAFT_SIM_SEED")=\(seed) swift test --filter \(workflows ? "WorkflowSimulation" : "RaftSimulation")\nlast events:\n" + recent.joined(separator: "\n")
    }

    func planFaults(until end: Int64) {
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

    func note(_ s: String) {
        recent.append("\(Double(now) / 1e6) ms \(s)")
        if recent.count > 60 { recent.removeFirst(recent.count - 60) }
    }

    func boot(_ i: Int) {
        nodes[i].boot += 1
        nodes[i].up = true
        nodes[i].paused = false
        nodes[i].bootTrue = now
        nodes[i].bootLocal += Int64(random.below(1_000_000_000))
        let host = ReplicationHost(me: nodes[i].id, stored: nodes[i].store.stored(), config: config, seed: random.next(),
                                   storage: nodes[i].store, transport: SimTransport(sim: self, node: i),
                                   clock: { [unowned self] in self.local(i) })
        host.onRefusedAfterAnswer = { [unowned self] a in
            if failure == nil { failure = "\(nodes[i].id) p\(a.partition): entry \(a.index) was answered at commit and then refused when applied" }
        }
        host.onNote = { [unowned self] n in
            switch n {
            case .leads, .stoppedLeading: break
            default: note("\(nodes[i].id) \(n)")
            }
        }
        nodes[i].host = host
        schedule(.tick(i), inNs: Int64(random.below(Int(Self.tickNs))))
    }

    func handle(_ event: Event) {
        switch event {
        case .tick(let i):
            guard nodes[i].up else { return }
            schedule(.tick(i), inNs: Int64(Double(Self.tickNs) / nodes[i].rate))
            guard !nodes[i].paused, let host = nodes[i].host else { return }
            host.tick()
            if workflows { driveWorkflows(i) }
        case .deliver(let m, let i):
            guard nodes[i].up, let host = nodes[i].host else { return }
            if nodes[i].paused {
                schedule(.deliver(m, to: i), inNs: ms(5))
                return
            }
            host.receive([m])
            // An acknowledgement may commit a checkpoint its runner waits for.
            if workflows { driveWorkflows(i) }
        case .storageDone(let i, let bootNumber, let op):
            guard nodes[i].up, nodes[i].boot == bootNumber else { return }
            if nodes[i].paused {
                schedule(.storageDone(node: i, boot: bootNumber, op: op), inNs: ms(5))
                return
            }
            nodes[i].store.complete(op: op)
            if workflows { driveWorkflows(i) }
        case .crash(let i):
            guard nodes[i].up else { return }
            note("crash \(nodes[i].id)")
            collectCounters(i)
            nodes[i].up = false
            nodes[i].host = nil
            nodes[i].store.crash(tearing: random.chance(0.5))
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
            for n in nodes { n.store.faultsOn = false }
            for i in nodes.indices where !nodes[i].up { boot(i) }
            for i in nodes.indices where nodes[i].paused { nodes[i].paused = false }
        case .reportDown(let about, let to):
            guard nodes[to].up, !nodes[to].paused, let host = nodes[to].host else { return }
            host.peerIsDown(nodes[about].id)
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
            guard let i = nodes.indices.first(where: { live($0)?.groups[p].role == .leader }) else { return }
            let target = nodes[(i + 1 + random.below(scenario.nodes - 1)) % scenario.nodes].id
            note("transfer p\(p) \(nodes[i].id) → \(target)")
            nodes[i].host!.transferLeadership(partition: p, to: target)
        case .finalCheck:
            // Liveness is owed eventually, not at an instant: a leadership hand-over of the
            // balance may be under way. A partition without a leader gets up to 2 s more.
            if leaderlessGrace < 4, (0..<scenario.partitions).contains(where: { p in !nodes.indices.contains { live($0)?.groups[p].role == .leader && live($0)?.isFenced(p) == false } }) {
                leaderlessGrace += 1
                schedule(.finalCheck, inNs: ms(500))
                return
            }
            finished = true
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

    /// The host of a node that is up and not paused.
    func live(_ i: Int) -> ReplicationHost? {
        nodes[i].up && !nodes[i].paused ? nodes[i].host : nil
    }

    private func collectCounters(_ i: Int) {
        guard let c = nodes[i].host?.counters else { return }
        stats.snapshotsInstalled += c.snapshotsInstalled
        stats.compactions += c.compactions
        stats.storageFaults += c.storageFaults
    }

    func send(_ m: RaftMessage, from i: Int) {
        guard let to = nodes.firstIndex(where: { $0.id == m.to }) else { return }
        if cut.contains(Pair(from: i, to: to)) { return }
        if random.chance(loss) { return }
        let copies = random.chance(scenario.duplicate) ? 2 : 1
        for _ in 0..<copies {
            let delayUs = scenario.minDelayUs + random.below(max(1, scenario.maxDelayUs - scenario.minDelayUs))
            schedule(.deliver(m, to: to), inNs: Int64(delayUs) * 1_000)
        }
    }

    /// A client write through whoever leads the partition, acknowledged when the host answers
    /// (at commit: a put cannot be refused when applied).
    func write() {
        let p = random.below(scenario.partitions)
        guard let i = nodes.indices.first(where: { live($0)?.groups[p].role == .leader && live($0)?.groups[p].transferee == nil }) else { return }
        let key = UInt8(random.below(scenario.keys))
        let version = nextVersion
        nextVersion += 1
        var data: [UInt8] = [key]
        for shift in stride(from: 56, through: 0, by: -8) { data.append(UInt8(truncatingIfNeeded: version >> UInt64(shift))) }
        stats.writes += 1
        nodes[i].host!.propose(data, partition: p, answer: .committed) { [unowned self] result in
            guard case .success(let a) = result else { return }
            acks[p].append(Ack(index: a.index, term: a.term, key: key, version: version, at: now))
            maxAckedIndex[p] = max(maxAckedIndex[p], a.index)
            stats.acked += 1
        }
    }

    /// A lease read: whoever may serve reads for a random partition waits until what it
    /// acknowledged at commit is applied (as the node does), then answers from its applied
    /// state, which must include every write acknowledged before the read began.
    func read() {
        let p = random.below(scenario.partitions)
        stats.reads += 1
        let before = maxAckedIndex[p]
        for i in nodes.indices {
            guard let host = live(i), case .success = host.readPermission(partition: p) else { continue }
            stats.leaseReads += 1
            host.whenCaughtUp(partition: p) { [unowned self] result in
                guard case .success = result, nodes[i].up else { return }
                let applied = nodes[i].store.current[p].applied
                if applied < before, failure == nil {
                    failure = "stale lease read: \(nodes[i].id) p\(p) serves applied \(applied) but index \(before) was acknowledged before the read"
                }
            }
        }
    }

    static func version(_ data: [UInt8]) -> UInt64 {
        data[1...8].reduce(0) { $0 << 8 | UInt64($1) }
    }
}
