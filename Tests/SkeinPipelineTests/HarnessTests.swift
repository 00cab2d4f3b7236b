import Foundation
import SkeinPipeline
import Testing

/// What a person testing their own steps does: one step with seeded slots and parameters.
@Suite struct HarnessTests {
    struct GreetView: SlotView {
        var name = Read<Name>()
        var count = Write<Count>()
    }

    static let greet = Step("greet", view: GreetView.self) { ctx in
        let name = try ctx.require(\.name)
        ctx.put(\.count, name.count)
        return .done(.text("hello \(name) from \(ctx.request.parameters["city"] ?? "?")"))
    }

    @Test func oneStepWithSeededSlotsAndParameters() throws {
        var harness = PipelineHarness()
        harness.seed(Name.self, "ada")
        var request = RequestInfo(.get, "/greet/paris")
        request.parameters = ["city": "paris"]
        guard case .done(let response) = try harness.runStep(Self.greet, request: request) else {
            Issue.record("expected done")
            return
        }
        #expect(body(response) == "hello ada from paris")
        #expect(harness.slots.value(of: Count.self) == 3)
    }

    @Test func aStepsNeedCanBeAnsweredByTheTest() throws {
        struct V: SlotView { var a = Write<A>() }
        let fetch = Step("fetch", view: V.self) { ctx in .need(ctx.kvGet("k", into: \.a)) }
        var harness = PipelineHarness()
        guard case .need(let need) = try harness.runStep(fetch) else {
            Issue.record("expected need")
            return
        }
        #expect(need.effects.map(\.kind) == ["kv_get"])
        #expect(need.effects.first?.target == "k")
        try harness.deliver(.value(Data("v".utf8)), to: need.effects[0])
        #expect(harness.slots.value(of: A.self) == .some(Data("v".utf8)))
    }

    @Test func slotValuesKeepTheirTypes() {
        var slots = SlotValues()
        slots.set(A.self, to: nil)
        slots.set(Count.self, to: 7)
        #expect(slots.value(of: A.self) == .some(nil), "a stored nil is distinct from an empty slot")
        #expect(slots.value(of: B.self) == nil)
        #expect(slots.value(of: Count.self) == 7)
        #expect(slots.count == 2)
        #expect(slots.contains(SlotID(A.self)) && !slots.contains(SlotID(B.self)))
    }

    @Test func jsonBodyErrorsNameTheField() {
        struct Input: Decodable { var title: String; var tags: [String] }
        let missing = RequestInfo(.post, "/", body: Data(#"{"tags":[]}"#.utf8))
        #expect(throws: SkeinError.self) { try missing.decodeJSON(Input.self) }
        do {
            _ = try missing.decodeJSON(Input.self)
        } catch {
            #expect(error.key == "title")
            #expect(error.code == 400)
        }
        let wrong = RequestInfo(.post, "/", body: Data(#"{"title":"t","tags":[1]}"#.utf8))
        do {
            _ = try wrong.decodeJSON(Input.self)
            Issue.record("expected an error")
        } catch {
            #expect(error.key == "tags.[0]")
        }
        let garbage = RequestInfo(.post, "/", body: Data("{".utf8))
        do {
            _ = try garbage.decodeJSON(Input.self)
            Issue.record("expected an error")
        } catch {
            #expect(error.what == "invalid_json")
        }
    }

    @Test func queryParameters() {
        let r = RequestInfo(.get, "/x?a=1&b=hello+world&c=%2Fslash&flag")
        #expect(r.queryParameter("a") == "1")
        #expect(r.queryParameter("b") == "hello world")
        #expect(r.queryParameter("c") == "/slash")
        #expect(r.queryParameter("flag") == "")
        #expect(r.queryParameter("missing") == nil)
    }

    @Test func timelineRendersAsText() async {
        struct V: SlotView { var a = Write<A>() }
        let fetch = Step("cart.load", view: V.self) { ctx in
            .need(ctx.kvGet("cart:u_123", into: \.a).retry(RetryPolicy(maxAttempts: 2, initialBackoff: .milliseconds(1))))
        }
        let effects = ScriptedEffects { _, attempt in
            if attempt == 1 { throw TestFailure(description: "timeout-ish") }
            return .value(Data("{}".utf8))
        }
        let (_, timeline) = await PipelineHarness().run(Pipeline(steps: [fetch, reportABC]), request: RequestInfo(.get, "/checkout"), effects: effects)
        let text = timeline.renderText(slowEffectThresholdMs: 0)
        #expect(text.contains("Request: GET /checkout"))
        #expect(text.contains("cart.load"))
        #expect(text.contains("→ kv_get(cart:u_123)"))
        #expect(text.contains("⚠ retry 1/1"))
        #expect(text.contains("✓"))
        #expect(text.contains("SLOW: cart.load"))
    }
}
