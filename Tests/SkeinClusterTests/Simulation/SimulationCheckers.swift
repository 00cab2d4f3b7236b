import SkeinCluster

/// The simulation's invariants (see ``RaftSimulator``).
extension RaftSimulator {
    /// One entry per (index, term): called for every entry a store persists.
    func recordEntry(_ p: Int, _ e: RaftEntry) {
        let key = PartitionTerm(partition: p, term: e.term)
        if let seen = entryData[key]?[e.index] {
            if seen != e.data, failure == nil { failure = "two entries at p\(p) index \(e.index) term \(e.term)" }
        } else {
            entryData[key, default: [:]][e.index] = e.data
        }
    }

    /// State machine safety: called for every entry a store applies.
    func checkApply(node i: Int, partition p: Int, entry e: RaftEntry) {
        let key = PartitionIndex(partition: p, index: e.index)
        if let seen = appliedEntries[key] {
            if seen != e, failure == nil {
                failure = "state machine safety: \(nodes[i].id) p\(p) applies \(e.term)/\(e.data) at \(e.index), another node applied \(seen.term)/\(seen.data)"
            }
        } else {
            appliedEntries[key] = e
        }
    }

    /// Checks after `event`. Only the node an event reached can have changed role, term or
    /// lease (time passing only shortens leases), so for node events that node is checked
    /// against all others; for cluster-wide events, everyone. Either way it is the full check.
    func checkInvariants(after event: Event) {
        switch event {
        case .tick(let i), .deliver(_, let i), .storageDone(let i, _, _), .reportDown(_, let i), .restart(let i):
            checkInvariants(nodes: i...i)
        case .write, .read, .startInstance, .taskDone:
            break  // proposals and reads change no role, term or lease
        default:
            checkInvariants(nodes: nodes.indices)
        }
    }

    func checkInvariants<R: Sequence<Int>>(nodes changed: R) {
        for p in 0..<scenario.partitions {
            var holders: [RaftNodeID] = []
            for i in changed {
                guard nodes[i].up, let host = nodes[i].host, !host.isFenced(p) else { continue }
                let g = host.groups[p]
                let role = g.role, term = g.term, lease = g.holdsLease(now: local(i))
                if role == .leader {
                    let key = PartitionTerm(partition: p, term: term)
                    if let other = leaders[key], other != nodes[i].id {
                        failure = "two leaders in p\(p) term \(term): \(other) and \(nodes[i].id)"
                        return
                    }
                    if leaders[key] == nil {
                        leaders[key] = nodes[i].id
                        stats.elections += 1
                        note("\(nodes[i].id) leads p\(p) term \(term)")
                    }
                    if wasLeader[i][p] != term {
                        wasLeader[i][p] = term
                        // Leader completeness binds leaders of later terms: a candidate of an
                        // older term may still win it (paused mid-election, it counts the votes
                        // of that term on waking) and lack what a newer term committed; it
                        // cannot commit, nor hold a lease, since the voters have moved on.
                        for a in acks[p] where a.index > g.snapshotMeta.index && a.term <= g.term {
                            if g.term(at: a.index) != a.term {
                                failure = "acknowledged write p\(p) \(a.index)/\(a.term) missing from new leader \(g.id) term \(g.term)"
                                return
                            }
                        }
                    }
                }
                if lease {
                    holders.append(nodes[i].id)
                    for other in nodes.indices where other != i && nodes[other].up && !changed.contains(other) {
                        if let h = nodes[other].host, !h.isFenced(p), h.groups[p].holdsLease(now: local(other)) { holders.append(nodes[other].id) }
                    }
                }
            }
            if holders.count > 1 {
                failure = "p\(p): \(holders) hold leases at the same time"
                return
            }
        }
    }

    /// Log matching: where two logs hold an entry of the same index and term, they hold the
    /// same entries up to it.
    func checkLogsMatch() {
        for p in 0..<scenario.partitions {
            let live = nodes.indices.filter { nodes[$0].up && nodes[$0].host.map { !$0.isFenced(p) } == true }
            for a in live {
                for b in live where b > a {
                    let x = nodes[a].host!.groups[p], y = nodes[b].host!.groups[p]
                    let low = max(x.firstIndex, y.firstIndex)
                    var i = min(x.lastIndex, y.lastIndex)
                    while i >= low, x.term(at: i) != y.term(at: i) { i -= 1 }
                    while i >= low {
                        if x.entry(at: i) != y.entry(at: i) {
                            failure = "logs of \(x.id) and \(y.id) differ at p\(p) index \(i) below a matching entry"
                            return
                        }
                        i -= 1
                    }
                }
            }
        }
    }

    func finalCheck() {
        for p in 0..<scenario.partitions {
            let leadersNow = nodes.indices.filter { nodes[$0].up && nodes[$0].host.map { !$0.isFenced(p) && $0.groups[p].role == .leader } == true }
            guard leadersNow.count == 1, let l = leadersNow.first else {
                let fenced = nodes.indices.filter { nodes[$0].host?.isFenced(p) == true }.map { nodes[$0].id }
                let views = nodes.indices.map { i -> String in
                    guard let h = nodes[i].host else { return "\(nodes[i].id) down" }
                    let g = h.groups[p]
                    return "\(nodes[i].id) \(g.role) term \(g.term) leader \(g.leader ?? "-") last \(g.lastIndex)/\(g.lastTerm) commit \(g.commit) applied \(g.applied) first \(g.firstIndex) voter \(g.isVoter) next timer \(g.nextTimer.map { "\($0 - local(i))" } ?? "none")"
                }
                failure = "p\(p) has \(leadersNow.count) leaders after \(scenario.quietPhaseMs) ms of quiet (fenced on \(fenced)): \(views.joined(separator: "; "))"
                return
            }
            let lg = nodes[l].host!.groups[p]
            for i in nodes.indices {
                let d = nodes[i].store.current[p]
                guard d.applied >= maxAckedIndex[p] else {
                    let g = nodes[i].host?.groups[p]
                    failure = "\(nodes[i].id) p\(p) applied only \(d.applied) after quiet; \(maxAckedIndex[p]) was acknowledged (leader commit \(lg.commit), follower commit \(g?.commit ?? 0) last \(g?.lastIndex ?? 0) first \(g?.firstIndex ?? 0) term \(g?.term ?? 0) fenced \(nodes[i].host?.isFenced(p) == true), leader term \(lg.term) first \(lg.firstIndex) progress \(lg.progressDescription))"
                    return
                }
            }
            // Every node's state machine agrees with the latest acknowledged value of each key
            // unless a later write (acknowledged or not) replaced it.
            var latest: [UInt8: UInt64] = [:]
            for a in acks[p] { latest[a.key] = max(latest[a.key] ?? 0, a.version) }
            for i in nodes.indices {
                for (key, version) in latest where (nodes[i].store.current[p].state[key] ?? 0) < version {
                    failure = "\(nodes[i].id) p\(p) lost acknowledged write of key \(key) version \(version)"
                    return
                }
            }
        }
    }
}
