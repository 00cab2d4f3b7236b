/// A partition's log in memory: everything after the last snapshot. The durable copy is the
/// shell's; this one is what Raft reasons about.
struct RaftLog: Sendable {
    private(set) var snapshot: RaftSnapshotMeta
    private(set) var entries: [RaftEntry]
    /// The sum of the entries' ``RaftEntry/size``: what compaction by size looks at.
    private(set) var bytes: Int

    init(snapshot: RaftSnapshotMeta, entries: [RaftEntry]) {
        self.snapshot = snapshot
        self.entries = entries
        bytes = entries.reduce(0) { $0 + $1.size }
        precondition(entries.isEmpty || entries[0].index == snapshot.index + 1, "stored log does not follow its snapshot")
    }

    var firstIndex: UInt64 { snapshot.index + 1 }
    var lastIndex: UInt64 { snapshot.index + UInt64(entries.count) }
    var lastTerm: UInt64 { entries.last?.term ?? snapshot.term }

    /// The term of the entry at `index`, or nil when it was compacted away or does not exist.
    func term(at index: UInt64) -> UInt64? {
        if index == snapshot.index { return snapshot.term }
        guard index > snapshot.index, index <= lastIndex else { return nil }
        return entries[Int(index - snapshot.index - 1)].term
    }

    func entry(at index: UInt64) -> RaftEntry? {
        guard index > snapshot.index, index <= lastIndex else { return nil }
        return entries[Int(index - snapshot.index - 1)]
    }

    func matches(index: UInt64, term: UInt64) -> Bool {
        self.term(at: index) == term
    }

    /// Whether a log ending at (lastIndex, lastTerm) is at least as up to date as this one.
    func isUpToDate(lastIndex: UInt64, lastTerm: UInt64) -> Bool {
        lastTerm > self.lastTerm || (lastTerm == self.lastTerm && lastIndex >= self.lastIndex)
    }

    /// Entries in `from...to`, at most `maxCount` and about `maxBytes` (always at least one).
    func slice(from: UInt64, to: UInt64, maxCount: Int = .max, maxBytes: Int = .max) -> [RaftEntry] {
        guard from <= to, from > snapshot.index, to <= lastIndex else { return [] }
        var result: [RaftEntry] = []
        var bytes = 0
        var i = from
        while i <= to, result.count < maxCount {
            let e = entries[Int(i - snapshot.index - 1)]
            if !result.isEmpty, bytes + e.size > maxBytes { break }
            bytes += e.size
            result.append(e)
            i += 1
        }
        return result
    }

    mutating func append(_ entry: RaftEntry) {
        precondition(entry.index == lastIndex + 1, "log append out of order")
        entries.append(entry)
        bytes += entry.size
    }

    /// Drops every entry from `index` on.
    mutating func truncate(from index: UInt64) {
        guard index <= lastIndex else { return }
        precondition(index > snapshot.index, "truncating into the snapshot")
        let count = Int(lastIndex - index + 1)
        bytes -= entries.suffix(count).reduce(0) { $0 + $1.size }
        entries.removeLast(count)
    }

    /// Forgets entries up to `index`, which becomes the snapshot point.
    mutating func compact(to index: UInt64, configuration: RaftConfiguration) {
        guard index > snapshot.index, let t = term(at: index) else { return }
        let count = Int(index - snapshot.index)
        bytes -= entries.prefix(count).reduce(0) { $0 + $1.size }
        entries.removeFirst(count)
        snapshot = RaftSnapshotMeta(index: index, term: t, configuration: configuration)
    }

    /// Replaces the whole log with a snapshot received from the leader.
    mutating func restore(_ meta: RaftSnapshotMeta) {
        snapshot = meta
        entries = []
        bytes = 0
    }

    /// The configuration in force at `index`: the last configuration entry at or before it.
    func configuration(atOrBefore index: UInt64) -> RaftConfiguration {
        var i = min(index, lastIndex)
        while i > snapshot.index {
            let e = entries[Int(i - snapshot.index - 1)]
            if e.kind == .configuration, let c = RaftConfigurationCodec.decode(e.data) { return c }
            i -= 1
        }
        return snapshot.configuration
    }
}

/// Configuration entries' payload: voters and learners as length-prefixed strings.
public enum RaftConfigurationCodec {
    public static func encode(_ c: RaftConfiguration) -> [UInt8] {
        var w = WireWriter()
        w.varint(UInt64(c.voters.count)); for v in c.voters { w.string(v) }
        w.varint(UInt64(c.learners.count)); for l in c.learners { w.string(l) }
        return w.bytes
    }

    public static func decode(_ bytes: [UInt8]) -> RaftConfiguration? {
        var r = WireReader(bytes: bytes)
        do {
            let nv = try r.count("voter count", max: 64)
            var voters: [String] = []
            for _ in 0..<nv { voters.append(try r.string("voter")) }
            let nl = try r.count("learner count", max: 64)
            var learners: [String] = []
            for _ in 0..<nl { learners.append(try r.string("learner")) }
            guard r.atEnd else { return nil }
            let c = RaftConfiguration(voters: voters, learners: learners)
            // One encoding per configuration: sorted, no duplicates, no node in both lists.
            guard c.voters == voters, c.learners == learners else { return nil }
            return c
        } catch {
            return nil
        }
    }
}
