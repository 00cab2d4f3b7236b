import Synchronization
import SkeinPipeline

/// The timelines of recent requests, for `GET /v1/traces/{traceId}`: a ring of fixed size, the
/// oldest forgotten first. Recording is an array store under a lock (it happens on every
/// request); finding scans the ring (it happens when a person asks).
final class TraceStore: Sendable {
    private struct Ring {
        var slots: [Timeline?]
        var next = 0
    }

    private let ring: Mutex<Ring>
    let capacity: Int

    init(capacity: Int) {
        self.capacity = max(1, capacity)
        ring = Mutex(Ring(slots: Array(repeating: nil, count: max(1, capacity))))
    }

    func record(_ timeline: sending Timeline) {
        ring.withLock { ring in
            ring.slots[ring.next] = timeline
            ring.next = ring.next + 1 == ring.slots.count ? 0 : ring.next + 1
        }
    }

    /// The latest timeline with this trace id (one trace may span several requests).
    func timeline(_ traceID: String) -> Timeline? {
        ring.withLock { ring in
            let n = ring.slots.count
            for offset in 1...n {
                let i = (ring.next - offset + n) % n
                if let t = ring.slots[i], t.traceID == traceID { return t }
            }
            return nil
        }
    }
}
