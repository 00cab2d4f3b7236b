public import Foundation
public import HTTPTypes

/// Runs one step, or a whole pipeline, without a socket: seed slots and parameters, supply
/// effect results, then inspect the decision, the slots, the response and the timeline.
///
/// ```swift
/// var harness = PipelineHarness()
/// harness.seed(PostID.self, "p1")
/// let decision = try harness.runStep(loadPost, request: RequestInfo(.get, "/blog/posts/p1"))
/// ```
public struct PipelineHarness: Sendable {
    public var slots = SlotValues()

    public init() {}

    /// Puts a value into a slot before the run.
    public mutating func seed<S: Slot>(_ slot: S.Type, _ value: S.Value) {
        slots.set(slot, to: value)
    }

    /// Runs one step against the seeded slots; its writes stay in ``slots``.
    public mutating func runStep(_ step: Step, request: RequestInfo = RequestInfo(.get, "/")) throws -> Decision {
        let state = StepState(request: request, slots: slots, stepName: step.name)
        defer { slots = state.slots }
        return try step.body(state)
    }

    /// Delivers an effect's result into the slots, as the runtime would after the effect ran.
    public mutating func deliver(_ output: EffectOutput, to effect: Effect) throws {
        try effect.deliver(output, &slots)
    }

    /// Runs a whole pipeline with effects answered by `effects`.
    public func run(
        _ pipeline: Pipeline, request: RequestInfo, effects: any EffectPerformer,
        renderer: any ErrorRenderer = JSONErrorRenderer()
    ) async -> (RunResult, Timeline) {
        var timeline = Timeline(traceID: request.traceID, method: request.method.rawValue, path: request.path, startedAtMs: 0)
        let result = await PipelineRunner(performer: effects, renderer: renderer)
            .run(pipeline, request: request, slots: slots, timeline: &timeline)
        return (result, timeline)
    }
}

/// An effect performer whose answers a test supplies: a closure from operation and attempt to
/// a result (or a thrown error), optionally after a delay. Compute effects run their closure.
public struct ScriptedEffects: EffectPerformer {
    public typealias Script = @Sendable (EffectOperation, Int) async throws -> EffectOutput

    let script: Script

    public init(_ script: @escaping Script) { self.script = script }

    public func perform(_ operation: EffectOperation, context: EffectContext) async throws -> EffectOutput {
        if case .compute(_, let work) = operation { return .computed(try work()) }
        return try await script(operation, context.attempt)
    }
}
