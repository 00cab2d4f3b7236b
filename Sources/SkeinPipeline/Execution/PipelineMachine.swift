/// The pure decision loop of one request: given what a step decided, or how a need was
/// joined, it says what happens next. The runner owns time, tasks and effects; this owns
/// the rules (order of layers, continuations, the continuation limit, what ends a request).
public struct PipelineMachine: Sendable {
    public enum Next: Sendable {
        case run(Step, StepLayer)
        case effects(Need, requestedBy: Step, layer: StepLayer)
        case respond(Response)
        case fail(SkeinError)
    }

    /// Continuations chained beyond this many within one request are a runaway: 500.
    public static let continuationLimit = 64

    let chain: [PipelineStage]
    var position = 0
    var continuations = 0

    public init(chain: [PipelineStage]) { self.chain = chain }

    public mutating func begin() -> Next { advance() }

    /// The step at hand returned `decision`.
    public mutating func stepDecided(_ decision: Decision, by step: Step, layer: StepLayer) -> Next {
        switch decision {
        case .continue:
            return advance()
        case .done(let response):
            return .respond(response)
        case .fail(let error):
            return .fail(error)
        case .need(let need):
            if let continuation = need.continuation, !step.declares(continuation: continuation) {
                return .fail(SkeinError(
                    code: 500, what: "undeclared_continuation", key: step.name,
                    message: "step '\(step.name)' resumes in '\(continuation.name)', which it does not declare in its continuations"))
            }
            return .effects(need, requestedBy: step, layer: layer)
        }
    }

    /// The effects of a need were joined; `failure` is set if the join failed.
    public mutating func needResolved(_ need: Need, layer: StepLayer, failure: SkeinError?) -> Next {
        if let failure { return .fail(failure) }
        guard let continuation = need.continuation else { return advance() }
        continuations += 1
        if continuations > Self.continuationLimit {
            return .fail(SkeinError(
                code: 500, what: "continuation_limit", key: continuation.name,
                message: "more than \(Self.continuationLimit) continuations in one request"))
        }
        return .run(continuation, layer)
    }

    private mutating func advance() -> Next {
        guard position < chain.count else {
            return .fail(SkeinError(code: 500, what: "pipeline_incomplete", key: chain.last?.step.name ?? "",
                                    message: "every step continued and none produced a response"))
        }
        defer { position += 1 }
        return .run(chain[position].step, chain[position].layer)
    }
}

/// A step at its place in a route's chain.
public struct PipelineStage: Sendable {
    public let step: Step
    public let layer: StepLayer
    public init(step: Step, layer: StepLayer) {
        self.step = step
        self.layer = layer
    }
}
