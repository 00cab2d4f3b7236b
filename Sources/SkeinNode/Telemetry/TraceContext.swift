/// W3C trace context: the `traceparent` header a request may carry, and fresh ids.
struct TraceParent: Sendable, Equatable {
    let traceID: String
    let parentID: String
    let flags: String

    /// Parses `00-<32 hex>-<16 hex>-<2 hex>`; nil when malformed or all-zero (as the spec says to ignore).
    init?(header: String) {
        let parts = header.split(separator: "-")
        guard parts.count >= 4, parts[0].count == 2, parts[0] != "ff",
              parts[1].count == 32, parts[2].count == 16, parts[3].count == 2,
              parts.allSatisfy({ $0.allSatisfy(\.isHexDigit) }) else { return nil }
        traceID = parts[1].lowercased()
        parentID = parts[2].lowercased()
        flags = String(parts[3])
        guard traceID != String(repeating: "0", count: 32), parentID != String(repeating: "0", count: 16) else { return nil }
    }

    init(traceID: String, parentID: String, flags: String = "01") {
        self.traceID = traceID
        self.parentID = parentID
        self.flags = flags
    }

    var header: String { "00-\(traceID)-\(parentID)-\(flags)" }

    static func randomTraceID() -> String { hex(IDGenerator.next() | 1, IDGenerator.next()) }
    static func randomSpanID() -> String { hex(IDGenerator.next() | 1) }

    /// The values as lowercase hex, 16 digits each, written straight into one string.
    static func hex(_ values: UInt64...) -> String {
        String(unsafeUninitializedCapacity: 16 * values.count) { buffer in
            var at = 0
            for value in values {
                var v = value
                for i in (0..<16).reversed() {
                    let nibble = UInt8(truncatingIfNeeded: v & 0xf)
                    buffer[at + i] = nibble < 10 ? 0x30 + nibble : 0x57 + nibble
                    v >>= 4
                }
                at += 16
            }
            return at
        }
    }
}

import Synchronization

/// Fresh 64-bit ids without a system call per request: SplitMix64 over an atomic counter,
/// started from a random seed, so ids look random and never repeat within a process.
enum IDGenerator {
    private static let counter = Atomic<UInt64>(UInt64.random(in: 0...UInt64.max))

    static func next() -> UInt64 {
        var z = counter.wrappingAdd(0x9E37_79B9_7F4A_7C15, ordering: .relaxed).newValue
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
