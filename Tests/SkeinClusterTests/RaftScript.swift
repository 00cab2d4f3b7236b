import SkeinCluster
import Testing

/// A Raft group driven message by message, for the known traps of the protocol kept as
/// scripts (as etcd/raft keeps its `testdata/*.txt`): nothing moves unless the script says
/// so. A message waits in ``inFlight`` until the script delivers or drops it; a node's ready
/// is made durable only by ``persist(_:)``; time passes only in ``elapse(_:ticking:)``, and
/// only the nodes named there are ticked (so the script picks who campaigns).
///
/// Two checks run on every step: no two nodes apply different entries at one index (state
/// machine safety), and every entry a leader counted as committed is in the log of every
/// later leader (leader completeness). A script reports what they found in ``violations``.
struct RaftScript {
    let config: RaftConfig
    private(set) var nodes: [RaftNodeID: Raft] = [:]
    /// What each node made durable.
    private(set) var disk: [RaftNodeID: RaftStoredState] = [:]
    private(set) var down: Set<RaftNodeID> = []
    var inFlight: [RaftMessage] = []
    private(set) var now: Duration = .seconds(10)
    /// Index → the entry applied there first, by whom.
    private var appliedAt: [UInt64: (entry: RaftEntry, by: RaftNodeID)] = [:]
    /// Entries some leader counted as committed: (index, term).
    private var committed: Set<[UInt64]> = []
    private(set) var violations: [String] = []
    private var seeds: UInt64 = 1

    init(voters: [RaftNodeID], others: [RaftNodeID] = [], config: RaftConfig = RaftConfig()) {
        self.config = config
        let configuration = RaftConfiguration(voters: voters)
        for id in voters + others {
            disk[id] = .fresh(configuration)
            nodes[id] = makeRaft(id)
        }
    }

    private mutating func makeRaft(_ id: RaftNodeID) -> Raft {
        seeds += 1
        return Raft(id: id, partition: 0, stored: disk[id]!, config: config, seed: seeds, now: now)
    }

    func raft(_ id: RaftNodeID) -> Raft { nodes[id]! }

    // MARK: - Moves

    /// Makes `id`'s ready durable, queues its messages, applies what it commits, advances.
    mutating func persist(_ id: RaftNodeID) {
        guard !down.contains(id), let r = nodes[id], r.hasReady else { return }
        let ready = r.ready()
        var s = disk[id]!
        if let h = ready.hardState { s.hardState = h }
        if let snap = ready.snapshot {
            s.snapshot = snap
            s.entries = []
            s.applied = snap.index
        }
        if let first = ready.entries.first?.index {
            s.entries.removeAll { $0.index >= first }
            s.entries += ready.entries
        }
        for e in ready.committed {
            s.applied = e.index
            if let seen = appliedAt[e.index], seen.entry != e {
                violations.append("\(id) applied \(e.kind)/term \(e.term) at index \(e.index); \(seen.by) applied \(seen.entry.kind)/term \(seen.entry.term) there")
            } else if appliedAt[e.index] == nil {
                appliedAt[e.index] = (e, id)
            }
        }
        disk[id] = s
        inFlight += ready.messages
        r.advance(now: now)
        observe(id)
    }

    /// Queues the appends and heartbeats `id` may send before its own write is durable.
    mutating func sendEarly(_ id: RaftNodeID) {
        guard !down.contains(id), let r = nodes[id] else { return }
        inFlight += r.takeMessagesThatCanLeave()
    }

    /// Delivers (in order) the messages in flight that `matching` picks, to nodes that are up.
    mutating func deliver(_ matching: (RaftMessage) -> Bool = { _ in true }) {
        let picked = inFlight.filter(matching)
        inFlight.removeAll(where: matching)
        for m in picked where !down.contains(m.to) && !down.contains(m.from) {
            nodes[m.to]?.step(m, now: now)
            observe(m.to)
        }
    }

    mutating func drop(_ matching: (RaftMessage) -> Bool) {
        inFlight.removeAll(where: matching)
    }

    /// Persists and delivers among `group` until nothing moves (or `until` holds); messages
    /// that leave the group, or that `dropping` picks (seeing the script as it is), are lost.
    mutating func settle(among group: Set<RaftNodeID>, dropping: (RaftScript, RaftMessage) -> Bool = { _, _ in false },
                         until: (RaftScript) -> Bool = { _ in false }) {
        for _ in 0..<10_000 {
            if until(self) { return }
            for id in group.sorted() {
                sendEarly(id)
                persist(id)
            }
            let script = self
            drop { !group.contains($0.from) || !group.contains($0.to) || dropping(script, $0) }
            if inFlight.isEmpty, !group.contains(where: { !down.contains($0) && nodes[$0]!.hasReady }) { return }
            deliver()
        }
        Issue.record("the group \(group.sorted()) never went quiet")
    }

    /// Moves time on by `d` in steps of 10 ms, ticking only `ticking` and settling `among`
    /// after each step, until `until` holds.
    mutating func elapse(_ d: Duration, ticking: Set<RaftNodeID>, among group: Set<RaftNodeID>,
                         until: (RaftScript) -> Bool = { _ in false }) {
        let end = now + d
        while now < end, !until(self) {
            now += .milliseconds(10)
            for id in ticking.sorted() where !down.contains(id) { nodes[id]!.tick(now: now) }
            settle(among: group, until: until)
        }
    }

    /// Lets `id` campaign (after every promise made to an earlier leader has run out) with
    /// the votes of `group`, until it leads. Its first appends stay in flight.
    mutating func elect(_ id: RaftNodeID, among group: Set<RaftNodeID>) {
        elapse(.seconds(10), ticking: [id], among: group.union([id])) { $0.raft(id).role == .leader }
        if raft(id).role != .leader { Issue.record("\(id) did not win an election among \(group.sorted())") }
    }

    /// Loses `id`'s memory and everything it did not persist; its messages in flight vanish.
    mutating func crash(_ id: RaftNodeID) {
        down.insert(id)
        drop { $0.from == id || $0.to == id }
    }

    mutating func restart(_ id: RaftNodeID) {
        down.remove(id)
        nodes[id] = makeRaft(id)
    }

    // MARK: - Checks

    /// After `id` changed: a leader's commit index marks entries committed; a new leader must
    /// hold every entry any leader counted as committed.
    private mutating func observe(_ id: RaftNodeID) {
        let r = nodes[id]!
        guard r.role == .leader else { return }
        for pair in committed where r.term(at: pair[0]) != pair[1] && pair[0] >= r.firstIndex {
            violations.append("leader \(id) of term \(r.term) lacks entry \(pair[0]) of term \(pair[1]), which was committed")
            committed.remove(pair)
        }
        var i = r.commit
        while i >= r.firstIndex, i > 0, let t = r.term(at: i) {
            if !committed.insert([i, t]).inserted { break }
            i -= 1
        }
    }
}
