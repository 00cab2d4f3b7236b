import Foundation

/// Where an instance stands (CONTRACT.md's names).
public enum InstanceStatus: String, Codable, Sendable, CaseIterable {
    case inProgress = "in_progress"
    case completed
    case failed
    case cancelled
    case paused
    case waiting
    case awaitingSignal = "awaiting_signal"

    public var isTerminal: Bool { self == .completed || self == .failed || self == .cancelled }
}

/// One active node of an instance: a task waiting to run or running, a sequence's position, a
/// fork's finished branches, a loop's iteration, a route's choice, a delay's or a signal
/// wait's wake time. Only active nodes are kept, so a checkpoint's size does not grow with
/// the instance's history.
public struct Frame: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable { case task, sequence, fork, join, loop, route, delay, signal }

    public var kind: Kind
    public var input: Payload?
    /// Task, join and loop body: the attempt to run next (counted from 1).
    public var attempt: Int = 1
    /// A retry's earliest start (milliseconds since 1970), or nil when runnable now.
    public var notBefore: Int64?
    /// Sequence: the child being run. Loop: the iteration (from 1).
    public var index: Int = 0
    /// Fork: results of the finished branches.
    public var done: [String: Payload]?
    /// Route: the branch taken.
    public var chosen: String?
    /// Delay: when it ends. Signal: when the wait times out.
    public var wakeAt: Int64?
    /// A task with a timeout: when its current attempt must have finished (milliseconds since
    /// 1970), fixed by the checkpoint that made the attempt runnable, so an owner that takes
    /// the instance over mid-attempt gives it only what is left.
    public var deadline: Int64?

    public init(kind: Kind, input: Payload? = nil) {
        self.kind = kind
        self.input = input
    }
}

/// Everything durable about one instance: what the partition log checkpoints after every
/// change. It holds the active frames, not the history (completed results and the timeline
/// are appended elsewhere), so step 5,000 costs what step 10 does.
public struct InstanceState: Codable, Sendable, Equatable {
    public var id: String
    public var workflow: String
    public var definitionHash: String
    public var status: InstanceStatus
    public var input: Payload
    public var output: Payload?
    public var error: String?
    public var frames: [String: Frame]
    /// Signals sent before anyone waited for them, oldest first, per name.
    public var signals: [String: [Payload]]
    public var pauseRequested: Bool
    public var cancelRequested: Bool
    public var completedTasks: Int
    /// The earliest timer (delay end, retry, signal timeout), for `waiting` and the shell.
    public var wakeAt: Int64?
    /// The signal awaited, when `awaiting_signal`.
    public var signalName: String?
    /// Checkpoints applied so far (the log entry that changes it names the version it follows).
    public var version: UInt64
    public var createdAt: Int64
    public var updatedAt: Int64
}

/// A task the shell should run now.
public struct TaskRun: Sendable, Equatable {
    /// The frame's node id.
    public let node: String
    /// What the timeline and the results call it: the node id, or `id#iteration` for a loop body.
    public let key: String
    public let attempt: Int
    public let input: Payload
    public let timeout: Duration?
    /// When this attempt must have finished (set whenever `timeout` is): a run started after
    /// a failover gets what remains of it, not a fresh timeout.
    public let deadline: Int64?

    public init(node: String, key: String, attempt: Int, input: Payload, timeout: Duration?, deadline: Int64? = nil) {
        self.node = node
        self.key = key
        self.attempt = attempt
        self.input = input
        self.timeout = timeout
        self.deadline = deadline
    }
}

/// Something that changes an instance.
public enum InstanceEvent: Codable, Sendable, Equatable {
    case taskCompleted(key: String, attempt: Int, output: Payload, durationMs: Int)
    case taskFailed(key: String, attempt: Int, error: String, durationMs: Int)
    /// Time passed (delays end, retries become due, signal waits time out).
    case timer
    case signal(name: String, payload: Payload)
    case cancel(reason: String?)
    case pause(reason: String?)
    case unpause
    case resume
}

/// A line of an instance's timeline as the core sees it; the shell adds the node and epoch.
public struct TimelineEntry: Codable, Sendable, Equatable {
    public var at: Int64
    public var kind: String
    public var task: String?
    public var attempt: Int?
    public var durationMs: Int?
    public var detail: String?

    public init(at: Int64, kind: String, task: String? = nil, attempt: Int? = nil, durationMs: Int? = nil, detail: String? = nil) {
        self.at = at
        self.kind = kind
        self.task = task
        self.attempt = attempt
        self.durationMs = durationMs
        self.detail = detail
    }
}

/// The outcome of one event: the next state, the task results to keep, timeline lines, and
/// whether anything changed at all (a late result of an abandoned attempt changes nothing).
public struct Transition: Sendable, Equatable {
    public var state: InstanceState
    public var results: [String: Payload] = [:]
    public var timeline: [TimelineEntry] = []
    public var changed: Bool = true
    /// Why the event was refused (e.g. pausing a completed instance), if it was.
    public var refused: String?
}

/// What `run` does when the id is taken.
public enum ConflictPolicy: String, Codable, Sendable {
    case fail
    case useExisting
    case terminateExisting
}

public enum StartDecision: Sendable, Equatable {
    /// Start a fresh instance (none existed, or the old one is to be replaced).
    case start
    /// Answer with the existing instance's status; do nothing.
    case existing
    /// Refuse (the reason says why).
    case conflict(String)
}

extension InstanceState {
    /// The state as the JSON a checkpoint stores, written directly: the same document
    /// `JSONEncoder` writes with `.sortedKeys` (keys sorted, absent optionals left out, a
    /// payload as the string of its JSON), without the encoder's generic machinery. Every step
    /// commits one, and a profile of 200 instances had `JSONEncoder` at about 5% of a node's CPU.
    /// Read back with `JSONDecoder`; a test compares both ways on states of every shape.
    public func checkpointJSON() -> [UInt8] {
        var out = CheckpointWriter()
        out.open()
        out.key("cancelRequested"); out.bool(cancelRequested)
        out.key("completedTasks"); out.int(Int64(completedTasks))
        out.key("createdAt"); out.int(createdAt)
        out.key("definitionHash"); out.string(definitionHash)
        if let error { out.key("error"); out.string(error) }
        out.key("frames")
        out.open()
        for name in frames.keys.sorted() {
            let f = frames[name]!
            out.key(name)
            out.open()
            out.key("attempt"); out.int(Int64(f.attempt))
            if let chosen = f.chosen { out.key("chosen"); out.string(chosen) }
            if let deadline = f.deadline { out.key("deadline"); out.int(deadline) }
            if let done = f.done {
                out.key("done")
                out.open()
                for branch in done.keys.sorted() { out.key(branch); out.string(done[branch]!.description) }
                out.close()
            }
            out.key("index"); out.int(Int64(f.index))
            if let input = f.input { out.key("input"); out.string(input.description) }
            out.key("kind"); out.string(f.kind.rawValue)
            if let notBefore = f.notBefore { out.key("notBefore"); out.int(notBefore) }
            if let wakeAt = f.wakeAt { out.key("wakeAt"); out.int(wakeAt) }
            out.close()
        }
        out.close()
        out.key("id"); out.string(id)
        out.key("input"); out.string(input.description)
        if let output { out.key("output"); out.string(output.description) }
        out.key("pauseRequested"); out.bool(pauseRequested)
        if let signalName { out.key("signalName"); out.string(signalName) }
        out.key("signals")
        out.open()
        for name in signals.keys.sorted() {
            out.key(name)
            out.bytes.append(UInt8(ascii: "["))
            for (i, payload) in signals[name]!.enumerated() {
                if i > 0 { out.bytes.append(UInt8(ascii: ",")) }
                out.string(payload.description)
            }
            out.bytes.append(UInt8(ascii: "]"))
        }
        out.close()
        out.key("status"); out.string(status.rawValue)
        out.key("updatedAt"); out.int(updatedAt)
        out.key("version"); out.bytes.append(contentsOf: String(version).utf8)
        if let wakeAt { out.key("wakeAt"); out.int(wakeAt) }
        out.key("workflow"); out.string(workflow)
        out.close()
        return out.bytes
    }
}

/// A minimal JSON writer for documents written on every step (``InstanceState/checkpointJSON()``,
/// the node's timeline lines): objects, keys, strings (escaped as `JSONEncoder` escapes them),
/// integers and booleans. Keys go out in the order written.
public struct CheckpointWriter {
    public internal(set) var bytes: [UInt8] = []
    private var first: [Bool] = []

    public init(capacity: Int = 512) { bytes.reserveCapacity(capacity) }

    public mutating func open() {
        bytes.append(UInt8(ascii: "{"))
        first.append(true)
    }

    public mutating func close() {
        bytes.append(UInt8(ascii: "}"))
        first.removeLast()
    }

    public mutating func key(_ name: String) {
        if first[first.count - 1] { first[first.count - 1] = false } else { bytes.append(UInt8(ascii: ",")) }
        string(name)
        bytes.append(UInt8(ascii: ":"))
    }

    public mutating func bool(_ value: Bool) { bytes.append(contentsOf: (value ? "true" : "false").utf8) }

    public mutating func int(_ value: Int64) { bytes.append(contentsOf: String(value).utf8) }

    public mutating func uint(_ value: UInt64) { bytes.append(contentsOf: String(value).utf8) }

    public mutating func string(_ value: String) {
        bytes.append(UInt8(ascii: "\""))
        for byte in value.utf8 {
            switch byte {
            case UInt8(ascii: "\""): bytes.append(contentsOf: #"\""#.utf8)
            case UInt8(ascii: "\\"): bytes.append(contentsOf: #"\\"#.utf8)
            case UInt8(ascii: "/"): bytes.append(contentsOf: #"\/"#.utf8)
            case 0x0A: bytes.append(contentsOf: #"\n"#.utf8)
            case 0x0D: bytes.append(contentsOf: #"\r"#.utf8)
            case 0x09: bytes.append(contentsOf: #"\t"#.utf8)
            case 0x08: bytes.append(contentsOf: #"\b"#.utf8)
            case 0x0C: bytes.append(contentsOf: #"\f"#.utf8)
            case 0..<0x20:
                let hex = Array("0123456789abcdef".utf8)
                bytes.append(contentsOf: #"\u00"#.utf8)
                bytes.append(hex[Int(byte >> 4)])
                bytes.append(hex[Int(byte & 0xF)])
            default: bytes.append(byte)
            }
        }
        bytes.append(UInt8(ascii: "\""))
    }
}
