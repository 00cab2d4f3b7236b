/// The pure decision logic of one `need`: which effects to start, and when the need is
/// resolved, given the completions so far. No clocks, no tasks: the runner feeds it events.
///
/// | join | parallel: resolves when | sequential: runs | outcome |
/// |---|---|---|---|
/// | `all` | every effect finished | each in order, stopping at the first required failure | failure if any required effect failed |
/// | `allRequired` | every required effect finished, or a required one failed; optional ones still running are cancelled | in order until the last required one is done, or one failed | failure if a required effect failed |
/// | `any` | the first effect finished; the rest are cancelled | only the first | failure if that effect failed and was required |
/// | `firstSuccess` | the first effect succeeded (the rest cancelled), or all failed | in order until one succeeds | failure only if every effect failed |
///
/// With no effects, a need resolves at once as a success.
public struct JoinMachine: Sendable {
    public enum Action: Sendable, Equatable {
        case start(Int)
        /// Resolved: cancel whatever still runs and drop late results.
        case resolve(Outcome)
    }

    public enum Outcome: Sendable, Equatable {
        case success
        /// Failed because of the effect at this index.
        case failure(index: Int)
    }

    enum State: Equatable { case pending, running, succeeded, failed }

    public let mode: Mode
    public let join: Join
    let required: [Bool]
    var states: [State]
    var next = 0
    public private(set) var resolved: Outcome?

    public init(mode: Mode, join: Join, required: [Bool]) {
        self.mode = mode
        self.join = join
        self.required = required
        self.states = Array(repeating: .pending, count: required.count)
    }

    /// The first actions: start effects, or resolve at once when there are none.
    public mutating func start() -> [Action] {
        if states.isEmpty { return resolve(.success) }
        switch mode {
        case .parallel:
            next = states.count
            for i in states.indices { states[i] = .running }
            return states.indices.map { .start($0) }
        case .sequential:
            return startNext()
        }
    }

    /// An effect finished (after its retries).
    public mutating func complete(_ index: Int, succeeded: Bool) -> [Action] {
        guard resolved == nil, states.indices.contains(index), states[index] == .running else { return [] }
        states[index] = succeeded ? .succeeded : .failed
        if let outcome = decide(after: index, succeeded: succeeded) { return resolve(outcome) }
        if mode == .sequential { return startNext() }
        return []
    }

    private mutating func startNext() -> [Action] {
        // allRequired in sequence stops once no required effect is left to run.
        if join == .allRequired, !required[next...].contains(true) { return resolve(.success) }
        guard next < states.count else { return resolve(finalOutcome()) }
        states[next] = .running
        next += 1
        return [.start(next - 1)]
    }

    private func decide(after index: Int, succeeded: Bool) -> Outcome? {
        let requiredFailure = !succeeded && required[index]
        switch join {
        case .any:
            return requiredFailure ? .failure(index: index) : .success
        case .firstSuccess:
            if succeeded { return .success }
            if states.allSatisfy({ $0 == .failed }) { return .failure(index: index) }
            return nil
        case .allRequired:
            if requiredFailure { return .failure(index: index) }
            if mode == .parallel, required.indices.allSatisfy({ !required[$0] || states[$0] == .succeeded }) { return .success }
            return nil
        case .all:
            if mode == .sequential, requiredFailure { return .failure(index: index) }
            if states.allSatisfy({ $0 == .succeeded || $0 == .failed }) { return finalOutcome() }
            return nil
        }
    }

    private func finalOutcome() -> Outcome {
        if join == .firstSuccess {
            return states.lastIndex(of: .failed).map { .failure(index: $0) } ?? .success
        }
        if let failed = states.indices.first(where: { states[$0] == .failed && required[$0] }) {
            return .failure(index: failed)
        }
        return .success
    }

    private mutating func resolve(_ outcome: Outcome) -> [Action] {
        resolved = outcome
        return [.resolve(outcome)]
    }
}
