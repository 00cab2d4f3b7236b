/// Per partition, what the leader knows of its versioned keys, so that it can decide a
/// ``VersionCheck`` when the entry is proposed instead of learning at apply that it conflicts.
///
/// `applied` is a key's version after the last applied entry that touched it (every apply
/// reports it, on every node, whoever proposed the entry); `pending` holds the versioned
/// entries this leader appended in its term and has not applied yet, in log order. An entry is
/// *certain* when everything before it for its key is known: its apply must then accept it, so
/// its writer may be answered at commit. Entries of the term apply in the order proposed, and
/// a leader decides only once every earlier term is applied (``Raft/hasAppliedTermStart``).
struct VersionLedger {
    enum Decision: Equatable { case certain, uncertain, refuse }

    private var term: UInt64 = 0
    private var applied: [String: UInt64] = [:]
    private var pending: [String: [(index: UInt64, next: UInt64, certain: Bool)]] = [:]

    /// What to do with a proposal checking `check`, by a leader of `term` that has (or has
    /// not yet) applied everything of earlier terms.
    mutating func decide(_ check: VersionCheck, term: UInt64, earlierTermsApplied: Bool) -> Decision {
        if term != self.term {
            // Whatever this node proposed in another term either applied or never will.
            pending = [:]
            self.term = term
        }
        guard earlierTermsApplied else { return .uncertain }
        guard let base = check.base else { return .certain }
        let chain = pending[check.key]?.last
        guard let expected = chain?.next ?? applied[check.key] else { return .uncertain }
        let known = chain?.certain ?? true
        if expected == base { return known ? .certain : .uncertain }
        return known ? .refuse : .uncertain
    }

    mutating func proposed(_ check: VersionCheck, index: UInt64, certain: Bool) {
        pending[check.key, default: []].append((index, check.next, certain))
    }

    /// An entry that touched `key` applied, leaving it at `version`.
    mutating func applied(key: String, index: UInt64, version: UInt64, capacity: Int) {
        if var chain = pending[key] {
            chain.removeAll { $0.index <= index }
            pending[key] = chain.isEmpty ? nil : chain
        }
        if applied.count >= capacity, applied[key] == nil {
            // Forgetting is always safe: the next proposal of a forgotten key waits for its apply.
            applied = [:]
        }
        applied[key] = version
    }

    /// The partition's state was replaced (a snapshot installed) or its group restarted.
    mutating func reset() {
        applied = [:]
        pending = [:]
    }
}
