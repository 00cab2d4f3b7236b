public import SkeinCluster

/// A change to one workflow instance, as the partition log carries it: the instance's new
/// state (opaque JSON to the store; the workflow core reads it), the results of the tasks it
/// just completed, and lines for its timeline. It applies only on top of `baseVersion` (a
/// change computed from an older state is refused as a conflict) unless it `replace`s.
public struct InstanceChange: Sendable, Equatable {
    public var id: String
    public var workflow: String
    public var status: String
    public var wakeAt: Int64?
    public var baseVersion: UInt64
    public var version: UInt64
    public var replace: Bool
    public var state: [UInt8]
    public var results: [String: [UInt8]]
    public var timeline: [[UInt8]]

    public init(id: String, workflow: String, status: String, wakeAt: Int64?, baseVersion: UInt64, version: UInt64, replace: Bool,
                state: [UInt8], results: [String: [UInt8]], timeline: [[UInt8]]) {
        self.id = id
        self.workflow = workflow
        self.status = status
        self.wakeAt = wakeAt
        self.baseVersion = baseVersion
        self.version = version
        self.replace = replace
        self.state = state
        self.results = results
        self.timeline = timeline
    }
}

/// A command of a partition's log: a key-value write, or a workflow instance's checkpoint.
public enum PartitionCommand: Sendable, Equatable {
    case put(key: String, value: [UInt8])
    case delete(key: String)
    case instance(InstanceChange)
    /// Timeline lines that change no state (a task attempt starting, an adoption), for
    /// several instances of the partition at once.
    case timelines([TimelineBatch])

    public struct TimelineBatch: Sendable, Equatable {
        public var instance: String
        public var entries: [[UInt8]]
        public init(instance: String, entries: [[UInt8]]) {
            self.instance = instance
            self.entries = entries
        }
    }

    public func encode() -> [UInt8] {
        var w = WireWriter()
        switch self {
        case .put(let key, let value):
            w.byte(1); w.string(key, max: 1 << 16); w.blob(value)
        case .delete(let key):
            w.byte(2); w.string(key, max: 1 << 16)
        case .instance(let c):
            w.byte(3)
            w.string(c.id, max: 1 << 16); w.string(c.workflow, max: 1 << 16); w.string(c.status)
            if let at = c.wakeAt { w.byte(1); w.varint(UInt64(bitPattern: at)) } else { w.byte(0) }
            w.varint(c.baseVersion); w.varint(c.version); w.byte(c.replace ? 1 : 0)
            w.blob(c.state)
            w.varint(UInt64(c.results.count))
            for key in c.results.keys.sorted() { w.string(key, max: 1 << 16); w.blob(c.results[key]!) }
            w.varint(UInt64(c.timeline.count))
            for line in c.timeline { w.blob(line) }
        case .timelines(let batches):
            w.byte(5)
            w.varint(UInt64(batches.count))
            for b in batches {
                w.string(b.instance, max: 1 << 16)
                w.varint(UInt64(b.entries.count))
                for line in b.entries { w.blob(line) }
            }
        }
        return w.bytes
    }

    public static func decode(_ bytes: [UInt8]) -> PartitionCommand? {
        var r = WireReader(bytes: bytes)
        do {
            let command: PartitionCommand
            switch try r.byte("op") {
            case 1: command = .put(key: try r.string("key", max: 1 << 16), value: try r.blob("value", max: RaftCodec.maxPayload))
            case 2: command = .delete(key: try r.string("key", max: 1 << 16))
            case 3:
                let id = try r.string("id", max: 1 << 16), workflow = try r.string("workflow", max: 1 << 16), status = try r.string("status")
                let wakeAt: Int64? = try r.byte("wake flag") == 1 ? Int64(bitPattern: try r.varint("wake")) : nil
                let base = try r.varint("base"), version = try r.varint("version"), replace = try r.byte("replace") == 1
                let state = try r.blob("state", max: RaftCodec.maxPayload)
                var results: [String: [UInt8]] = [:]
                for _ in 0..<(try r.count("results", max: 1 << 20)) {
                    let key = try r.string("result key", max: 1 << 16)
                    results[key] = try r.blob("result", max: RaftCodec.maxPayload)
                }
                var timeline: [[UInt8]] = []
                for _ in 0..<(try r.count("timeline", max: 1 << 20)) { timeline.append(try r.blob("line", max: RaftCodec.maxPayload)) }
                command = .instance(InstanceChange(id: id, workflow: workflow, status: status, wakeAt: wakeAt, baseVersion: base, version: version,
                                                   replace: replace, state: state, results: results, timeline: timeline))
            case 5:
                var batches: [TimelineBatch] = []
                for _ in 0..<(try r.count("batches", max: 1 << 20)) {
                    let id = try r.string("id", max: 1 << 16)
                    var lines: [[UInt8]] = []
                    for _ in 0..<(try r.count("timeline", max: 1 << 20)) { lines.append(try r.blob("line", max: RaftCodec.maxPayload)) }
                    batches.append(TimelineBatch(instance: id, entries: lines))
                }
                command = .timelines(batches)
            default: return nil
            }
            return r.atEnd ? command : nil
        } catch {
            return nil
        }
    }
}

extension PartitionCommand {
    /// The precondition the host decides when this command is proposed (``VersionCheck``): an
    /// instance change applies only on top of its base version, a replacement always.
    public var versionCheck: VersionCheck? {
        guard case .instance(let c) = self else { return nil }
        return VersionCheck(key: c.id, base: c.replace ? nil : c.baseVersion, next: c.version)
    }
}
