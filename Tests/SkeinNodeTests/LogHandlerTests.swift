import Logging
@testable import SkeinNode
import Synchronization
import Testing

@Suite struct LogHandlerTests {
    /// Records what reaches it, and how often a logger's metadata was set on it.
    struct Recorder: LogHandler {
        final class Seen: Sendable {
            let events = Mutex<[(message: String, metadata: [String: String])]>([])
            let metadataSets = Atomic<Int>(0)
        }
        let seen: Seen
        var logLevel: Logger.Level = .info
        var metadata: Logger.Metadata = [:] {
            didSet { seen.metadataSets.add(1, ordering: .relaxed) }
        }
        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }
        func log(event: LogEvent) {
            let merged = metadata.merging(event.metadata ?? [:]) { $1 }
            seen.events.withLock { $0.append(("\(event.message)", merged.mapValues { "\($0)" })) }
        }
    }

    @Test func aLoggersMetadataIsKeptAsValuesAndRenderedOnlyForLinesWritten() {
        let seen = Recorder.Seen()
        var logger = Logger(label: "t") { _ in DeferredMetadataLogHandler(Recorder(seen: seen)) }
        logger[metadataKey: "node"] = "n1"
        for i in 0..<100 { logger[metadataKey: "request"] = "\(i)" }
        logger.debug("below the level: not written")
        logger.info("hello", metadata: ["request": "mine", "extra": "x"])
        #expect(seen.metadataSets.load(ordering: .relaxed) == 0, "the wrapped handler never re-renders on a set")
        let events = seen.events.withLock { $0 }
        #expect(events.count == 1)
        #expect(events.first?.message == "hello")
        #expect(events.first?.metadata == ["node": "n1", "request": "mine", "extra": "x"], "the line's own metadata wins")
        logger.info("again")
        #expect(seen.events.withLock { $0.last?.metadata } == ["node": "n1", "request": "99"])
    }
}
