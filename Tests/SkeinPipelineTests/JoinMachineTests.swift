import SkeinPipeline
import Testing

/// The join table of README.md, row by row, as the pure machine decides it.
@Suite struct JoinMachineTests {
    typealias A = JoinMachine.Action

    /// Feeds completions in order; returns every action.
    static func drive(_ mode: Mode, _ join: Join, required: [Bool], completions: [(Int, Bool)]) -> [A] {
        var machine = JoinMachine(mode: mode, join: join, required: required)
        var actions = machine.start()
        for (index, ok) in completions { actions += machine.complete(index, succeeded: ok) }
        return actions
    }

    @Test func noEffectsResolveAtOnce() {
        for join in [Join.all, .allRequired, .any, .firstSuccess] {
            var m = JoinMachine(mode: .parallel, join: join, required: [])
            #expect(m.start() == [.resolve(.success)])
        }
    }

    // all, parallel: waits for every effect; fails if any required failed.
    @Test func allParallelWaitsForEveryEffect() {
        let a = Self.drive(.parallel, .all, required: [true, true, false], completions: [(1, false), (0, true)])
        #expect(a == [.start(0), .start(1), .start(2)], "must still wait for effect 2")
        let b = Self.drive(.parallel, .all, required: [true, true, false], completions: [(1, false), (0, true), (2, true)])
        #expect(b.last == .resolve(.failure(index: 1)))
        let c = Self.drive(.parallel, .all, required: [true, false], completions: [(1, false), (0, true)])
        #expect(c.last == .resolve(.success), "an optional failure does not fail `all`")
    }

    // all, sequential: in order, stops at the first required failure.
    @Test func allSequentialStopsAtRequiredFailure() {
        let a = Self.drive(.sequential, .all, required: [true, true, true], completions: [(0, true), (1, false)])
        #expect(a == [.start(0), .start(1), .resolve(.failure(index: 1))])
        let b = Self.drive(.sequential, .all, required: [false, true], completions: [(0, false), (1, true)])
        #expect(b == [.start(0), .start(1), .resolve(.success)])
    }

    // allRequired: resolves once every required effect is done; optional ones are cut loose.
    @Test func allRequiredParallelIgnoresOptionalStragglers() {
        let a = Self.drive(.parallel, .allRequired, required: [true, false, true], completions: [(0, true), (2, true)])
        #expect(a.last == .resolve(.success))
        let b = Self.drive(.parallel, .allRequired, required: [true, false, true], completions: [(2, false)])
        #expect(b.last == .resolve(.failure(index: 2)), "a required failure resolves at once")
    }

    @Test func allRequiredSequentialSkipsTrailingOptional() {
        let a = Self.drive(.sequential, .allRequired, required: [true, false], completions: [(0, true)])
        #expect(a == [.start(0), .resolve(.success)])
    }

    // any: the first completion decides.
    @Test func anyResolvesOnFirstCompletion() {
        let a = Self.drive(.parallel, .any, required: [true, true], completions: [(1, true)])
        #expect(a.last == .resolve(.success))
        let b = Self.drive(.parallel, .any, required: [true, true], completions: [(1, false)])
        #expect(b.last == .resolve(.failure(index: 1)))
        let c = Self.drive(.parallel, .any, required: [false, true], completions: [(0, false)])
        #expect(c.last == .resolve(.success), "an optional effect's failure does not fail `any`")
        let d = Self.drive(.sequential, .any, required: [true, true], completions: [(0, true)])
        #expect(d == [.start(0), .resolve(.success)], "sequential any runs only the first")
    }

    // firstSuccess: the first success wins; fails only if all fail.
    @Test func firstSuccessParallel() {
        let a = Self.drive(.parallel, .firstSuccess, required: [true, true, true], completions: [(0, false), (2, true)])
        #expect(a.last == .resolve(.success))
        let b = Self.drive(.parallel, .firstSuccess, required: [true, true], completions: [(0, false), (1, false)])
        #expect(b.last == .resolve(.failure(index: 1)))
        let c = Self.drive(.parallel, .firstSuccess, required: [true, true], completions: [(0, false)])
        #expect(c == [.start(0), .start(1)], "one failure of two is not yet a resolution")
    }

    @Test func firstSuccessSequentialIsAFallbackChain() {
        let a = Self.drive(.sequential, .firstSuccess, required: [true, true, true], completions: [(0, false), (1, true)])
        #expect(a == [.start(0), .start(1), .resolve(.success)])
        let b = Self.drive(.sequential, .firstSuccess, required: [true, true], completions: [(0, false), (1, false)])
        #expect(b == [.start(0), .start(1), .resolve(.failure(index: 1))])
    }

    @Test func lateAndDuplicateCompletionsAreIgnored() {
        var m = JoinMachine(mode: .parallel, join: .any, required: [true, true])
        _ = m.start()
        #expect(m.complete(0, succeeded: true) == [.resolve(.success)])
        #expect(m.complete(1, succeeded: false) == [], "a loser's late result is dropped")
        #expect(m.complete(0, succeeded: false) == [])
        #expect(m.complete(7, succeeded: true) == [])
    }
}
