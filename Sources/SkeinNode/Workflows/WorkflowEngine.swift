import Foundation
import Logging
import SkeinCluster
import SkeinStore
import SkeinWorkflow
import Synchronization

/// Why a workflow request failed, with its HTTP status.
struct WorkflowFailure: Error, CustomStringConvertible {
    let code: Int
    let what: String
    let description: String
}

/// Runs the workflow instances of the partitions this node owns (leads, with the lease).
///
/// Each instance in memory has an ``InstanceRunner``; every change of an instance is computed
/// by the pure ``InstanceMachine`` and committed as one entry of its partition's log before
/// anything depends on it (the next task starts only after the previous result is committed).
/// When this node starts owning a partition it **adopts** the partition's unfinished
/// instances: running ones resume from their last checkpoint, parked ones re-arm their timers
/// from the stored wake time. When it stops owning one, its runners stop at once; results they
/// still produce can never commit (the log refuses a deposed leader's entries). An instance
/// that waits (delay, signal, pause) is dropped from memory, leaving only a timer.
actor WorkflowEngine {
    let registry: [String: Workflow]
    let cluster: ClusterHandle
    let replication: Replication
    let node: String
    let logger: Logger
    /// Partitions this node runs, with the epoch it adopted them in.
    private var owned: [Int: UInt64] = [:]
    /// Owned partitions whose lease lapsed (same epoch, still leading): no new task starts
    /// until the lease is back; a new epoch or another leader releases them.
    let suspended = Mutex<Set<Int>>([])
    private var runners: [String: InstanceRunner] = [:]
    /// Ids a start is under way for, and the starts of the same id waiting for it: one start
    /// of an id at a time, so a start's entry can never be refused.
    private var starting: [String: [CheckedContinuation<Void, Never>]] = [:]
    private var timers: [String: Task<Void, Never>] = [:]
    /// Instances whose runner stopped while this node led their partition without holding
    /// its lease: picked up again once the lease is back.
    private var stalled: [Int: Set<String>] = [:]
    /// Timeline lines that change no state, gathered per partition. A line rides on its
    /// instance's next checkpoint when that comes within ``noteWindow`` (a task's start line
    /// and its result then cost one entry); the rest are proposed together on their own.
    private let notes = Mutex<[Int: [PartitionCommand.TimelineBatch]]>([:])
    static let noteWindow: Duration = .milliseconds(10)

    init(workflows: [Workflow], cluster: ClusterHandle, replication: Replication, node: String, logger: Logger) {
        registry = Dictionary(workflows.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        self.cluster = cluster
        self.replication = replication
        self.node = node
        self.logger = logger
    }

    static func now() -> Int64 { Int64(Date().timeIntervalSince1970 * 1000) }

    nonisolated func partition(of id: String) -> Int { Partitioning.partition(of: id, count: replication.partitionCount) }

    /// Follows leadership as the replication host pushes it (``Replication/standingChanges``):
    /// adopts partitions this node comes to own, releases those it stops leading (or leads in a
    /// new epoch), and holds back new tasks while a lease has lapsed.
    func run() async {
        await reconcile(await replication.standings())
        for await _ in replication.standingChanges {
            guard !Task.isCancelled else { break }
            await reconcile(await replication.standings())
        }
        for p in owned.keys { await release(p) }
    }

    private func reconcile(_ all: [Standing]) async {
        for p in 0..<replication.partitionCount {
            let standing = all[p]
            if let epoch = owned[p] {
                if !standing.leads || standing.epoch != epoch {
                    owned[p] = nil
                    await release(p)
                    if standing.owns { owned[p] = standing.epoch; await adopt(p) }
                } else if standing.owns, suspended.withLock({ $0.remove(p) }) != nil {
                    for (id, runner) in runners where partition(of: id) == p { await runner.kick() }
                    for id in stalled.removeValue(forKey: p) ?? [] { await reload(id, partition: p) }
                } else if !standing.owns {
                    suspended.withLock { _ = $0.insert(p) }
                }
            } else if standing.owns {
                owned[p] = standing.epoch
                suspended.withLock { _ = $0.remove(p) }
                await adopt(p)
            }
        }
    }

    private func adopt(_ p: Int) async {
        let stored: [PartitionStore.StoredInstance]
        do {
            stored = try await replication.store.instances(partition: p, unfinished: true)
        } catch {
            logger.error("cannot read the partition's instances to adopt them", metadata: ["partition": "\(p)", "error": "\(error)"])
            owned[p] = nil
            return
        }
        let epoch = await replication.epoch(partition: p)
        var resumed = 0
        for s in stored {
            // One runner per instance: one an operation loaded while this adoption read the
            // store (or before) goes on; a second would run every task again beside it.
            let runner: InstanceRunner
            if let existing = runners[s.id] {
                runner = existing
            } else {
                guard let fresh = makeRunner(s) else { continue }
                runners[s.id] = fresh
                runner = fresh
            }
            let line = TimelineLine(at: Self.now(), kind: "adopted", node: node, epoch: epoch, detail: "owner since epoch \(s.epoch) gone; resuming from version \(s.version)")
            if s.epoch != epoch { await runner.note([line]) }
            await runner.kick()
            resumed += 1
        }
        if resumed > 0 {
            logger.info("adopted the partition's unfinished instances", metadata: ["partition": "\(p)", "instances": "\(resumed)", "epoch": "\(epoch)"])
        }
    }

    private func release(_ p: Int) async {
        suspended.withLock { _ = $0.remove(p) }
        // Adoption, if this node owns the partition again, resumes every unfinished instance.
        stalled[p] = nil
        for (id, runner) in runners where partition(of: id) == p {
            runners[id] = nil
            await runner.stop()
        }
        for (id, timer) in timers where partition(of: id) == p {
            timer.cancel()
            timers[id] = nil
        }
    }

    /// A runner that could not commit (it conflicted, or replication refused) stopped itself:
    /// forget it, and if this node still owns the partition, pick the instance up again from
    /// what is committed.
    func runnerStopped(_ id: String, runner: InstanceRunner) async {
        guard runners[id] === runner else { return }
        runners[id] = nil
        let p = partition(of: id)
        // Not leading it any more: whoever owns the partition next adopts the instance.
        guard owned[p] != nil else { return }
        guard await replication.owns(partition: p) else {
            // Still the leader but the lease lapsed (a commit timed out under load, say): the
            // partition stays ours, so no adoption would ever pick this instance up again.
            // Take it back when the lease returns.
            stalled[p, default: []].insert(id)
            suspended.withLock { _ = $0.insert(p) }
            return
        }
        await reload(id, partition: p)
    }

    /// A fresh runner for `id` from what is committed, unless one runs already.
    private func reload(_ id: String, partition p: Int) async {
        guard owned[p] != nil, runners[id] == nil else { return }
        // The checkpoint that failed may still commit: resume from the store only once it
        // has caught up with everything proposed, or a task whose result is committed would
        // run again.
        guard await replication.settle(partition: p) else {
            if owned[p] != nil {
                stalled[p, default: []].insert(id)
                suspended.withLock { _ = $0.insert(p) }
            }
            return
        }
        guard owned[p] != nil, runners[id] == nil else { return }
        let stored: PartitionStore.StoredInstance?
        do {
            stored = try await replication.store.instance(id)
        } catch {
            logger.error("cannot read an instance to resume it", metadata: ["instance": "\(id)", "error": "\(error)"])
            stalled[p, default: []].insert(id)
            suspended.withLock { _ = $0.insert(p) }
            return
        }
        guard let stored, runners[id] == nil, let fresh = makeRunner(stored) else { return }
        runners[id] = fresh
        // Its task in flight, if any, runs again: the timeline says why.
        let epoch = await replication.epoch(partition: p)
        await fresh.note([TimelineLine(at: Self.now(), kind: "resumed", node: node, epoch: epoch,
                                       detail: "a checkpoint could not commit; resuming from version \(stored.version)")])
        await fresh.kick()
    }

    private func makeRunner(_ stored: PartitionStore.StoredInstance) -> InstanceRunner? {
        do {
            let state = try JSONDecoder().decode(InstanceState.self, from: Data(stored.state))
            guard let workflow = registry[state.workflow] else {
                logger.error("an instance's workflow is not registered on this node", metadata: ["instance": "\(stored.id)", "workflow": "\(state.workflow)"])
                return nil
            }
            guard workflow.definitionHash == state.definitionHash else {
                logger.error("an instance's workflow definition changed; it is left as it is", metadata: [
                    "instance": "\(stored.id)", "workflow": "\(state.workflow)", "stored": "\(state.definitionHash.prefix(12))", "here": "\(workflow.definitionHash.prefix(12))"])
                return nil
            }
            return InstanceRunner(engine: self, machine: InstanceMachine(workflow), state: state, partition: partition(of: stored.id))
        } catch {
            logger.error("an instance's stored state cannot be read", metadata: ["instance": "\(stored.id)", "error": "\(error)"])
            return nil
        }
    }

    /// The runner of `id`, loaded from storage if it is not in memory. This node must own the
    /// instance's partition.
    func runner(for id: String) async throws -> InstanceRunner? {
        try await requireOwnership(of: id)
        if let r = runners[id] { return r }
        guard let stored = try await replication.store.instance(id) else { return nil }
        // Another call (or an adoption) may have loaded it while the store was read.
        if let r = runners[id] { return r }
        guard let r = makeRunner(stored) else {
            throw WorkflowFailure(code: 409, what: "definition_mismatch", description: "instance \(id) cannot be run by this node's definition of its workflow")
        }
        runners[id] = r
        timers.removeValue(forKey: id)?.cancel()
        return r
    }

    /// Throws 503 unless this node owns `id`'s partition; then waits until every checkpoint
    /// acknowledged there is applied, so what the store says about any instance is current.
    func requireOwnership(of id: String) async throws {
        let p = partition(of: id)
        guard try await replication.ownsCaughtUp(partition: p), owned[p] != nil else {
            throw WorkflowFailure(code: 503, what: "no_owner", description: "this node does not own partition \(p) right now; retry")
        }
    }

    /// Queues timeline lines that change no state (a task attempt starting, an adoption). Those
    /// the instance's next checkpoint does not take within ``noteWindow`` go, with the other
    /// instances' lines of the partition, into one log entry.
    nonisolated func note(_ id: String, _ lines: [TimelineLine]) {
        queueNotes(of: id, lines.map(\.bytes))
    }

    /// The queued lines of instance `id`, taken for its checkpoint to carry.
    nonisolated func takeNotes(of id: String) -> [[UInt8]] {
        let p = partition(of: id)
        return notes.withLock { notes in
            guard let batches = notes[p], batches.contains(where: { $0.instance == id }) else { return [] }
            let rest = batches.filter { $0.instance != id }
            notes[p] = rest.isEmpty ? nil : rest
            return batches.filter { $0.instance == id }.flatMap(\.entries)
        }
    }

    /// Queues encoded lines (also those taken for a checkpoint that was refused).
    nonisolated func queueNotes(of id: String, _ lines: [[UInt8]]) {
        guard !lines.isEmpty else { return }
        let p = partition(of: id)
        let first = notes.withLock { notes in
            defer { notes[p, default: []].append(.init(instance: id, entries: lines)) }
            return notes[p] == nil
        }
        guard first else { return }
        Task {
            try? await Task.sleep(for: Self.noteWindow)
            await self.flushNotes(p)
        }
    }

    private func flushNotes(_ p: Int) async {
        guard let batch = notes.withLock({ $0.removeValue(forKey: p) }), !batch.isEmpty else { return }
        _ = try? await replication.propose(.timelines(batch), partition: p)
    }

    /// A runner with nothing to do leaves memory; only its timer stays.
    func parked(_ id: String, runner: InstanceRunner, wakeAt: Int64?) {
        guard runners[id] === runner else { return }
        runners[id] = nil
        timers.removeValue(forKey: id)?.cancel()
        guard let wakeAt else { return }
        timers[id] = Task { [weak self] in
            let wait = max(0, wakeAt - Self.now())
            try? await Task.sleep(for: .milliseconds(wait))
            guard !Task.isCancelled, let self else { return }
            await self.wake(id)
        }
    }

    private func wake(_ id: String) async {
        timers[id] = nil
        do {
            _ = try await runner(for: id)?.submit(.timer)
        } catch {
            logger.warning("a parked instance's timer could not wake it", metadata: ["instance": "\(id)", "error": "\(error)"])
        }
    }

    // MARK: - Operations (on the owner)

    func start(workflow name: String, id: String, input: Payload, policy: ConflictPolicy) async throws -> (InstanceState, created: Bool) {
        guard let workflow = registry[name] else {
            throw WorkflowFailure(code: 404, what: "workflow_not_found", description: "no workflow \(name) (this node has \(registry.keys.sorted().joined(separator: ", ")))")
        }
        // One start of an id at a time: the next one sees what this one did.
        while starting[id] != nil {
            await withCheckedContinuation { starting[id]!.append($0) }
        }
        starting[id] = []
        defer {
            for waiting in starting.removeValue(forKey: id) ?? [] { waiting.resume() }
        }
        try await requireOwnership(of: id)
        let existing: InstanceState?
        if let r = runners[id] {
            existing = await r.current
        } else if let stored = try await replication.store.instance(id) {
            existing = try JSONDecoder().decode(InstanceState.self, from: Data(stored.state))
        } else {
            existing = nil
        }
        switch InstanceMachine.decide(existing: existing, policy: policy, workflow: workflow) {
        case .existing: return (existing!, false)
        case .conflict(let why): throw WorkflowFailure(code: 409, what: "instance_exists", description: why)
        case .start: break
        }
        if let old = runners.removeValue(forKey: id) { await old.stop() }
        timers.removeValue(forKey: id)?.cancel()
        let machine = InstanceMachine(workflow)
        let t = machine.start(id: id, input: input, now: Self.now())
        let p = partition(of: id)
        let runner = InstanceRunner(engine: self, machine: machine, state: t.state, partition: p)
        try await runner.commitStart(t, replace: existing != nil)
        // This runner holds the newest committed version: any other loaded meanwhile stops.
        if let other = runners.updateValue(runner, forKey: id), other !== runner { await other.stop() }
        await runner.kick()
        return (t.state, true)
    }

    func apply(_ event: InstanceEvent, to id: String) async throws -> InstanceState {
        guard let r = try await runner(for: id) else {
            throw WorkflowFailure(code: 404, what: "instance_not_found", description: "no instance \(id)")
        }
        return try await r.submit(event)
    }

    /// The instance's state as committed (in memory if running here, else as stored).
    func state(_ id: String) async throws -> (InstanceState, epoch: UInt64)? {
        try await requireOwnership(of: id)
        let epoch = await replication.epoch(partition: partition(of: id))
        if let r = runners[id] { return (await r.current, epoch) }
        guard let stored = try await replication.store.instance(id) else { return nil }
        return (try JSONDecoder().decode(InstanceState.self, from: Data(stored.state)), epoch)
    }

    /// The epoch of the instance's partition here, as last published (a timeline label; no hop).
    nonisolated func epoch(of id: String) -> UInt64 { replication.publishedEpoch(partition: partition(of: id)) }

    /// The instance's state once a checkpoint after `version` is committed here, or at
    /// `deadline`; nil when it does not run in memory here (parked, or not owned).
    func change(of id: String, after version: UInt64, until deadline: ContinuousClock.Instant) async -> InstanceState? {
        guard let runner = runners[id] else { return nil }
        return await runner.change(after: version, until: deadline)
    }
}

/// One timeline line as stored and served: the core's entry plus where it happened.
struct TimelineLine: Codable, Sendable {
    var at: String
    var kind: String
    var task: String?
    var attempt: Int?
    var node: String
    var epoch: UInt64
    var durationMs: Int?
    var detail: String?

    init(at: Int64, kind: String, task: String? = nil, attempt: Int? = nil, node: String, epoch: UInt64, durationMs: Int? = nil, detail: String? = nil) {
        self.at = Self.format(at)
        self.kind = kind
        self.task = task
        self.attempt = attempt
        self.node = node
        self.epoch = epoch
        self.durationMs = durationMs
        self.detail = detail
    }

    init(_ entry: TimelineEntry, node: String, epoch: UInt64) {
        self.init(at: entry.at, kind: entry.kind, task: entry.task, attempt: entry.attempt, node: node, epoch: epoch,
                  durationMs: entry.durationMs, detail: entry.detail)
    }

    /// `ms` since the epoch as ISO 8601 in UTC with milliseconds (`2026-11-23T06:42:19.123Z`).
    /// Written by hand: Foundation's format style cost more than the rest of a line (a line is
    /// written for every task attempt); a test checks it against that style.
    static func format(_ ms: Int64) -> String {
        let days = ms >= 0 ? ms / 86_400_000 : (ms - 86_399_999) / 86_400_000
        let inDay = ms - days * 86_400_000
        // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let dayOfEra = z - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1_460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let mp = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        let year = yearOfEra + era * 400 + (month <= 2 ? 1 : 0)
        var out: [UInt8] = []
        out.reserveCapacity(24)
        func digits(_ value: Int64, _ count: Int) {
            var divisor: Int64 = 1
            for _ in 1..<count { divisor *= 10 }
            var v = value
            while divisor > 0 {
                out.append(UInt8(ascii: "0") + UInt8(truncatingIfNeeded: abs(v / divisor) % 10))
                v %= divisor
                divisor /= 10
            }
        }
        digits(year, 4); out.append(UInt8(ascii: "-")); digits(month, 2); out.append(UInt8(ascii: "-")); digits(day, 2)
        out.append(UInt8(ascii: "T"))
        digits(inDay / 3_600_000, 2); out.append(UInt8(ascii: ":"))
        digits(inDay / 60_000 % 60, 2); out.append(UInt8(ascii: ":"))
        digits(inDay / 1_000 % 60, 2); out.append(UInt8(ascii: "."))
        digits(inDay % 1_000, 3); out.append(UInt8(ascii: "Z"))
        return String(decoding: out, as: UTF8.self)
    }

    /// The line as JSON, keys sorted, absent values left out: what `JSONEncoder` with
    /// `.sortedKeys` writes, without its cost (a test checks they agree).
    var bytes: [UInt8] {
        var out = CheckpointWriter(capacity: 160)
        out.open()
        out.key("at"); out.string(at)
        if let attempt { out.key("attempt"); out.int(Int64(attempt)) }
        if let detail { out.key("detail"); out.string(detail) }
        if let durationMs { out.key("durationMs"); out.int(Int64(durationMs)) }
        out.key("epoch"); out.uint(epoch)
        out.key("kind"); out.string(kind)
        out.key("node"); out.string(node)
        if let task { out.key("task"); out.string(task) }
        out.close()
        return out.bytes
    }
}

/// One instance in memory on its owner: applies events one batch at a time (each batch one
/// log entry), runs the tasks the machine says are runnable, and arms its timer.
actor InstanceRunner {
    unowned let engine: WorkflowEngine
    let machine: InstanceMachine
    let partition: Int
    private var state: InstanceState
    private var queue: [(event: InstanceEvent, continuation: CheckedContinuation<InstanceState, any Error>)] = []
    private var processing = false
    private var running: [String: Task<Void, Never>] = [:]
    private var timer: Task<Void, Never>?
    private var stopped = false
    /// Callers waiting for the state to move past a version (`?wait=` on a start).
    private var watchers: [Int: (after: UInt64, continuation: CheckedContinuation<InstanceState, Never>)] = [:]
    private var nextWatcher = 0

    init(engine: WorkflowEngine, machine: InstanceMachine, state: InstanceState, partition: Int) {
        self.engine = engine
        self.machine = machine
        self.state = state
        self.partition = partition
    }

    var current: InstanceState { state }

    /// The state once a checkpoint after `version` is committed, or as it is at `deadline`
    /// (or when this runner stops).
    func change(after version: UInt64, until deadline: ContinuousClock.Instant) async -> InstanceState {
        if state.version > version || stopped { return state }
        let id = nextWatcher
        nextWatcher += 1
        let timeout = Task { [weak self] in
            try? await Task.sleep(until: deadline)
            await self?.release(watcher: id)
        }
        let changed = await withCheckedContinuation { continuation in
            watchers[id] = (version, continuation)
        }
        timeout.cancel()
        return changed
    }

    private func release(watcher id: Int) {
        watchers.removeValue(forKey: id)?.continuation.resume(returning: state)
    }

    private func notifyWatchers(all: Bool = false) {
        for (id, w) in watchers where all || state.version > w.after {
            watchers[id] = nil
            w.continuation.resume(returning: state)
        }
    }

    func stop() {
        stopped = true
        notifyWatchers(all: true)
        for (_, task) in running { task.cancel() }
        running = [:]
        timer?.cancel()
        for item in queue {
            item.continuation.resume(throwing: WorkflowFailure(code: 503, what: "no_owner", description: "the owner of instance \(state.id) changed; retry"))
        }
        queue = []
    }

    /// Commits a brand-new instance (or its replacement under terminateExisting).
    func commitStart(_ t: Transition, replace: Bool) async throws {
        let epoch = engine.epoch(of: state.id)
        let lines = t.timeline.map { TimelineLine($0, node: engine.node, epoch: epoch).bytes }
        let change = InstanceChange(id: t.state.id, workflow: t.state.workflow, status: t.state.status.rawValue, wakeAt: t.state.wakeAt,
                                    baseVersion: 0, version: t.state.version, replace: replace, state: Self.encode(t.state),
                                    results: t.results.mapValues { Array($0.json) }, timeline: lines)
        // The engine starts one id at a time, after reading what every checkpoint acknowledged
        // so far wrote (and only while it owns the partition, whose earlier epochs are all
        // applied): nothing can have started the instance meanwhile, so the start counts once
        // committed.
        let applied: AppliedEntry
        do {
            applied = try await propose(.instance(change), answer: .committed)
        } catch ReplicationError.conflict {
            throw WorkflowFailure(code: 409, what: "instance_exists", description: "instance \(t.state.id) was started by someone else meanwhile")
        }
        if applied.conflict {
            throw WorkflowFailure(code: 409, what: "instance_exists", description: "instance \(t.state.id) was started by someone else meanwhile")
        }
        state = t.state
    }

    /// Lines for the timeline that change nothing else (adoption, a task attempt starting).
    func note(_ lines: [TimelineLine]) {
        engine.note(state.id, lines)
    }

    /// Starts what can run now and arms the timer, or leaves memory if there is nothing to do.
    func kick() {
        guard !stopped else { return }
        let now = WorkflowEngine.now()
        let held = engine.suspended.withLock { $0.contains(partition) }
        for run in machine.runnable(state, now: now) where running[run.key] == nil && !held {
            start(run)
        }
        timer?.cancel()
        timer = nil
        // While the lease has lapsed the runner waits in memory for the engine to kick it again.
        if held { return }
        if running.isEmpty, queue.isEmpty, !processing {
            Task { await engine.parked(state.id, runner: self, wakeAt: state.status.isTerminal ? nil : state.wakeAt) }
            return
        }
        if let wake = state.wakeAt, !state.status.isTerminal {
            timer = Task { [weak self] in
                try? await Task.sleep(for: .milliseconds(max(0, wake - WorkflowEngine.now())))
                guard !Task.isCancelled, let self else { return }
                _ = try? await self.submit(.timer)
            }
        }
    }

    private func start(_ run: TaskRun) {
        guard let body = machine.workflow.taskBody(run.node)?.body else { return }
        let context = TaskContext(instanceID: state.id, workflow: state.workflow, taskKey: run.key, attempt: run.attempt, node: engine.node)
        let node = engine.node
        running[run.key] = Task {
            // Queued before the body runs, so the checkpoint of its result can carry it.
            let epoch = engine.epoch(of: context.instanceID)
            engine.note(context.instanceID, [TimelineLine(at: WorkflowEngine.now(), kind: "task_started", task: run.key, attempt: run.attempt, node: node, epoch: epoch)])
            let began = ContinuousClock.now
            let event: InstanceEvent
            do {
                // The attempt's deadline is durable: run again after a failover, it gets what is
                // left of its timeout, not a fresh one.
                let left: Duration? = run.deadline.map { .milliseconds(max(0, $0 - WorkflowEngine.now())) } ?? run.timeout
                let output = try await Self.withTimeout(left, reported: run.timeout) { try await body(run.input, context) }
                event = .taskCompleted(key: run.key, attempt: run.attempt, output: output, durationMs: Self.ms(since: began))
            } catch is CancellationError where Task.isCancelled {
                return
            } catch {
                event = .taskFailed(key: run.key, attempt: run.attempt, error: "\(error)", durationMs: Self.ms(since: began))
            }
            await self.finished(run.key, event)
        }
    }

    private func finished(_ key: String, _ event: InstanceEvent) async {
        guard !stopped else { return }
        _ = try? await submit(event)
        running[key] = nil
        kick()
    }

    /// Applies `event` (with any others queued meanwhile, as one log entry) and returns the
    /// state once committed.
    func submit(_ event: InstanceEvent) async throws -> InstanceState {
        guard !stopped else { throw WorkflowFailure(code: 503, what: "no_owner", description: "the owner of instance \(state.id) changed; retry") }
        return try await withCheckedThrowingContinuation { continuation in
            queue.append((event, continuation))
            if !processing {
                processing = true
                Task { await self.process() }
            }
        }
    }

    private func process() async {
        while !queue.isEmpty, !stopped {
            let batch = queue
            queue = []
            var next = state
            var results: [String: Payload] = [:]
            var timeline: [TimelineEntry] = []
            var outcomes: [Result<InstanceState, any Error>] = []
            let now = WorkflowEngine.now()
            for item in batch {
                let t = machine.apply(item.event, to: next, now: now)
                if let refused = t.refused {
                    outcomes.append(.failure(WorkflowFailure(code: 409, what: "refused", description: refused)))
                    continue
                }
                if t.changed {
                    next = t.state
                    results.merge(t.results) { $1 }
                    timeline += t.timeline
                }
                outcomes.append(.success(t.state))
            }
            if next != state {
                let carried = engine.takeNotes(of: next.id)
                do {
                    let epoch = engine.epoch(of: state.id)
                    let change = InstanceChange(id: next.id, workflow: next.workflow, status: next.status.rawValue, wakeAt: next.wakeAt,
                                                baseVersion: state.version, version: next.version, replace: false, state: Self.encode(next),
                                                results: results.mapValues { Array($0.json) },
                                                timeline: carried + timeline.map { TimelineLine($0, node: engine.node, epoch: epoch).bytes })
                    // Answered at commit when the host knows the instance's version (it decides the
                    // check when proposing, and refuses there what would conflict); else at apply.
                    let applied = try await propose(.instance(change), answer: .committed)
                    if applied.conflict {
                        // Refused, so the lines it carried were not stored: they go on their own
                        // (a task that ran here stays on the timeline).
                        engine.queueNotes(of: next.id, carried)
                        throw WorkflowFailure(code: 409, what: "conflict", description: "instance \(state.id) changed elsewhere; retry")
                    }
                    state = next
                    notifyWatchers()
                } catch {
                    for item in batch { item.continuation.resume(throwing: error) }
                    // Without a commit this node may no longer own the instance: let the
                    // engine's leadership watch decide; stop here.
                    if error is ReplicationError || (error as? WorkflowFailure)?.what == "conflict" {
                        stop()
                        let id = state.id
                        Task { await engine.runnerStopped(id, runner: self) }
                    }
                    continue
                }
            }
            for (item, outcome) in zip(batch, outcomes) { item.continuation.resume(with: outcome.map { _ in state }) }
        }
        processing = false
        kick()
    }

    private func propose(_ command: PartitionCommand, answer: AnswerPoint = .applied) async throws -> AppliedEntry {
        let deadline = ContinuousClock.now + .seconds(3)
        while true {
            do {
                return try await engine.replication.propose(command, partition: partition, answer: answer)
            } catch ReplicationError.notLeader(_, nil) where !stopped && ContinuousClock.now < deadline {
                // This node leads but is handing the partition to another voter (proposals
                // wait meanwhile). Keep the task's result and try again: if the handover
                // completes, the engine stops this runner and the new owner runs the task.
                guard await engine.replication.standing(partition: partition).leads else {
                    throw ReplicationError.notLeader(partition: partition, leader: nil)
                }
                try? await Task.sleep(for: .milliseconds(10))
            }
        }
    }

    static func encode(_ state: InstanceState) -> [UInt8] { state.checkpointJSON() }

    static func ms(since start: ContinuousClock.Instant) -> Int {
        let d = ContinuousClock.now - start
        return Int(d.components.seconds * 1000 + d.components.attoseconds / 1_000_000_000_000_000)
    }

    struct TimedOut: Error, CustomStringConvertible {
        let after: Duration
        var description: String { "timed out after \(after)" }
    }

    /// Runs `body`, failing with ``TimedOut`` (naming the task's timeout, `reported`) once
    /// `timeout` has passed; at once when none is left.
    static func withTimeout(_ timeout: Duration?, reported: Duration? = nil, _ body: @escaping @Sendable () async throws -> Payload) async throws -> Payload {
        guard let timeout else { return try await body() }
        let named = reported ?? timeout
        guard timeout > .zero else { throw TimedOut(after: named) }
        return try await withThrowingTaskGroup(of: Payload.self) { group in
            group.addTask { try await body() }
            group.addTask {
                try await Task.sleep(for: timeout)
                throw TimedOut(after: named)
            }
            defer { group.cancelAll() }
            return try await group.next()!
        }
    }
}
