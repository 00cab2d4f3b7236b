import Foundation

/// The instance state machine: given a stored state and an event, the next state and what
/// to do. Pure — no I/O, no clock (`now` is milliseconds since 1970, given by the caller), no
/// randomness — so the shell can run it on whichever node owns the instance and the
/// simulation can run it anywhere.
///
/// Semantics (each tested in `InstanceMachineTests`):
/// - A task's committed result is never run again; a resumed instance goes on from its frames.
/// - A failed attempt is retried after the task's backoff while retries remain (the attempt
///   number and the time of the next attempt are in the state); then the instance fails.
/// - Fork branches run at once; each finished branch is kept in the fork's frame; the join
///   runs when all are done.
/// - A signal no one waits for is buffered, first in first out per name; a wait consumes the
///   oldest in the same transition that moves the instance on, so it can never be lost. A
///   wait that times out goes on with `null`.
/// - Pause and cancel take effect at the next task boundary (at once when no task runs);
///   cancel beats pause. `unpause` (or `resume`) lets a paused instance go on.
public struct InstanceMachine: Sendable {
    public let workflow: Workflow

    public init(_ workflow: Workflow) { self.workflow = workflow }

    /// Whether `run` may start an instance whose id is held by `existing` (nil: free).
    public static func decide(existing: InstanceState?, policy: ConflictPolicy, workflow: Workflow) -> StartDecision {
        guard let existing else { return .start }
        if existing.workflow != workflow.name || existing.definitionHash != workflow.definitionHash {
            return .conflict("instance \(existing.id) belongs to workflow \(existing.workflow) with definition \(existing.definitionHash.prefix(12)), not \(workflow.name) with definition \(workflow.definitionHash.prefix(12))")
        }
        switch policy {
        case .fail: return .conflict("instance \(existing.id) already exists (status \(existing.status.rawValue)); resume it, or run with conflictPolicy useExisting or terminateExisting")
        case .useExisting: return .existing
        case .terminateExisting: return .start
        }
    }

    /// A new instance, already moved as far as it can go without running a task.
    public func start(id: String, input: Payload, now: Int64) -> Transition {
        let state = InstanceState(id: id, workflow: workflow.name, definitionHash: workflow.definitionHash, status: .inProgress,
                                  input: input, frames: [:], signals: [:], pauseRequested: false, cancelRequested: false,
                                  completedTasks: 0, version: 0, createdAt: now, updatedAt: now)
        var run = Run(machine: self, transition: Transition(state: state), now: now)
        run.log("started")
        run.enter(workflow.root.id, input)
        run.fireTimers()
        run.settle(boundary: false)
        run.stampDeadlines()
        run.state.version = 1
        return run.transition
    }

    /// The tasks to run now (none while a pause or cancel is pending or the instance is over).
    public func runnable(_ state: InstanceState, now: Int64) -> [TaskRun] {
        guard !state.status.isTerminal, state.status != .paused, !state.pauseRequested, !state.cancelRequested else { return [] }
        return state.frames.keys.sorted().compactMap { id in
            let f = state.frames[id]!
            guard f.kind == .task || f.kind == .join || f.kind == .loop, f.notBefore.map({ $0 <= now }) ?? true,
                  let input = f.input, let task = workflow.task(for: id) else { return nil }
            return TaskRun(node: id, key: f.kind == .loop ? "\(id)#\(f.index)" : id, attempt: f.attempt, input: input,
                           timeout: task.options.timeout, deadline: f.deadline)
        }
    }

    /// Applies `event`. An event that no longer applies (the late result of an attempt that
    /// was abandoned, a timer with nothing due) comes back with `changed == false`.
    public func apply(_ event: InstanceEvent, to state: InstanceState, now: Int64) -> Transition {
        var run = Run(machine: self, transition: Transition(state: state), now: now)
        run.handle(event)
        if run.transition.changed { run.stampDeadlines() }
        return run.transition
    }
}

/// One application of the machine: mutates a copy of the state and collects the outputs.
struct Run {
    let machine: InstanceMachine
    var transition: Transition
    let now: Int64
    var workflow: Workflow { machine.workflow }
    var state: InstanceState {
        get { transition.state }
        set { transition.state = newValue }
    }

    mutating func log(_ kind: String, task: String? = nil, attempt: Int? = nil, durationMs: Int? = nil, detail: String? = nil) {
        transition.timeline.append(TimelineEntry(at: now, kind: kind, task: task, attempt: attempt, durationMs: durationMs, detail: detail))
    }

    /// Fixes the deadline of every attempt this change makes runnable: the checkpoint that
    /// carries it is committed before the attempt starts, so the deadline is durable.
    mutating func stampDeadlines() {
        for run in machine.runnable(state, now: now) where run.deadline == nil {
            guard let timeout = run.timeout else { continue }
            state.frames[run.node]!.deadline = now + timeout.milliseconds
        }
    }

    mutating func unchanged(_ why: String? = nil) {
        transition.changed = false
        transition.refused = why
    }

    mutating func handle(_ event: InstanceEvent) {
        let before = state
        switch event {
        case .taskCompleted(let key, let attempt, let output, let duration):
            guard !state.status.isTerminal, let id = frameID(for: key), state.frames[id]?.attempt == attempt,
                  state.frames[id]?.notBefore == nil else { return unchanged() }
            log("task_completed", task: key, attempt: attempt, durationMs: duration)
            transition.results[key] = output
            state.completedTasks += 1
            taskCompleted(id, output)
            fireTimers()
            settle(boundary: true)
        case .taskFailed(let key, let attempt, let error, let duration):
            guard !state.status.isTerminal, let id = frameID(for: key), let frame = state.frames[id], frame.attempt == attempt,
                  frame.notBefore == nil, let options = workflow.task(for: id)?.options else { return unchanged() }
            log("task_failed", task: key, attempt: attempt, durationMs: duration, detail: error)
            if attempt <= options.retry.maxRetries {
                let at = now + options.retry.delay(after: attempt).milliseconds
                state.frames[id]!.attempt = attempt + 1
                state.frames[id]!.notBefore = at
                state.frames[id]!.deadline = nil
                log("retry_scheduled", task: key, attempt: attempt + 1, detail: "at \(at)")
            } else {
                let tries = attempt == 1 ? "1 attempt" : "\(attempt) attempts"
                fail("task \(key) failed after \(tries): \(error)")
            }
            fireTimers()
            settle(boundary: true)
        case .timer:
            guard !state.status.isTerminal else { return unchanged() }
            fireTimers()
            settle(boundary: false)
            if state == before, transition.timeline.isEmpty { unchanged() }
        case .signal(let name, let payload):
            guard !state.status.isTerminal else { return unchanged("instance \(state.id) is \(state.status.rawValue)") }
            if let waiting = state.frames.keys.sorted().first(where: { isWaiting($0, for: name) }) {
                log("signal_received", task: waiting, detail: name)
                complete(waiting, payload)
            } else {
                state.signals[name, default: []].append(payload)
                log("signal_buffered", detail: name)
            }
            fireTimers()
            settle(boundary: false)
        case .cancel(let reason):
            guard !state.status.isTerminal else { return unchanged("instance \(state.id) is already \(state.status.rawValue)") }
            state.cancelRequested = true
            log("cancel_requested", detail: reason)
            settle(boundary: false)
        case .pause(let reason):
            guard !state.status.isTerminal else { return unchanged("instance \(state.id) is already \(state.status.rawValue)") }
            guard !state.pauseRequested else { return unchanged() }
            state.pauseRequested = true
            log("pause_requested", detail: reason)
            settle(boundary: false)
        case .unpause, .resume:
            guard !state.status.isTerminal else { return unchanged("instance \(state.id) is already \(state.status.rawValue)") }
            guard state.pauseRequested else { return unchanged() }
            state.pauseRequested = false
            log(event == .unpause ? "unpaused" : "resumed")
            fireTimers()
            settle(boundary: false)
        }
        if transition.changed {
            state.version += 1
            state.updatedAt = now
        }
    }

    /// The frame a task key names: the node id, or a loop's `id#iteration` while on that iteration.
    func frameID(for key: String) -> String? {
        if let f = state.frames[key], f.kind != .loop { return key }
        guard let hash = key.lastIndex(of: "#"), let iteration = Int(key[key.index(after: hash)...]) else { return nil }
        let id = String(key[..<hash])
        guard let f = state.frames[id], f.kind == .loop, f.index == iteration else { return nil }
        return id
    }

    func isWaiting(_ id: String, for name: String) -> Bool {
        guard state.frames[id]?.kind == .signal, case .signal(_, let awaited, _)? = workflow.nodes[id] else { return false }
        return awaited == name
    }

    // MARK: - Moving through the tree

    /// Starts node `id` with `input`.
    mutating func enter(_ id: String, _ input: Payload) {
        guard !state.status.isTerminal, let node = workflow.nodes[id] else { return }
        switch node {
        case .task:
            state.frames[id] = Frame(kind: .task, input: input)
        case .sequence(_, let children):
            guard let first = children.first else { return complete(id, input) }
            var f = Frame(kind: .sequence)
            f.index = 0
            state.frames[id] = f
            enter(first.id, input)
        case .fork(_, let branches, _):
            var f = Frame(kind: .fork, input: input)
            f.done = [:]
            state.frames[id] = f
            for b in branches { enter(b.node.id, input) }
        case .loop:
            var f = Frame(kind: .loop, input: input)
            f.index = 1
            state.frames[id] = f
        case .map(let m):
            let count: Int
            do { count = try m.count(input) } catch { return fail("fan-out \(id) could not compute its count: \(error)") }
            guard (0...10_000).contains(count) else { return fail("fan-out \(id) asked for \(count) copies (0–10000)") }
            var f = Frame(kind: .fork, input: input)
            f.done = [:]
            f.index = count
            state.frames[id] = f
            transition.results[id] = try! WorkflowCodec.encode(count)
            for i in 0..<count {
                let item = WorkflowCodec.object(["index": try! WorkflowCodec.encode(i), "value": input])
                state.frames["\(id)[\(i)]"] = Frame(kind: .task, input: item)
            }
            if count == 0 { state.frames[m.join.id] = Frame(kind: .join, input: WorkflowCodec.object([:])) }
        case .route(let r):
            let key: String
            do {
                key = try r.key(input)
            } catch {
                return fail("route \(id) could not compute its key: \(error)")
            }
            let target: FlowNode
            if let b = r.branches.first(where: { $0.name == key }) {
                target = b.node
            } else if let d = r.defaultBranch {
                target = d
            } else {
                return fail("route \(id) has no branch \"\(key)\" and no default")
            }
            var f = Frame(kind: .route)
            f.chosen = key
            state.frames[id] = f
            transition.results[id] = try! WorkflowCodec.encode(key)
            log("routed", task: id, detail: target.id == "\(id)/default" ? "\(key) (default)" : key)
            enter(target.id, input)
        case .delay(_, let spec):
            let duration: Duration
            do { duration = try spec.compute(input) ?? .zero } catch { return fail("delay \(id) could not compute its length: \(error)") }
            var f = Frame(kind: .delay, input: input)
            f.wakeAt = now + max(0, duration.milliseconds)
            state.frames[id] = f
            log("parked", task: id, detail: "delay until \(f.wakeAt!)")
        case .signal(_, let name, let timeout):
            if var queue = state.signals[name], !queue.isEmpty {
                let payload = queue.removeFirst()
                state.signals[name] = queue.isEmpty ? nil : queue
                log("signal_received", task: id, detail: "\(name) (buffered)")
                complete(id, payload)
                return
            }
            var f = Frame(kind: .signal, input: input)
            do {
                f.wakeAt = try timeout?.compute(input).map { now + max(0, $0.milliseconds) }
            } catch {
                return fail("signal wait \(id) could not compute its timeout: \(error)")
            }
            state.frames[id] = f
            log("parked", task: id, detail: "signal \(name)" + (f.wakeAt.map { " until \($0)" } ?? ""))
        }
    }

    /// A task-like frame (task, join, loop body) finished an attempt with `output`.
    mutating func taskCompleted(_ id: String, _ output: Payload) {
        guard let frame = state.frames[id] else { return }
        guard frame.kind == .loop, case .loop(let loop)? = workflow.nodes[id] else { return complete(id, output) }
        let decoded: (again: Bool, value: Payload)
        if let (key, value) = WorkflowCodec.soleMember(of: output), key == "again" || key == "done" {
            decoded = (key == "again", value)
        } else {
            do {
                let object = try WorkflowCodec.decode([String: JSONFragment].self, from: output)
                if let v = object["again"], object.count == 1 { decoded = (true, Payload(json: v.json)) }
                else if let v = object["done"], object.count == 1 { decoded = (false, Payload(json: v.json)) }
                else { throw CodecError("expected {\"again\": …} or {\"done\": …}") }
            } catch {
                return fail("loop \(id) body returned \(output.description.prefix(100)): \(error)")
            }
        }
        guard decoded.again else { return complete(id, decoded.value) }
        if frame.index >= loop.maxIterations {
            switch loop.onMax {
            case .fail: return fail("loop \(id) reached its maximum of \(loop.maxIterations) iterations")
            case .exitWithLast:
                log("loop_exhausted", task: id, detail: "left after \(loop.maxIterations) iterations with the last value")
                return complete(id, decoded.value)
            }
        }
        state.frames[id]!.index += 1
        state.frames[id]!.deadline = nil
        state.frames[id]!.input = decoded.value
        state.frames[id]!.attempt = 1
    }

    /// Node `id` produced `value`: its parent goes on.
    mutating func complete(_ id: String, _ value: Payload) {
        state.frames[id] = nil
        if let fork = workflow.joinForks[id] {
            return complete(fork, value)
        }
        if id.hasSuffix("]"), let open = id.lastIndex(of: "["), case .map(let m)? = workflow.nodes[String(id[..<open])],
           var f = state.frames[m.id], let i = Int(id[id.index(after: open)..<id.index(before: id.endIndex)]) {
            f.done![String(i)] = value
            state.frames[m.id] = f
            if f.done!.count == f.index { state.frames[m.join.id] = Frame(kind: .join, input: WorkflowCodec.object(f.done!)) }
            return
        }
        guard let parentID = workflow.parents[id], let parent = workflow.nodes[parentID] else {
            // The root finished.
            state.output = value
            state.status = .completed
            state.frames = [:]
            log("completed")
            return
        }
        switch parent {
        case .sequence(_, let children):
            guard var f = state.frames[parentID] else { return }
            let next = f.index + 1
            if next < children.count {
                f.index = next
                state.frames[parentID] = f
                enter(children[next].id, value)
            } else {
                complete(parentID, value)
            }
        case .fork(_, let branches, let join):
            guard var f = state.frames[parentID], let branch = branches.first(where: { $0.node.id == id }) else { return }
            f.done![branch.name] = value
            state.frames[parentID] = f
            log("branch_completed", task: parentID, detail: branch.name)
            if f.done!.count == branches.count {
                state.frames[join.id] = Frame(kind: .join, input: WorkflowCodec.object(f.done!))
            }
        case .route:
            complete(parentID, value)
        case .task, .loop, .delay, .signal, .map:
            break
        }
    }

    mutating func fail(_ why: String) {
        state.status = .failed
        state.error = why
        state.frames = [:]
        log("failed", detail: why)
    }

    /// Ends delays and signal waits whose time has come and makes due retries runnable,
    /// until nothing more is due (a delay may lead straight into another).
    mutating func fireTimers() {
        var progressed = true
        while progressed, !state.status.isTerminal {
            progressed = false
            for id in state.frames.keys.sorted() {
                guard let f = state.frames[id] else { continue }
                if let at = f.notBefore, at <= now {
                    state.frames[id]!.notBefore = nil
                    progressed = true
                } else if let at = f.wakeAt, at <= now {
                    if f.kind == .delay {
                        log("woke", task: id)
                        complete(id, f.input ?? .null)
                    } else if f.kind == .signal {
                        log("signal_timeout", task: id)
                        complete(id, .null)
                    }
                    progressed = true
                }
            }
        }
    }

    /// Applies a pending cancel or pause when the instance is at a task boundary (`boundary`:
    /// a task just finished; otherwise only when no task is running), then derives the status.
    mutating func settle(boundary: Bool) {
        guard !state.status.isTerminal else { return derive() }
        let running = state.frames.values.contains { ($0.kind == .task || $0.kind == .join || $0.kind == .loop) && $0.notBefore == nil }
        let atBoundary = boundary || !running || state.status == .paused
        if state.cancelRequested, atBoundary {
            state.status = .cancelled
            log("cancelled")
        } else if state.pauseRequested, atBoundary {
            if state.status != .paused { log("paused") }
            state.status = .paused
        } else if !state.pauseRequested, state.status == .paused {
            state.status = .inProgress
        }
        derive()
    }

    /// Status, wake time and awaited signal from the frames.
    mutating func derive() {
        var wake: Int64?
        var signal: String?
        var running = false
        for id in state.frames.keys.sorted() {
            let f = state.frames[id]!
            if let at = f.notBefore ?? f.wakeAt { wake = min(wake ?? at, at) }
            if f.kind == .task || f.kind == .join || f.kind == .loop, f.notBefore == nil { running = true }
            if f.kind == .signal, signal == nil, case .signal(_, let name, _)? = workflow.nodes[id] { signal = name }
        }
        state.wakeAt = state.status.isTerminal ? nil : wake
        state.signalName = state.status.isTerminal ? nil : signal
        guard !state.status.isTerminal, state.status != .paused else { return }
        if running { state.status = .inProgress }
        else if wake != nil, signal == nil || state.frames.values.contains(where: { $0.kind == .delay || $0.notBefore != nil }) { state.status = .waiting }
        else if signal != nil { state.status = .awaitingSignal }
        else { state.status = .inProgress }
    }
}
