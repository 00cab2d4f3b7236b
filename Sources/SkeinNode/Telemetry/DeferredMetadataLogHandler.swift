import Logging

/// swift-log's `StreamLogHandler` renders all of a logger's metadata again whenever one value
/// is set, and Hummingbird sets a request id on a logger for every request: under load that
/// rendering took about 5% of a node's CPU, for lines that are almost never written. This
/// handler keeps a logger's metadata as values and lets the stream handler render it only for a
/// line that is written (a line's own metadata wins over the logger's).
public struct DeferredMetadataLogHandler<Wrapped: LogHandler>: LogHandler {
    private var stream: Wrapped
    public var metadata: Logger.Metadata = [:]

    public init(_ stream: Wrapped) {
        self.stream = stream
    }

    public var logLevel: Logger.Level {
        get { stream.logLevel }
        set { stream.logLevel = newValue }
    }

    public var metadataProvider: Logger.MetadataProvider? {
        get { stream.metadataProvider }
        set { stream.metadataProvider = newValue }
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        guard !metadata.isEmpty else { return stream.log(event: event) }
        var event = event
        event.metadata = event.metadata.map { metadata.merging($0) { _, line in line } } ?? metadata
        stream.log(event: event)
    }
}
