@testable import SkeinNode
import SkeinPipeline
import Testing

@Suite struct TraceStoreTests {
    static func timeline(_ id: String, _ path: String) -> Timeline {
        Timeline(traceID: id, method: "GET", path: path, startedAtMs: 0)
    }

    @Test func keepsTheMostRecentAndForgetsTheOldest() {
        let store = TraceStore(capacity: 2)
        store.record(Self.timeline("a", "/1"))
        store.record(Self.timeline("b", "/2"))
        store.record(Self.timeline("c", "/3"))
        #expect(store.timeline("a") == nil)
        #expect(store.timeline("b")?.path == "/2")
        #expect(store.timeline("c")?.path == "/3")
    }

    @Test func aRepeatedTraceIDKeepsItsLatestTimeline() {
        let store = TraceStore(capacity: 2)
        store.record(Self.timeline("t", "/first"))
        store.record(Self.timeline("t", "/second"))
        store.record(Self.timeline("u", "/other"))  // evicts the slot of "/first" only
        #expect(store.timeline("t")?.path == "/second")
        #expect(store.timeline("u")?.path == "/other")
    }

    @Test func traceparentParsing() {
        let p = TraceParent(header: "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01")
        #expect(p?.traceID == "0af7651916cd43dd8448eb211c80319c")
        #expect(TraceParent(header: "00-00000000000000000000000000000000-b7ad6b7169203331-01") == nil)
        #expect(TraceParent(header: "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01") == nil)
        #expect(TraceParent(header: "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01") == nil)
        #expect(TraceParent(header: "00-xyz-b7ad6b7169203331-01") == nil)
        #expect(TraceParent.randomTraceID().count == 32)
        #expect(TraceParent.randomSpanID().count == 16)
    }
}
