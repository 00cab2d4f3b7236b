public import Foundation
import HTTPTypes

/// A route's chain of steps: global before-steps, route before-steps, main steps.
public struct Pipeline: Sendable {
    /// `METHOD /pattern`, as errors and timelines name the route.
    public let route: String
    public let chain: [PipelineStage]

    public init(route: String, chain: [PipelineStage]) {
        self.route = route
        self.chain = chain
    }

    /// A pipeline of main steps only (for tests and tools).
    public init(route: String = "test", steps: [Step]) {
        self.init(route: route, chain: steps.map { PipelineStage(step: $0, layer: .main) })
    }
}

/// The result of one run.
public struct RunResult: Sendable {
    public var response: Response
    public var slots: SlotValues
    /// The error the request ended with, if it failed.
    public var error: SkeinError?
}

/// Drives a ``PipelineMachine`` and the ``JoinMachine`` of each need: runs steps, runs effects
/// through an ``EffectPerformer`` (concurrently in parallel mode, with timeouts, retries and
/// cancellation of join losers), and records the ``Timeline``. It is the shell around the pure
/// cores: all waiting and all randomness (retry jitter) live here.
public struct PipelineRunner: Sendable {
    public let performer: any EffectPerformer
    public let renderer: any ErrorRenderer

    public init(performer: any EffectPerformer, renderer: any ErrorRenderer = JSONErrorRenderer()) {
        self.performer = performer
        self.renderer = renderer
    }

    /// A run that stopped at its first need: what ``resume(_:timeline:)`` goes on from.
    public struct Suspended: Sendable {
        let state: StepState
        var machine: PipelineMachine
        var sequence: Int
        let origin: ContinuousClock.Instant
        let need: Need
        let step: Step
        let layer: StepLayer
    }

    /// How ``start(_:request:slots:arrival:timeline:)`` left a run: finished (no step asked
    /// for an effect), or waiting for its first need's effects.
    public enum Start: Sendable {
        case finished(RunResult)
        case suspended(Suspended)
    }

    /// Runs a pipeline. `arrival` is when the request arrived (for the queue wait); the
    /// timeline's times are measured from it.
    public func run(
        _ pipeline: Pipeline, request: RequestInfo, slots: SlotValues = SlotValues(),
        arrival: ContinuousClock.Instant? = nil, timeline: inout Timeline
    ) async -> RunResult {
        switch start(pipeline, request: request, slots: slots, arrival: arrival, timeline: &timeline) {
        case .finished(let result): return result
        case .suspended(let suspended): return await resume(suspended, timeline: &timeline)
        }
    }

    /// Runs a pipeline's steps up to its first need, without suspending: a request whose steps
    /// ask for no effect is served here whole, with no task frames of its own (the hot path).
    public func start(
        _ pipeline: Pipeline, request: RequestInfo, slots: SlotValues = SlotValues(),
        arrival: ContinuousClock.Instant? = nil, timeline: inout Timeline
    ) -> Start {
        let clock = ContinuousClock()
        let now = clock.now
        let origin = arrival ?? now
        let state = StepState(request: request, slots: slots, stepName: "")
        var machine = PipelineMachine(chain: pipeline.chain)
        var sequence = 0
        timeline.route = pipeline.route
        timeline.steps.reserveCapacity(pipeline.chain.count)
        timeline.queueWaitNs = (now - origin).nanoseconds
        let next = runSteps(machine.begin(), machine: &machine, state: state, sequence: &sequence, origin: origin,
                            clock: clock, timeline: &timeline)
        return settle(next, machine: machine, state: state, sequence: sequence, origin: origin, clock: clock, timeline: &timeline)
    }

    /// Goes on from a run's need: runs its effects, then the steps after them, need by need.
    public func resume(_ suspended: Suspended, timeline: inout Timeline) async -> RunResult {
        let clock = ContinuousClock()
        var current = suspended
        var needSequence = 0
        while true {
            needSequence += 1
            let failure = await runNeed(current.need, step: current.step.name, sequence: needSequence, state: current.state,
                                        origin: current.origin, clock: clock, timeline: &timeline)
            var machine = current.machine
            var sequence = current.sequence
            let next = runSteps(machine.needResolved(current.need, layer: current.layer, failure: failure), machine: &machine,
                                state: current.state, sequence: &sequence, origin: current.origin, clock: clock, timeline: &timeline)
            switch settle(next, machine: machine, state: current.state, sequence: sequence, origin: current.origin,
                          clock: clock, timeline: &timeline) {
            case .finished(let result): return result
            case .suspended(let again): current = again
            }
        }
    }

    /// Runs steps while the machine says to, and gives what comes after them.
    private func runSteps(
        _ first: PipelineMachine.Next, machine: inout PipelineMachine, state: StepState, sequence: inout Int,
        origin: ContinuousClock.Instant, clock: ContinuousClock, timeline: inout Timeline
    ) -> PipelineMachine.Next {
        var next = first
        // One reading of the clock ends a step and starts the next.
        var start = clock.now
        while case .run(let step, let layer) = next {
            sequence += 1
            state.stepName = step.name
            var outcome: String
            do {
                let decision = try step.body(state)
                outcome = decision.outcomeName
                next = machine.stepDecided(decision, by: step, layer: layer)
            } catch let error as SkeinError {
                outcome = "threw"
                next = .fail(error)
            } catch {
                outcome = "threw"
                next = .fail(SkeinError(code: 500, what: "step_failed", key: step.name,
                                        message: "step '\(step.name)' threw: \(error)"))
            }
            let end = clock.now
            timeline.steps.append(StepRecord(
                name: step.name, layer: layer, sequence: sequence, outcome: outcome,
                startNs: (start - origin).nanoseconds, durationNs: (end - start).nanoseconds))
            start = end
        }
        return next
    }

    /// A run's end (its response or its failure), or where it waits for effects.
    private func settle(
        _ next: PipelineMachine.Next, machine: PipelineMachine, state: StepState, sequence: Int,
        origin: ContinuousClock.Instant, clock: ContinuousClock, timeline: inout Timeline
    ) -> Start {
        switch next {
        case .effects(let need, let step, let layer):
            return .suspended(Suspended(state: state, machine: machine, sequence: sequence, origin: origin,
                                        need: need, step: step, layer: layer))
        case .respond(let response):
            timeline.status = response.status.code
            timeline.outcome = "done"
            timeline.durationNs = (clock.now - origin).nanoseconds
            return .finished(RunResult(response: response, slots: state.slots, error: nil))
        case .fail(let error):
            let response = renderer.render(error)
            timeline.status = response.status.code
            timeline.outcome = "fail"
            timeline.error = error
            timeline.durationNs = (clock.now - origin).nanoseconds
            return .finished(RunResult(response: response, slots: state.slots, error: error))
        case .run:
            preconditionFailure("runSteps returns only once no step is left to run")
        }
    }

    struct Completion: Sendable {
        let index: Int
        let result: Result<EffectOutput, EffectFailure>
        let records: [EffectRecord]
    }

    private func runNeed(
        _ need: Need, step: String, sequence: Int, state: StepState,
        origin: ContinuousClock.Instant, clock: ContinuousClock, timeline: inout Timeline
    ) async -> SkeinError? {
        let needStart = clock.now
        var join = JoinMachine(mode: need.mode, join: need.join, required: need.effects.map(\.required))
        let (stream, sink) = AsyncStream.makeStream(of: Completion.self)
        var iterator = stream.makeAsyncIterator()
        var tasks: [Int: Task<Void, Never>] = [:]
        var completions: [Int: Completion] = [:]
        var outcome: JoinMachine.Outcome?
        var actions = join.start()
        let traceID = state.request.traceID

        while outcome == nil {
            for action in actions {
                switch action {
                case .start(let index):
                    let effect = need.effects[index]
                    let spec = AttemptSpec(need: sequence, index: index, step: step, origin: origin, needStart: needStart)
                    tasks[index] = Task {
                        sink.yield(await self.attempts(effect, spec: spec, traceID: traceID, clock: clock))
                    }
                case .resolve(let resolved):
                    outcome = resolved
                }
            }
            if outcome != nil { break }
            guard let completion = await iterator.next() else { break }
            completions[completion.index] = completion
            actions = join.complete(completion.index, succeeded: completion.isSuccess)
        }
        sink.finish()

        // Losers are cancelled and whatever they produce later is dropped.
        let now = clock.now
        for (index, task) in tasks.sorted(by: { $0.key < $1.key }) where completions[index] == nil {
            task.cancel()
            let effect = need.effects[index]
            timeline.effects.append(EffectRecord(
                need: sequence, index: index, step: step, kind: effect.kind, target: effect.target,
                required: effect.required, attempt: 1, maxAttempts: effect.retry.maxAttempts,
                timeoutMs: effect.timeout.milliseconds, queueWaitNs: 0, startNs: (needStart - origin).nanoseconds,
                durationNs: (now - needStart).nanoseconds, bytesOut: 0, bytesIn: 0, outcome: "cancelled", error: nil))
        }

        var failure: SkeinError?
        for index in completions.keys.sorted() {
            let completion = completions[index]!
            timeline.effects.append(contentsOf: completion.records)
            if case .success(let output) = completion.result {
                do {
                    try need.effects[index].deliver(output, &state.slots)
                } catch {
                    failure = failure ?? SkeinError(code: 500, what: "effect_result", key: need.effects[index].target,
                                                    message: "could not deliver the result of \(need.effects[index].kind): \(error)")
                }
            }
        }
        if outcome == nil, failure == nil {
            // The request itself was cancelled (its client went away) before the join resolved.
            failure = SkeinError(code: 499, what: "request_cancelled", key: step, message: "the request was cancelled while its effects ran")
        }
        if case .failure(let index) = outcome, failure == nil {
            let effect = need.effects[index]
            if case .failure(let why) = completions[index]?.result {
                failure = why.error(kind: effect.kind, target: effect.target)
            } else {
                failure = SkeinError(code: 502, what: "effect_failed", key: effect.target, message: "\(effect.kind) failed")
            }
        }
        let end = clock.now
        timeline.needs.append(NeedRecord(
            sequence: sequence, step: step, effectCount: need.effects.count, mode: need.mode, join: need.join,
            startNs: (needStart - origin).nanoseconds, durationNs: (end - needStart).nanoseconds,
            outcome: failure == nil ? "success" : "failure", continuation: need.continuation?.name))
        return failure
    }

    struct AttemptSpec: Sendable {
        let need: Int
        let index: Int
        let step: String
        let origin: ContinuousClock.Instant
        let needStart: ContinuousClock.Instant
    }

    /// Every attempt of one effect, with backoff between them.
    private func attempts(_ effect: Effect, spec: AttemptSpec, traceID: String, clock: ContinuousClock) async -> Completion {
        var records: [EffectRecord] = []
        var attempt = 1
        while true {
            let start = clock.now
            let result = await attemptOnce(effect, context: EffectContext(traceID: traceID, attempt: attempt))
            let end = clock.now
            var record = EffectRecord(
                need: spec.need, index: spec.index, step: spec.step, kind: effect.kind, target: effect.target,
                required: effect.required, attempt: attempt, maxAttempts: effect.retry.maxAttempts,
                timeoutMs: effect.timeout.milliseconds, queueWaitNs: (start - spec.needStart).nanoseconds,
                startNs: (start - spec.origin).nanoseconds, durationNs: (end - start).nanoseconds,
                bytesOut: effect.operation.requestBytes, bytesIn: 0, outcome: "success", error: nil)
            switch result {
            case .success(let output):
                record.bytesIn = output.byteCount
                records.append(record)
                return Completion(index: spec.index, result: .success(output), records: records)
            case .failure(let failure):
                record.outcome = failure.outcome
                record.error = failure.message
                records.append(record)
                guard failure.retryable, !Task.isCancelled,
                      let delay = effect.retry.backoff(afterAttempt: attempt, random: Double.random(in: 0..<1))
                else {
                    return Completion(index: spec.index, result: .failure(failure), records: records)
                }
                do { try await Task.sleep(for: delay) } catch {
                    return Completion(index: spec.index, result: .failure(.cancelled), records: records)
                }
                attempt += 1
            }
        }
    }

    /// One attempt, raced against the effect's timeout.
    private func attemptOnce(_ effect: Effect, context: EffectContext) async -> Result<EffectOutput, EffectFailure> {
        let performer = self.performer
        let operation = effect.operation
        let timeout = effect.timeout
        return await withTaskGroup(of: Result<EffectOutput, EffectFailure>?.self) { group in
            group.addTask {
                do {
                    return .success(try await performer.perform(operation, context: context))
                } catch is CancellationError {
                    return .failure(.cancelled)
                } catch {
                    return .failure(.error(error))
                }
            }
            group.addTask {
                do {
                    try await Task.sleep(for: timeout)
                    return .failure(.timeout(timeout))
                } catch {
                    return nil
                }
            }
            var result: Result<EffectOutput, EffectFailure>?
            while result == nil, let next = await group.next() { result = next }
            group.cancelAll()
            return result ?? .failure(.cancelled)
        }
    }
}

extension PipelineRunner.Completion {
    var isSuccess: Bool { if case .success = result { true } else { false } }
}

/// Why one effect attempt failed.
enum EffectFailure: Error, Sendable {
    case timeout(Duration)
    case cancelled
    case error(any Error)

    var outcome: String {
        switch self {
        case .timeout: "timeout"
        case .cancelled: "cancelled"
        case .error: "failure"
        }
    }

    var message: String {
        switch self {
        case .timeout(let d): "timed out after \(Timeline.format(ms: d.milliseconds))"
        case .cancelled: "cancelled"
        case .error(let error as SkeinError): error.message.isEmpty ? error.what : error.message
        case .error(let error): "\(error)"
        }
    }

    /// Client-side errors (a `SkeinError` below 500) are not retried: they would fail again.
    var retryable: Bool {
        switch self {
        case .timeout: true
        case .cancelled: false
        case .error(let error as SkeinError): error.code >= 500
        case .error: true
        }
    }

    func error(kind: String, target: String) -> SkeinError {
        switch self {
        case .timeout: SkeinError(code: 504, what: "effect_timeout", key: target, message: "\(kind) \(message)")
        case .cancelled: SkeinError(code: 503, what: "effect_cancelled", key: target, message: "\(kind) was cancelled")
        case .error(let error as SkeinError): error
        case .error: SkeinError(code: 502, what: "effect_failed", key: target, message: "\(kind) failed: \(message)")
        }
    }
}
