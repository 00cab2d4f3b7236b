import Foundation
import SkeinPipeline
import Testing

/// Static read-before-write validation when the router is built.
@Suite struct ValidationTests {
    struct WriteName: SlotView { var name = Write<Name>() }
    struct ReadName: SlotView { var name = Read<Name>() }
    struct MaybeName: SlotView { var name = ReadIfPresent<Name>() }
    struct FetchA: SlotView { var a = Write<A>() }
    struct ReadA: SlotView { var a = Read<A>() }

    static let produce = Step("produce", view: WriteName.self) { ctx in ctx.put(\.name, "x"); return .continue }
    static let consume = Step("consume", view: ReadName.self) { ctx in .done(.text(try ctx.require(\.name))) }

    @Test func readBeforeWriteIsRejectedNamingRouteStepAndSlot() {
        var routes = RouterBuilder()
        routes.add(.get, "/bad", steps: [Self.consume, Self.produce])
        #expect {
            try routes.build()
        } throws: { error in
            guard let error = error as? PipelineError else { return false }
            return error.route == "GET /bad" && error.step == "consume" && error.slot == "Name"
                && error.message.contains("step 'consume' reads slot 'Name'")
        }
    }

    @Test func writeThenReadIsAccepted() throws {
        var routes = RouterBuilder()
        routes.add(.get, "/good", steps: [Self.produce, Self.consume])
        _ = try routes.build()
    }

    @Test func globalAndRouteBeforeStepsCountAsEarlier() throws {
        var routes = RouterBuilder()
        routes.use(Self.produce)
        routes.add(.get, "/g", steps: [Self.consume])
        _ = try routes.build()
        var routes2 = RouterBuilder()
        routes2.add(.get, "/r", before: [Self.produce], steps: [Self.consume])
        _ = try routes2.build()
    }

    @Test func anEffectsResultSlotSatisfiesALaterRead() throws {
        let render = Step("render", view: ReadA.self) { ctx in .done(.text("\(try ctx.require(\.a)?.count ?? 0)")) }
        let fetch = Step("fetch", view: FetchA.self, continuations: [render]) { ctx in .need(ctx.kvGet("k", into: \.a), then: render) }
        var routes = RouterBuilder()
        routes.add(.get, "/e", steps: [fetch])
        _ = try routes.build()
        var routes2 = RouterBuilder()
        routes2.add(.get, "/e2", steps: [fetch, render])
        _ = try routes2.build()
    }

    @Test func continuationsAreValidatedToo() {
        let bad = Step("render_too_early", view: ReadName.self) { ctx in .done(.text(try ctx.require(\.name))) }
        let fetch = Step("fetch", view: FetchA.self, continuations: [bad]) { ctx in .need(ctx.kvGet("k", into: \.a), then: bad) }
        var routes = RouterBuilder()
        routes.add(.get, "/c", steps: [fetch, Self.produce])
        #expect {
            try routes.build()
        } throws: { error in
            (error as? PipelineError).map { $0.step == "render_too_early" && $0.slot == "Name" && $0.message.contains("continuation of 'fetch'") } ?? false
        }
    }

    @Test func optionalReadsNeedNoWriter() throws {
        let peek = Step("peek", view: MaybeName.self) { ctx in .done(.text(ctx.optional(\.name) ?? "none")) }
        var routes = RouterBuilder()
        routes.add(.get, "/o", steps: [peek])
        _ = try routes.build()
    }

    @Test func duplicateRoutesAreRejected() {
        var routes = RouterBuilder()
        routes.add(.get, "/d", steps: [Self.produce, Self.consume])
        routes.add(.get, "/d", steps: [Self.produce, Self.consume])
        #expect(throws: PipelineError.self) { try routes.build() }
    }
}

/// Middleware order, and any non-continue decision stopping the chain.
@Suite struct MiddlewareTests {
    struct TrailView: SlotView { var trail = ReadWrite<Trail>() }
    struct StartView: SlotView { var trail = Write<Trail>() }

    static func mark(_ name: String) -> Step {
        Step(name, view: TrailView.self) { ctx in
            ctx.put(\.trail, try ctx.require(\.trail) + [name])
            return .continue
        }
    }
    static let start = Step("start", view: StartView.self) { ctx in ctx.put(\.trail, ["start"]); return .continue }
    static let finish = Step("finish", view: TrailView.self) { ctx in .done(.text(try ctx.require(\.trail).joined(separator: ","))) }

    static func run(_ routes: RouterBuilder, _ path: String) async throws -> (Response, Timeline) {
        let router = try routes.build()
        guard case .found(let pipeline, _, _) = router.match(method: "GET", path: path) else { throw TestFailure(description: "no route") }
        let (result, timeline) = await PipelineHarness().run(pipeline, request: RequestInfo(.get, path), effects: ScriptedEffects { _, _ in .none })
        return (result.response, timeline)
    }

    @Test func globalThenRouteThenMain() async throws {
        var routes = RouterBuilder()
        routes.use(Self.start, Self.mark("global"))
        routes.add(.get, "/m", before: [Self.mark("route")], steps: [Self.mark("main"), Self.finish])
        let (response, timeline) = try await Self.run(routes, "/m")
        #expect(body(response) == "start,global,route,main")
        #expect(timeline.steps.map(\.layer) == [.global, .global, .route, .main, .main])
    }

    @Test func aBeforeStepThatAnswersStopsTheChain() async throws {
        let deny = Step("auth") { ctx in
            ctx.request.headers[.authorization] == nil ? .fail(SkeinError(code: 401, what: "unauthorized", key: "authorization")) : .continue
        }
        var routes = RouterBuilder()
        routes.use(Self.start)
        routes.add(.get, "/m", before: [deny], steps: [Self.mark("main"), Self.finish])
        let (response, timeline) = try await Self.run(routes, "/m")
        #expect(response.status == .unauthorized)
        #expect(timeline.steps.map(\.name) == ["start", "auth"])
    }
}
