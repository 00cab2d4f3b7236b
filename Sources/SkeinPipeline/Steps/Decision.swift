/// What a step tells the runtime to do next.
public enum Decision: Sendable {
    /// Go on to the next step of the pipeline.
    case `continue`
    /// Run these effects, then resume (at the continuation, or at the next step).
    case need(Need)
    /// Answer the request.
    case done(Response)
    /// Answer with this error.
    case fail(SkeinError)

    /// Declares effects to run; when they are joined, `then` runs (it must be one of the
    /// step's declared continuations), or the pipeline goes on to its next step.
    public static func need(
        _ effects: [Effect], mode: Mode = .parallel, join: Join = .all, then continuation: Step? = nil
    ) -> Decision {
        .need(Need(effects: effects, mode: mode, join: join, continuation: continuation))
    }

    /// One effect, then `then`.
    public static func need(_ effect: Effect, then continuation: Step? = nil) -> Decision {
        .need([effect], mode: .sequential, join: .all, then: continuation)
    }

    var outcomeName: String {
        switch self {
        case .continue: "continue"
        case .need: "need"
        case .done: "done"
        case .fail: "fail"
        }
    }
}

/// Effects a step needs, how they run, how their results are joined, and where to resume.
public struct Need: Sendable {
    public var effects: [Effect]
    public var mode: Mode
    public var join: Join
    public var continuation: Step?

    public init(effects: [Effect], mode: Mode = .parallel, join: Join = .all, continuation: Step? = nil) {
        self.effects = effects
        self.mode = mode
        self.join = join
        self.continuation = continuation
    }
}

/// How the effects of one need run.
public enum Mode: String, Sendable, Codable {
    /// One after another, in the order given.
    case sequential
    /// All at once, concurrently.
    case parallel
}

/// When the effects of one need count as done, and whether that is a success.
/// See the table in README.md ("Joins"); ``JoinMachine`` is the executable definition.
public enum Join: String, Sendable, Codable {
    case all
    case allRequired
    case any
    case firstSuccess
}
