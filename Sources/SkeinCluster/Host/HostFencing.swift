/// Storage faults. A partition whose share of a group commit failed is fenced: its group,
/// whose memory is now ahead of its disk, is set aside (it neither votes nor leads, and
/// messages for it are dropped), its writers are told, and after a backoff its group starts
/// again from what the storage holds, as after a restart of that partition alone (keeping the
/// vote promise a restart keeps). The other partitions go on. A permanent fault (the database
/// file removed under the node) fences every partition until the node restarts.
extension ReplicationHost {
    func fence(_ p: Int, _ fault: StorageFault, now: Duration) {
        counters.storageFaults += 1
        let attempts = faultAttempts[p]
        faultAttempts[p] = attempts + 1
        lastFaults[p] = fault
        var delay = config.fenceRetryFirst
        for _ in 0..<min(attempts, 20) where delay < config.fenceRetryLimit { delay = delay * 2 }
        fences[p] = Fence(fault: fault, retryAt: now + min(delay, config.fenceRetryLimit))
        onNote?(.fenced(partition: p, fault: fault, retryIn: fault.permanent ? nil : min(delay, config.fenceRetryLimit)))
        let error = Self.fenced(p, fault)
        for (key, w) in waiters where key.partition == p {
            waiters[key] = nil
            w.done(.failure(error))
        }
        answerAtCommit[p] = nil
        answeredAtCommit = answeredAtCommit.filter { $0.partition != p }
        answeredThrough[p] = nil
        for c in catchUps.removeValue(forKey: p) ?? [] { c.done(.failure(error)) }
        for s in settles.removeValue(forKey: p) ?? [] { s.done(false) }
        for key in outgoing.keys where key.partition == p { closeOutgoing(key) }
        abandonIncoming(p)
        pendingCompaction[p] = nil
        ledgers[p].reset()
    }

    /// The database is gone: every partition is fenced for good.
    public func storageGone(_ fault: StorageFault) {
        let now = clock()
        batch {
            var permanent = fault
            permanent.permanent = true
            for p in 0..<partitionCount where fences[p]?.fault.permanent != true { fence(p, permanent, now: now) }
            pump()
        }
    }

    func retryFences(now: Duration) {
        for (p, f) in fences where !f.reloading && !f.fault.permanent && now >= f.retryAt {
            fences[p]!.reloading = true
            storage.load(partition: p) { result in self.reloaded(p, result) }
        }
    }

    private func reloaded(_ p: Int, _ result: Result<RaftStoredState, StorageFault>) {
        guard let f = fences[p], f.reloading else { return }
        let now = clock()
        switch result {
        case .success(let stored):
            fences[p] = nil
            groups[p] = Raft(id: me, partition: p, stored: stored, config: config.raft, seed: random.next(), now: now)
            onNote?(.restarted(partition: p))
        case .failure(let fault):
            fences[p] = nil
            fence(p, fault.permanent ? fault : f.fault, now: now)
        }
        pump()
    }

    /// Why `partition` is fenced, if it is, or its last fault before a write succeeded again.
    public func fault(partition p: Int) -> (fault: StorageFault, fenced: Bool, attempts: Int)? {
        if let f = fences[p] { return (f.fault, true, faultAttempts[p]) }
        return lastFaults[p].map { ($0, false, faultAttempts[p]) }
    }
}

/// Compaction: a partition's log is forgotten up to a point the state machine stands in for,
/// once it holds more than ``HostConfig/compactAfterEntries`` entries or
/// ``HostConfig/compactAfterBytes`` bytes. It keeps a tail for followers a little behind, and
/// everything after a snapshot being streamed (a follower that installs it needs what follows).
/// The store forgets in the next group commit, in order with every other write.
extension ReplicationHost {
    func compactIfLong(_ p: Int) {
        let g = groups[p]
        let held = g.lastIndex - g.snapshotMeta.index
        guard held > UInt64(config.compactAfterEntries) || g.logBytes > config.compactAfterBytes else { return }
        var target = g.compactionPoint(keepEntries: config.keepEntries, keepBytes: config.compactAfterBytes / 8)
        for (key, s) in outgoing where key.partition == p { target = min(target, s.meta.index) }
        guard target > g.snapshotMeta.index, let meta = g.compact(to: target) else { return }
        pendingCompaction[p] = meta
    }
}
