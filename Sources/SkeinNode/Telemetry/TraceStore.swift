import Synchronization
import SkeinPipeline

/// The timelines of recent requests, by trace id, for `GET /v1/traces/{traceId}`. A ring of
/// fixed size: the oldest is forgotten first.
final class TraceStore: Sendable {
    private struct Ring {
        var order: [String?]
        var next = 0
        var byID: [String: Timeline] = [:]
    }

    private let ring: Mutex<Ring>
    let capacity: Int

    init(capacity: Int) {
        self.capacity = max(1, capacity)
        ring = Mutex(Ring(order: Array(repeating: nil, count: max(1, capacity))))
    }

    func record(_ timeline: Timeline) {
        ring.withLock { ring in
            if let old = ring.order[ring.next] { ring.byID[old] = nil }
            ring.order[ring.next] = timeline.traceID
            ring.byID[timeline.traceID] = timeline
            ring.next = (ring.next + 1) % ring.order.count
        }
    }

    func timeline(_ traceID: String) -> Timeline? {
        ring.withLock { $0.byID[traceID] }
    }
}
