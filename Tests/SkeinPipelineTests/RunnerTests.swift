import Foundation
import SkeinPipeline
import Testing

/// The runner over scripted effects: modes, joins, retries, timeouts, cancellation,
/// continuations, errors and the timeline, with no socket.
@Suite struct RunnerTests {
    static func run(_ steps: [Step], effects: ScriptedEffects = ScriptedEffects { _, _ in .value(nil) }) async -> (RunResult, Timeline) {
        await PipelineHarness().run(Pipeline(steps: steps), request: RequestInfo(.get, "/t"), effects: effects)
    }

    static func key(_ op: EffectOperation) -> String {
        if case .kvGet(let key) = op { return key }
        return op.kind
    }

    @Test func stepsWithoutEffectsFinishWithoutSuspendingAndANeedSuspendsTheRun() async throws {
        let runner = PipelineRunner(performer: ScriptedEffects { op, _ in .value(Data(Self.key(op).utf8)) })
        let write = Step("write", view: ABCView.self) { ctx in
            ctx.put(\.a, Data("x".utf8))
            return .continue
        }
        var timeline = Timeline(traceID: "t", method: "GET", path: "/t", startedAtMs: 0)
        guard case .finished(let done) = runner.start(Pipeline(steps: [write, reportABC]), request: RequestInfo(.get, "/t"), timeline: &timeline) else {
            Issue.record("a pipeline without effects suspended")
            return
        }
        #expect(body(done.response) == "a=x b=- c=-")
        #expect(timeline.steps.map(\.name) == ["write", "report"] && timeline.outcome == "done")

        let fetch = Step("fetch", view: ABCView.self) { ctx in .need(ctx.kvGet("1", into: \.b)) }
        var later = Timeline(traceID: "u", method: "GET", path: "/t", startedAtMs: 0)
        guard case .suspended(let suspended) = runner.start(Pipeline(steps: [write, fetch, reportABC]), request: RequestInfo(.get, "/t"), timeline: &later) else {
            Issue.record("a pipeline with a need finished without running it")
            return
        }
        #expect(later.steps.map(\.name) == ["write", "fetch"] && later.effects.isEmpty)
        let resumed = await runner.resume(suspended, timeline: &later)
        #expect(body(resumed.response) == "a=x b=1 c=-")
        #expect(later.steps.map(\.name) == ["write", "fetch", "report"] && later.effects.count == 1 && later.needs.count == 1)
    }

    @Test func parallelEffectsReallyRunConcurrently() async {
        // Each effect waits until both have started: run one at a time, the first would time out.
        let started = Log()
        let gate = Gate()
        let effects = ScriptedEffects { op, _ in
            started.add(Self.key(op))
            if started.all.count == 2 { gate.open() }
            await gate.wait()
            return .value(Data(Self.key(op).utf8))
        }
        let fetch = Step("fetch", view: ABCView.self) { ctx in
            .need([ctx.kvGet("1", into: \.a).timeout(.seconds(5)), ctx.kvGet("2", into: \.b).timeout(.seconds(5))],
                  mode: .parallel, join: .all)
        }
        let (result, timeline) = await Self.run([fetch, reportABC], effects: effects)
        #expect(body(result.response) == "a=1 b=2 c=-")
        #expect(timeline.effects.count == 2)
    }

    @Test func sequentialEffectsRunInOrder() async {
        let log = Log()
        let effects = ScriptedEffects { op, _ in
            log.add("start \(Self.key(op))")
            try await Task.sleep(for: .milliseconds(5))
            log.add("end \(Self.key(op))")
            return .value(Data(Self.key(op).utf8))
        }
        let fetch = Step("fetch", view: ABCView.self) { ctx in
            .need([ctx.kvGet("1", into: \.a), ctx.kvGet("2", into: \.b), ctx.kvGet("3", into: \.c)], mode: .sequential, join: .all)
        }
        let (result, _) = await Self.run([fetch, reportABC], effects: effects)
        #expect(body(result.response) == "a=1 b=2 c=3")
        #expect(log.all == ["start 1", "end 1", "start 2", "end 2", "start 3", "end 3"])
    }

    @Test func anyCancelsTheLosersAndDropsTheirResults() async {
        let cancelled = Log()
        let effects = ScriptedEffects { op, _ in
            if Self.key(op) == "slow" {
                do { try await Task.sleep(for: .seconds(30)) } catch { cancelled.add("slow"); throw error }
                return .value(Data("late".utf8))
            }
            return .value(Data("fast".utf8))
        }
        let fetch = Step("fetch", view: ABCView.self) { ctx in
            .need([ctx.kvGet("slow", into: \.a), ctx.kvGet("fast", into: \.b)], mode: .parallel, join: .any)
        }
        let (result, timeline) = await Self.run([fetch, reportABC], effects: effects)
        #expect(body(result.response) == "a=- b=fast c=-")
        #expect(timeline.effects.first { $0.target == "slow" }?.outcome == "cancelled")
        // The loser saw its cancellation (give its task a moment to unwind).
        for _ in 0..<200 where cancelled.all.isEmpty { try? await Task.sleep(for: .milliseconds(5)) }
        #expect(cancelled.all == ["slow"])
    }

    @Test func firstSuccessFallsBackInSequence() async {
        let effects = ScriptedEffects { op, _ in
            if Self.key(op) == "primary" { throw TestFailure(description: "primary down") }
            return .value(Data(Self.key(op).utf8))
        }
        let fetch = Step("fetch", view: ABCView.self) { ctx in
            .need([ctx.kvGet("primary", into: \.a), ctx.kvGet("replica", into: \.b), ctx.kvGet("never", into: \.c)],
                  mode: .sequential, join: .firstSuccess)
        }
        let (result, timeline) = await Self.run([fetch, reportABC], effects: effects)
        #expect(body(result.response) == "a=- b=replica c=-")
        #expect(timeline.effects.map(\.target) == ["primary", "replica"])
    }

    @Test func requiredFailureFailsTheRequestWithTheEffectNamed() async {
        let effects = ScriptedEffects { _, _ in throw TestFailure(description: "disk on fire") }
        let fetch = Step("fetch", view: ABCView.self) { ctx in .need(ctx.kvGet("k1", into: \.a)) }
        let (result, _) = await Self.run([fetch, reportABC], effects: effects)
        #expect(result.response.status == .badGateway)
        #expect(result.error?.what == "effect_failed")
        #expect(result.error?.key == "k1")
        #expect(result.error?.message.contains("disk on fire") == true)
    }

    @Test func optionalFailureLeavesTheSlotEmpty() async {
        let effects = ScriptedEffects { op, _ in
            if Self.key(op) == "opt" { throw TestFailure(description: "nope") }
            return .value(Data("ok".utf8))
        }
        let fetch = Step("fetch", view: ABCView.self) { ctx in
            .need([ctx.kvGet("opt", into: \.a).optional(), ctx.kvGet("req", into: \.b)], mode: .parallel, join: .all)
        }
        let (result, _) = await Self.run([fetch, reportABC], effects: effects)
        #expect(result.response.status == .ok)
        #expect(body(result.response) == "a=- b=ok c=-")
    }

    @Test func retriesUntilSuccessAndRecordsEveryAttempt() async {
        let effects = ScriptedEffects { _, attempt in
            if attempt < 3 { throw TestFailure(description: "flaky \(attempt)") }
            return .value(Data("third".utf8))
        }
        let fetch = Step("fetch", view: ABCView.self) { ctx in
            .need(ctx.kvGet("k", into: \.a).retry(RetryPolicy(maxAttempts: 3, initialBackoff: .milliseconds(1))))
        }
        let (result, timeline) = await Self.run([fetch, reportABC], effects: effects)
        #expect(body(result.response) == "a=third b=- c=-")
        #expect(timeline.effects.map(\.attempt) == [1, 2, 3])
        #expect(timeline.effects.map(\.outcome) == ["failure", "failure", "success"])
        #expect(timeline.effects[1].error == "flaky 2")
    }

    @Test func retriesGiveUpAfterMaxAttempts() async {
        let effects = ScriptedEffects { _, _ in throw TestFailure(description: "always") }
        let fetch = Step("fetch", view: ABCView.self) { ctx in
            .need(ctx.kvGet("k", into: \.a).retry(RetryPolicy(maxAttempts: 2, initialBackoff: .milliseconds(1))))
        }
        let (result, timeline) = await Self.run([fetch, reportABC], effects: effects)
        #expect(result.response.status == .badGateway)
        #expect(timeline.effects.count == 2)
    }

    @Test func clientErrorsAreNotRetried() async {
        let effects = ScriptedEffects { _, _ in throw SkeinError(code: 413, what: "value_too_large", key: "k") }
        let fetch = Step("fetch", view: ABCView.self) { ctx in
            .need(ctx.kvGet("k", into: \.a).retry(RetryPolicy(maxAttempts: 5, initialBackoff: .milliseconds(1))))
        }
        let (result, timeline) = await Self.run([fetch, reportABC], effects: effects)
        #expect(result.response.status.code == 413)
        #expect(timeline.effects.count == 1)
    }

    @Test func timeoutIsA504AndIsRetried() async {
        let effects = ScriptedEffects { _, attempt in
            if attempt == 1 { try await Task.sleep(for: .seconds(30)) }
            return .value(Data("second".utf8))
        }
        let fetch = Step("fetch", view: ABCView.self) { ctx in
            .need(ctx.kvGet("k", into: \.a).timeout(.milliseconds(20)).retry(RetryPolicy(maxAttempts: 2, initialBackoff: .milliseconds(1))))
        }
        let (result, timeline) = await Self.run([fetch, reportABC], effects: effects)
        #expect(body(result.response) == "a=second b=- c=-")
        #expect(timeline.effects.first?.outcome == "timeout")

        let slow = ScriptedEffects { _, _ in try await Task.sleep(for: .seconds(30)); return .none }
        let (failed, _) = await Self.run([fetch, reportABC], effects: slow)
        #expect(failed.response.status == .gatewayTimeout)
        #expect(failed.error?.what == "effect_timeout")
    }

    @Test func continuationsChainAndMayNeedMoreEffects() async {
        struct V: SlotView {
            var a = Write<A>()
            var b = Write<B>()
        }
        let second = Step("second", view: V.self, continuations: [reportABC]) { ctx in
            .need(ctx.kvGet("2", into: \.b), then: reportABC)
        }
        let first = Step("first", view: V.self, continuations: [second]) { ctx in
            .need(ctx.kvGet("1", into: \.a), then: second)
        }
        let effects = ScriptedEffects { op, _ in .value(Data(Self.key(op).utf8)) }
        let (result, timeline) = await Self.run([first], effects: effects)
        #expect(body(result.response) == "a=1 b=2 c=-")
        #expect(timeline.steps.map(\.name) == ["first", "second", "report"])
        #expect(timeline.steps.map(\.sequence) == [1, 2, 3])
        #expect(timeline.needs.map(\.continuation) == ["second", "report"])
    }

    @Test func runawayContinuationsAreStopped() async {
        // A step that resumes in itself forever.
        let loop = LoopingStep.make()
        let (result, _) = await Self.run([loop])
        #expect(result.response.status == .internalServerError)
        #expect(result.error?.what == "continuation_limit")
    }

    @Test func undeclaredContinuationIsRefused() async {
        let stray = Step("stray") { _ in .done(.text("stray")) }
        let step = Step("step") { _ in .need([], then: stray) }
        let (result, _) = await Self.run([step])
        #expect(result.error?.what == "undeclared_continuation")
        #expect(result.error?.key == "step")
    }

    @Test func aThrowingStepIsA500NamingTheStep() async {
        let boom = Step("explode") { _ in throw TestFailure(description: "kaboom") }
        let (result, timeline) = await Self.run([boom])
        #expect(result.response.status == .internalServerError)
        #expect(result.error?.key == "explode")
        #expect(result.error?.message.contains("kaboom") == true)
        #expect(timeline.steps.first?.outcome == "threw")
        let json = try? JSONSerialization.jsonObject(with: result.response.body) as? [String: [String: Any]]
        #expect(json?["error"]?["code"] as? Int == 500)
        #expect(json?["error"]?["key"] as? String == "explode")
    }

    @Test func aThrownSkeinErrorKeepsItsCode() async {
        let bad = Step("validate") { _ in throw SkeinError.validation(field: "title", message: "empty") }
        let (result, _) = await Self.run([bad])
        #expect(result.response.status == .badRequest)
        #expect(result.error?.key == "title")
    }

    @Test func aPipelineThatNeverAnswersIsA500() async {
        let (result, _) = await Self.run([Step("noop") { _ in .continue }])
        #expect(result.error?.what == "pipeline_incomplete")
    }

    @Test func requiringAnEmptySlotIsA500NamingStepAndSlot() async {
        struct R: SlotView { var n = Read<Name>() }
        let read = Step("needs_name", view: R.self) { ctx in .done(.text(try ctx.require(\.n))) }
        let (result, _) = await Self.run([read])
        #expect(result.error?.what == "slot_missing")
        #expect(result.error?.key == "Name")
        #expect(result.error?.message.contains("needs_name") == true)
    }

    @Test func computeEffectsDeliverTypedResults() async {
        struct V: SlotView { var n = Write<Count>() }
        struct R: SlotView { var n = Read<Count>() }
        let show = Step("show", view: R.self) { ctx in .done(.text("\(try ctx.require(\.n))")) }
        let work = Step("work", view: V.self, continuations: [show]) { ctx in
            .need(ctx.compute("sum", into: \.n) { (1...100).reduce(0, +) }, then: show)
        }
        let (result, timeline) = await Self.run([work])
        #expect(body(result.response) == "5050")
        #expect(timeline.effects.first?.kind == "compute")
    }

    @Test func customRendererReplacesTheErrorBody() async {
        struct Plain: ErrorRenderer {
            func render(_ error: SkeinError) -> Response { .text("E\(error.code) \(error.what)", status: .init(code: error.code)) }
        }
        let (result, _) = await PipelineHarness().run(
            Pipeline(steps: [Step("x") { _ in .fail(.notFound("thing")) }]), request: RequestInfo(.get, "/"),
            effects: ScriptedEffects { _, _ in .none }, renderer: Plain())
        #expect(body(result.response) == "E404 thing")
    }
}

enum LoopingStep {
    static func make() -> Step {
        // Build a chain deeper than the limit, each step declaring the next as its continuation.
        var step = Step("end") { _ in .done(.text("end")) }
        for i in 0...(PipelineMachine.continuationLimit + 1) {
            let next = step
            step = Step("loop\(i)", continuations: [next]) { _ in .need([], then: next) }
        }
        return step
    }
}
