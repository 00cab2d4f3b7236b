import Foundation
@testable import SkeinNode
import Testing

/// A workflow timeline line is written by hand (date and JSON) on every task attempt: it must
/// read as Foundation's ISO 8601 style and `JSONEncoder` would have written it.
@Suite struct TimelineLineTests {
    static func foundationFormat(_ ms: Int64) -> String {
        Date(timeIntervalSince1970: Double(ms) / 1000).formatted(
            .iso8601.year().month().day().timeZone(separator: .omitted).time(includingFractionalSeconds: true)
                .timeSeparator(.colon).dateSeparator(.dash))
    }

    @Test func datesMatchFoundationsISO8601Style() {
        var ms: [Int64] = [0, 1, 999, 1_000, 86_399_999, 86_400_000, 951_782_400_000 /* 2000-02-29 */,
                           1_709_164_800_123 /* 2024-02-29 */, 1_735_689_599_999 /* 2024-12-31T23:59:59.999 */,
                           1_795_000_000_456, 4_102_444_800_000 /* 2100-01-01 */, 253_402_300_799_999 /* 9999-12-31 */]
        var random = SystemRandomNumberGenerator()
        for _ in 0..<2_000 { ms.append(Int64.random(in: 0...4_102_444_800_000, using: &random)) }
        for m in ms {
            // Whole seconds are exact as a Double, so Foundation's style is the oracle for the
            // date and time; the milliseconds are the remainder. (On the milliseconds themselves
            // the style truncates a Double and writes .998 for .999 now and then.)
            let second = Self.foundationFormat(m - m % 1_000)
            #expect(second.hasSuffix(".000Z"))
            let expected = second.dropLast(4) + String(format: "%03d", Int(m % 1_000)) + "Z"
            #expect(TimelineLine.format(m) == expected, "at \(m) ms")
        }
    }

    @Test func linesMatchJSONEncoderWithSortedKeys() throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let lines = [
            TimelineLine(at: 1_795_000_000_456, kind: "task_started", task: "charge#2", attempt: 3, node: "n1", epoch: 7),
            TimelineLine(at: 0, kind: "adopted", node: "n2", epoch: UInt64.max, detail: "owner since epoch 3 gone; resuming from version 12"),
            TimelineLine(at: 1_709_164_800_123, kind: "task_failed", task: "a/b", attempt: 1, node: "n3", epoch: 1, durationMs: 1_250,
                         detail: "quote \" backslash \\ slash / newline \n tab \t control \u{01} and ünïcødé ✓"),
            TimelineLine(at: 42, kind: "signal", node: "", epoch: 0),
        ]
        for line in lines {
            #expect(line.bytes == Array(try encoder.encode(line)), "\(line)")
        }
    }
}
