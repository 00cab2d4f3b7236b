import Foundation
import SkeinCluster
import SkeinWorkflow

/// The workflow layer over the simulated cluster: the real ``InstanceMachine`` runs on each
/// partition's owner (the node that can serve reads: leader, lease, own-term entry applied),
/// every change is a log entry applied only on top of the version it was computed from, and
/// task attempts take simulated time, so owners die, lose leases and get partitioned while
/// tasks run. Checked: each task's result is committed at most once (after every event), and
/// after the quiet phase every instance that started has completed.
struct WorkflowEntry: Codable {
    static let tag: UInt8 = 0xF0
    var instance: String
    var base: UInt64
    var state: InstanceState
    var results: [String]

    func encode() -> [UInt8] { [Self.tag] + Array(try! JSONEncoder().encode(self)) }

    static func decode(_ data: [UInt8]) -> WorkflowEntry? {
        guard data.first == tag else { return nil }
        return try? JSONDecoder().decode(WorkflowEntry.self, from: Data(data.dropFirst()))
    }
}

/// A checkpoint a node's runner goes on from before it is applied: where it went, in which
/// term, and the state it commits.
struct Checkpoint {
    var at: RaftSimulator.PartitionIndex
    var term: UInt64
    var state: InstanceState
}

struct WorkflowChecker {
    /// Checkpoints whose runner was answered at commit, before they were applied.
    var answeredAtCommit: Set<RaftSimulator.PartitionIndex> = []
    /// Entries whose apply was counted (the first node to apply one counts it).
    var counted: Set<RaftSimulator.PartitionIndex> = []
    /// Committed results per `instance#task`.
    var committed: [String: Int] = [:]
    /// Attempts run per `instance#task` (may exceed one: an owner dies mid-task).
    var executions: [String: Int] = [:]
    var started: [String: Int] = [:]
    var nextInstance = 0
    var completed = 0

    /// then → fork (two branches) → join → loop of three → durable delay → then.
    static let workflow: Workflow = try! flow(Int.self)
        .then("a") { x, _ in x }
        .fork([ForkBranch("b1") { (x: Int, _) in x }, ForkBranch("b2") { (x: Int, _) in x }])
        .join("j") { _, _ in 0 }
        .loop("l", maxIterations: 5) { x, _ in x >= 3 ? .done(x) : .again(x + 1) }
        .delay("d", .milliseconds(30))
        .then("z") { x, _ in x }
        .build("sim")
    static let machine = InstanceMachine(workflow)
}

extension RaftSimulator {
    var wallMs: Int64 { now / 1_000_000 }

    func owns(_ i: Int, _ p: Int) -> Bool {
        guard let host = live(i) else { return false }
        return host.standing(partition: p).owns && host.groups[p].transferee == nil
    }

    func startInstance() {
        let p = random.below(scenario.partitions)
        guard let i = nodes.indices.first(where: { owns($0, p) }) else { return }
        let id = "w\(wf.nextInstance)-p\(p)"
        wf.nextInstance += 1
        let t = WorkflowChecker.machine.start(id: id, input: Payload(json: Data("0".utf8)), now: wallMs)
        propose(WorkflowEntry(instance: id, base: 0, state: t.state, results: Array(t.results.keys)), node: i, partition: p)
    }

    /// As the node's runner does: the checkpoint goes through the host with its version check,
    /// answered at commit when the host can decide the check, else at apply; the runner goes on
    /// from the answered state until the node applies it or stops leading in that term.
    func propose(_ entry: WorkflowEntry, node i: Int, partition p: Int) {
        guard let host = live(i) else { return }
        let boot = nodes[i].boot
        nodes[i].checkpointing[entry.instance] = Checkpoint(at: PartitionIndex(partition: p, index: 0), term: host.groups[p].term, state: entry.state)
        let check = VersionCheck(key: entry.instance, base: entry.base, next: entry.state.version)
        host.propose(entry.encode(), partition: p, answer: .committed, check: check) { [unowned self] result in
            guard nodes[i].up, nodes[i].boot == boot else { return }
            nodes[i].checkpointing[entry.instance] = nil
            guard case .success(let a) = result, !a.conflict else { return }
            let at = PartitionIndex(partition: p, index: a.index)
            if nodes[i].store.current[p].applied < a.index {
                nodes[i].answered[entry.instance] = Checkpoint(at: at, term: a.term, state: entry.state)
                wf.answeredAtCommit.insert(at)
            }
        }
    }

    /// The state a node's runner goes on from: the checkpoint answered at commit, if not yet
    /// applied, else what the node applied.
    func current(_ i: Int, _ p: Int, _ id: String) -> InstanceState? {
        nodes[i].answered[id]?.state ?? nodes[i].store.current[p].instances[id]
    }

    /// An answered checkpoint is settled once applied, or once this node stops leading in the
    /// term it was answered in (the runner then reloads from what is applied).
    func settleCheckpoints(_ i: Int, _ p: Int) {
        guard let host = nodes[i].host else { return }
        let g = host.groups[p]
        let applied = nodes[i].store.current[p].applied
        for (id, c) in nodes[i].answered where c.at.partition == p && (applied >= c.at.index || g.role != .leader || g.term != c.term || host.isFenced(p)) {
            nodes[i].answered[id] = nil
        }
    }

    /// On every partition this node owns: start the runnable tasks of its instances and fire
    /// their due timers, one checkpoint in flight per instance.
    func driveWorkflows(_ i: Int) {
        guard live(i) != nil else { return }
        for p in 0..<scenario.partitions {
            settleCheckpoints(i, p)
            guard owns(i, p) else { continue }
            let answered = nodes[i].answered.filter { $0.value.at.partition == p }.keys
            for id in Set(nodes[i].store.current[p].instances.keys).union(answered).sorted() {
                guard let state = current(i, p, id), !state.status.isTerminal, nodes[i].checkpointing[id] == nil else { continue }
                if let wake = state.wakeAt, wake <= wallMs {
                    let t = WorkflowChecker.machine.apply(.timer, to: state, now: wallMs)
                    if t.changed {
                        propose(WorkflowEntry(instance: id, base: state.version, state: t.state, results: Array(t.results.keys)), node: i, partition: p)
                        continue
                    }
                }
                for run in WorkflowChecker.machine.runnable(state, now: wallMs) {
                    let token = "\(id)|\(run.key)|\(run.attempt)"
                    guard !nodes[i].running.contains(token) else { continue }
                    nodes[i].running.insert(token)
                    wf.executions["\(id)#\(run.key)", default: 0] += 1
                    schedule(.taskDone(node: i, boot: nodes[i].boot, partition: p, instance: id, key: run.key, attempt: run.attempt),
                             inNs: Int64(1_000_000 + random.below(30_000_000)))
                }
            }
        }
    }

    /// What a task "returns": a loop body goes round three times; everything else is a number.
    func output(for key: String, state: InstanceState) -> Payload {
        if let hash = key.lastIndex(of: "#"), let iteration = Int(key[key.index(after: hash)...]) {
            return Payload(json: Data((iteration >= 3 ? #"{"done":\#(iteration)}"# : #"{"again":\#(iteration)}"#).utf8))
        }
        return Payload(json: Data("1".utf8))
    }

    func taskDone(_ i: Int, boot bootNumber: Int, partition p: Int, instance id: String, key: String, attempt: Int) {
        guard nodes[i].up, nodes[i].boot == bootNumber else { return }
        let token = "\(id)|\(key)|\(attempt)"
        if nodes[i].paused || nodes[i].checkpointing[id] != nil {
            // Wait for the owner to run again, or for the previous checkpoint to settle.
            schedule(.taskDone(node: i, boot: bootNumber, partition: p, instance: id, key: key, attempt: attempt), inNs: ms(5))
            return
        }
        nodes[i].running.remove(token)
        // A deposed owner's result is dropped here; had it been proposed, the log would refuse it.
        guard owns(i, p), let state = current(i, p, id) else { return }
        let t = WorkflowChecker.machine.apply(.taskCompleted(key: key, attempt: attempt, output: output(for: key, state: state), durationMs: 1),
                                              to: state, now: wallMs)
        guard t.changed else { return }
        propose(WorkflowEntry(instance: id, base: state.version, state: t.state, results: Array(t.results.keys)), node: i, partition: p)
    }

    /// A store applied (or refused) a checkpoint: count what the first apply committed.
    func appliedWorkflowEntry(_ entry: WorkflowEntry, accepted: Bool, node i: Int, partition p: Int, index: UInt64) {
        let at = PartitionIndex(partition: p, index: index)
        guard accepted else {
            if wf.answeredAtCommit.contains(at), failure == nil {
                failure = "\(nodes[i].id) p\(p) refuses checkpoint \(index) of \(entry.instance) when applying it, but its runner was answered at commit"
            }
            return
        }
        guard wf.counted.insert(at).inserted else { return }
        if entry.base == 0 { wf.started[entry.instance] = p }
        if entry.state.status == .completed { wf.completed += 1 }
        for key in entry.results {
            let k = "\(entry.instance)#\(key)"
            wf.committed[k, default: 0] += 1
            if wf.committed[k]! > 1, failure == nil {
                failure = "the result of \(k) was committed twice (p\(p) index \(index))"
                return
            }
        }
    }

    func finalWorkflowCheck() {
        for (id, p) in wf.started.sorted(by: { $0.key < $1.key }) {
            for i in nodes.indices where nodes[i].up {
                guard let state = nodes[i].store.current[p].instances[id] else {
                    failure = "\(nodes[i].id) never applied the start of \(id)"
                    return
                }
                guard state.status == .completed else {
                    failure = "\(id) is \(state.status.rawValue) on \(nodes[i].id) after the quiet phase (version \(state.version), frames \(state.frames.keys.sorted()))"
                    return
                }
            }
            for key in ["a", "b1", "b2", "j", "l#1", "l#2", "l#3", "z"] where wf.committed["\(id)#\(key)"] != 1 {
                failure = "\(id): the result of \(key) was committed \(wf.committed["\(id)#\(key)"] ?? 0) times"
                return
            }
        }
    }
}
