/// Snapshots, streamed. A leader whose follower needs entries it compacted away offers its
/// state machine (a Raft `.snapshot` message); the group commit that carries the offer pins a
/// read view of the state as the offer describes it. The follower's host asks for the chunks
/// one after another (one in flight, one being staged: bounded memory on both sides), checks
/// each one's CRC-32C, stages it on its storage, and steps the offer into Raft only once the
/// last one is staged; the install is then part of a group commit, atomic, and in order with
/// every other write. A dropped connection costs a chunk: the follower asks for it again.

/// The leader's side of one transfer: the view it reads from and the next chunk's cursor.
struct OutgoingSnapshot {
    var meta: RaftSnapshotMeta
    /// The leader's term when it offered: a later term ends the transfer.
    var term: UInt64
    var view: SnapshotViewID
    /// Where chunk `n` starts, for the chunks that may still be asked for.
    var cursors: [Int: [UInt8]] = [0: []]
    /// The chunk being read, and one read ahead of the follower's request.
    var reading: Int?
    var readAhead: (sequence: Int, chunk: SnapshotChunkRead)?
    /// The chunk the follower asked for and has not been sent yet.
    var wanted: Int?
    var lastActivity: Duration
}

/// The follower's side: the offer to step into Raft once every chunk is staged.
struct IncomingSnapshot {
    var offer: RaftMessage
    var meta: RaftSnapshotMeta
    var leader: RaftNodeID
    var leaderTerm: UInt64
    var serial: UInt64
    /// The chunk asked for and not received (nil: none in flight).
    var requested: Int?
    var requestedAt: Duration
    var retries = 0
    /// The next chunk to ask for once there is room.
    var next = 0
    var done = false
    /// Chunks received and not yet staged, in order; and whether one is being staged.
    var received: [(sequence: Int, data: [UInt8], last: Bool)] = []
    var staging = false
    /// Every chunk is staged; the offer was stepped and the install is due.
    var complete = false
}

extension ReplicationHost {
    // MARK: - Leader

    /// The group commit that carried the offer pinned `view`: open the transfer. False when
    /// the offer is moot (the leader moved on meanwhile).
    func offer(_ m: RaftMessage, meta: RaftSnapshotMeta, view: SnapshotViewID, now: Duration) -> Bool {
        let g = groups[m.partition]
        guard g.role == .leader, g.term == m.term else { return false }
        let key = OutgoingKey(partition: m.partition, peer: m.to)
        closeOutgoing(key)
        outgoing[key] = OutgoingSnapshot(meta: meta, term: m.term, view: view, lastActivity: now)
        viewUsers[view, default: 0] += 1
        counters.snapshotsOffered += 1
        return true
    }

    func closeOutgoing(_ key: OutgoingKey) {
        guard let s = outgoing.removeValue(forKey: key) else { return }
        let users = (viewUsers[s.view] ?? 1) - 1
        if users <= 0 {
            viewUsers[s.view] = nil
            storage.closeView(s.view)
        } else {
            viewUsers[s.view] = users
        }
    }

    private func serve(_ key: OutgoingKey) {
        guard var s = outgoing[key], let wanted = s.wanted else { return }
        if let ahead = s.readAhead, ahead.sequence == wanted {
            s.readAhead = nil
            s.wanted = nil
            let m = RaftMessage(partition: key.partition, from: me, to: key.peer, term: s.term,
                                body: .snapshotChunk(index: s.meta.index, snapshotTerm: s.meta.term, sequence: wanted, data: ahead.chunk.data,
                                                     checksum: CRC32C.checksum(ahead.chunk.data), last: ahead.chunk.next == nil))
            counters.snapshotBytesSent += ahead.chunk.data.count
            // Read the next one while this one travels and is staged.
            if ahead.chunk.next != nil { startRead(key, wanted + 1, &s) }
            outgoing[key] = s
            send([m])
            return
        }
        if s.reading == nil {
            s.readAhead = nil
            startRead(key, wanted, &s)
        }
        outgoing[key] = s
    }

    private func startRead(_ key: OutgoingKey, _ sequence: Int, _ s: inout OutgoingSnapshot) {
        guard s.reading == nil, let cursor = s.cursors[sequence] else { return }
        s.reading = sequence
        let view = s.view
        storage.readChunk(view: view, cursor: cursor, maxBytes: config.chunkBytes) { result in
            self.chunkRead(key, sequence, view: view, result)
        }
    }

    private func chunkRead(_ key: OutgoingKey, _ sequence: Int, view: SnapshotViewID, _ result: Result<SnapshotChunkRead, StorageFault>) {
        guard var s = outgoing[key], s.view == view, s.reading == sequence else { return }
        s.reading = nil
        switch result {
        case .failure:
            // The view cannot be read: give this transfer up; Raft offers a fresh one.
            outgoing[key] = s
            closeOutgoing(key)
            if !isFenced(key.partition) { groups[key.partition].snapshotFailed(to: key.peer) }
            send([RaftMessage(partition: key.partition, from: me, to: key.peer, term: s.term,
                              body: .snapshotGone(index: s.meta.index, snapshotTerm: s.meta.term))])
        case .success(let chunk):
            if let next = chunk.next { s.cursors[sequence + 1] = next }
            // A follower asks again only for the chunk it is missing: the one sent last, or
            // the one read ahead.
            s.cursors = s.cursors.filter { $0.key >= sequence - 1 }
            s.readAhead = (sequence, chunk)
            outgoing[key] = s
            serve(key)
        }
        pump()
    }

    // MARK: - Follower

    /// A snapshot offer: stepped into Raft at once when Raft needs no state for it (it is
    /// stale, or the log already holds its point); else the transfer starts, or goes on.
    func handleOffer(_ m: RaftMessage, now: Duration) {
        guard case .snapshot(let meta, _) = m.body else { return }
        let p = m.partition
        let g = groups[p]
        if m.term < g.term || meta.index <= g.commit || g.term(at: meta.index) == meta.term {
            g.step(m, now: now)
            return
        }
        if var s = incoming[p], s.meta == meta, s.leader == m.from, s.leaderTerm == m.term {
            // The leader offered again (its answer was lost, say): go on where it stopped.
            s.offer = m
            incoming[p] = s
            if s.requested == nil, !s.complete, !s.staging, s.received.isEmpty, !s.done { requestNext(p) }
            return
        }
        abandonIncoming(p)
        transferSerial += 1
        incoming[p] = IncomingSnapshot(offer: m, meta: meta, leader: m.from, leaderTerm: m.term, serial: transferSerial, requestedAt: now)
        requestNext(p)
        // Raft hears from its leader meanwhile through heartbeats; the offer itself waits.
    }

    /// Asks for the next chunk when there is room: one in flight and one waiting to be staged.
    private func requestNext(_ p: Int) {
        guard var s = incoming[p], s.requested == nil, !s.done, s.received.count + (s.staging ? 1 : 0) < 2 else { return }
        s.requested = s.next
        s.requestedAt = clock()
        incoming[p] = s
        request(p, s)
    }

    private func request(_ p: Int, _ s: IncomingSnapshot) {
        guard let sequence = s.requested else { return }
        send([RaftMessage(partition: p, from: me, to: s.leader, term: s.leaderTerm,
                          body: .snapshotRequest(index: s.meta.index, snapshotTerm: s.meta.term, sequence: sequence))])
    }

    func handleTransfer(_ m: RaftMessage, now: Duration) {
        let p = m.partition
        switch m.body {
        case .snapshotRequest(let index, let snapshotTerm, let sequence):
            let key = OutgoingKey(partition: p, peer: m.from)
            let g = groups[p]
            guard var s = outgoing[key], s.meta.index == index, s.meta.term == snapshotTerm, g.role == .leader, g.term == s.term else {
                send([RaftMessage(partition: p, from: me, to: m.from, term: groups[p].term, body: .snapshotGone(index: index, snapshotTerm: snapshotTerm))])
                return
            }
            s.lastActivity = now
            s.wanted = sequence
            outgoing[key] = s
            g.snapshotStreaming(to: m.from, now: now)
            serve(key)
        case .snapshotChunk(let index, let snapshotTerm, let sequence, let data, let checksum, let last):
            guard var s = incoming[p], s.meta.index == index, s.meta.term == snapshotTerm, s.leader == m.from, s.requested == sequence else { return }
            guard CRC32C.checksum(data) == checksum else {
                // Garbled on the way: ask again (it counts as a retry).
                s.retries += 1
                s.requestedAt = now
                incoming[p] = s
                if s.retries > config.chunkRetries { abandonIncoming(p) } else { request(p, s) }
                return
            }
            s.requested = nil
            s.retries = 0
            s.next = sequence + 1
            s.done = last
            s.received.append((sequence, data, last))
            counters.snapshotBytesReceived += data.count
            incoming[p] = s
            stageNext(p)
            requestNext(p)
        case .snapshotGone(let index, let snapshotTerm):
            guard let s = incoming[p], s.meta.index == index, s.meta.term == snapshotTerm, s.leader == m.from, !s.complete else { return }
            abandonIncoming(p)
        default:
            break
        }
    }

    private func stageNext(_ p: Int) {
        guard var s = incoming[p], !s.staging, let chunk = s.received.first else { return }
        s.staging = true
        incoming[p] = s
        let serial = s.serial
        storage.stageChunk(partition: p, sequence: chunk.sequence, data: chunk.data) { result in
            self.staged(p, serial: serial, result)
        }
    }

    private func staged(_ p: Int, serial: UInt64, _ result: Result<Void, StorageFault>) {
        guard var s = incoming[p], s.serial == serial, s.staging else { return }
        s.staging = false
        guard case .success = result else {
            abandonIncoming(p)
            pump()
            return
        }
        let chunk = s.received.removeFirst()
        incoming[p] = s
        if chunk.last {
            completeIncoming(p)
        } else {
            stageNext(p)
            requestNext(p)
        }
        pump()
    }

    /// Every chunk is staged: the offer goes to Raft, whose next ready installs it.
    private func completeIncoming(_ p: Int) {
        guard var s = incoming[p], !isFenced(p) else { return }
        s.complete = true
        incoming[p] = s
        let g = groups[p]
        g.step(s.offer, now: clock())
        if !g.hasPendingSnapshot {
            // Raft moved past the offer meanwhile (a newer term, or the entries arrived).
            abandonIncoming(p)
        }
    }

    /// A group commit installed the staged snapshot.
    func installed(_ p: Int, _ meta: RaftSnapshotMeta) {
        incoming[p] = nil
        ledgers[p].reset()
        counters.snapshotsInstalled += 1
    }

    func abandonIncoming(_ p: Int) {
        guard incoming.removeValue(forKey: p) != nil else { return }
        storage.discardStaged(partition: p)
    }

    /// A follower's chunk that does not come is asked for again, and a transfer that keeps not
    /// coming is given up; a leader's transfer ends when its follower no longer needs it.
    func tickSnapshots(now: Duration) {
        for (p, s) in incoming where !s.complete {
            guard s.requested != nil, now - s.requestedAt >= config.chunkTimeout else { continue }
            var t = s
            t.retries += 1
            t.requestedAt = now
            incoming[p] = t
            if t.retries > config.chunkRetries { abandonIncoming(p) } else { request(p, t) }
        }
        for (key, s) in outgoing {
            let g = groups[key.partition]
            let moot = isFenced(key.partition) || g.role != .leader || g.term != s.term || !g.isSendingSnapshot(to: key.peer)
            if moot || now - s.lastActivity >= config.viewIdleLimit { closeOutgoing(key) }
        }
    }
}
