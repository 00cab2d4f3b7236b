public import Foundation

/// Everything that happened while one request was served, recorded by the runtime with no
/// code in the steps. Times are nanoseconds from the request's start.
public struct Timeline: Sendable, Codable {
    public var traceID: String
    public var method: String
    public var path: String
    /// The route pattern that matched, if any.
    public var route: String?
    /// Wall-clock start, milliseconds since 1970.
    public var startedAtMs: Int64
    /// Time from the request's arrival to its first step (body collection, scheduling).
    public var queueWaitNs: Int64 = 0
    public var durationNs: Int64 = 0
    public var status: Int = 0
    /// `done`, `fail`, or `error` (a thrown step, a failed join).
    public var outcome: String = ""
    public var error: SkeinError?
    public var steps: [StepRecord] = []
    public var needs: [NeedRecord] = []
    public var effects: [EffectRecord] = []

    public init(traceID: String, method: String, path: String, startedAtMs: Int64) {
        self.traceID = traceID
        self.method = method
        self.path = path
        self.startedAtMs = startedAtMs
    }
}

/// One step run.
public struct StepRecord: Sendable, Codable, Equatable {
    public var name: String
    public var layer: StepLayer
    /// Position in the request, counted from 1 (continuations get their own numbers).
    public var sequence: Int
    /// `continue`, `need`, `done`, `fail`, or `threw`.
    public var outcome: String
    public var startNs: Int64
    public var durationNs: Int64
}

/// One `need`: the effects a step asked for and how they were joined.
public struct NeedRecord: Sendable, Codable, Equatable {
    /// Counted from 1 within the request.
    public var sequence: Int
    public var step: String
    public var effectCount: Int
    public var mode: Mode
    public var join: Join
    public var startNs: Int64
    public var durationNs: Int64
    /// `success` or `failure`.
    public var outcome: String
    public var continuation: String?
}

/// One attempt of one effect.
public struct EffectRecord: Sendable, Codable, Equatable {
    public var need: Int
    public var index: Int
    public var step: String
    public var kind: String
    public var target: String
    public var required: Bool
    /// Counted from 1.
    public var attempt: Int
    public var maxAttempts: Int
    public var timeoutMs: Double
    /// Time from the need's start to this attempt's start (sequential order, backoff).
    public var queueWaitNs: Int64
    public var startNs: Int64
    public var durationNs: Int64
    public var bytesOut: Int
    public var bytesIn: Int
    /// `success`, `failure`, `timeout`, or `cancelled`.
    public var outcome: String
    public var error: String?
}
