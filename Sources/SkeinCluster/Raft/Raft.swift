/// One partition's Raft group on one node, as a pure state machine in the style of etcd's
/// raft: ticks, messages, proposals and hints go in; a ``RaftReady`` (state to persist,
/// messages to send, committed entries to apply) comes out. No I/O, no clock, no randomness
/// of its own: the shell supplies `now` (a monotonic clock) and the seed.
///
/// On top of plain Raft: PreVote (a node that cannot win does not disturb the term),
/// CheckQuorum (a leader that has not heard from a quorum for an election timeout steps
/// down), leadership transfer, and a leader **lease** (see ``RaftConfig/leaseDuration``): a
/// follower that hears from its leader refuses to vote for anyone else for one election
/// timeout on its own clock, and the leader counts its lease from the send time of the
/// newest message a quorum has acknowledged. A node that restarts keeps that promise too: it
/// does not vote until an election timeout after it started.
///
/// A class rather than a struct: the shell and the simulator hold one per partition and
/// mutate it in place; copying the whole state on every look would dominate a simulation.
/// It is not thread-safe: its owner (an actor, or the simulator's one thread) serializes use.
public final class Raft {
    public let id: RaftNodeID
    public let partition: Int
    public let config: RaftConfig

    public private(set) var role: RaftRole = .follower
    public private(set) var term: UInt64
    public private(set) var vote: RaftNodeID?
    public private(set) var leader: RaftNodeID? {
        didSet { if let leader { lastLeader = leader } }
    }
    /// The leader this node last knew (kept through its own campaigns).
    private var lastLeader: RaftNodeID?
    public private(set) var commit: UInt64
    /// The last index the shell has applied (reported through ``advance(_:)``).
    public private(set) var applied: UInt64
    /// The configuration in force: the last one in the log, committed or not.
    public private(set) var configuration: RaftConfiguration

    var log: RaftLog
    private var random: DeterministicRandom

    // What has been handed to the shell and what it has made durable.
    private var persistedHardState: RaftHardState
    private var unstableFrom: UInt64
    private var persistedIndex: UInt64
    private var handedOutCommitted: UInt64
    private var pendingSnapshot: RaftSnapshotMeta?
    private var messages: [RaftMessage] = []
    /// Set by a proposal: the appends it calls for are made when the shell next takes
    /// messages (``ready()``, ``takeMessagesThatCanLeave()``), so the proposals that arrive in
    /// between share one append per follower instead of one each. It holds the latest
    /// proposal's time, which is earlier than the send: a lease counted from it errs short.
    private var appendsDueAt: Duration?
    private var readyInFlight: (lastEntry: UInt64?, committedTo: UInt64, snapshot: UInt64?)?

    // Timers.
    private var electionDeadline: Duration = .zero
    private var heartbeatDue: Duration = .zero
    private var quorumCheckDue: Duration = .zero
    /// Until when this node has promised not to vote for anyone but its leader.
    private var promiseUntil: Duration
    /// Set by ``peerIsDown(_:now:)`` for the leader: campaign as soon as the promise ends,
    /// the followers one after another in an order they all compute alike (so they do not
    /// split the vote), plus a little jitter.
    private var leaderReportedDown = false
    private var fastElectionAt: Duration = .zero

    // Candidate state.
    private var votes: [RaftNodeID: Bool] = [:]

    // Leader state.
    private var progress: [RaftNodeID: Progress] = [:]
    private var recentlyActive: Set<RaftNodeID> = []
    /// Per voter, the leader's send time of the newest message it has acknowledged this term.
    private var acknowledgedSentAt: [RaftNodeID: Duration] = [:]
    /// The index of the noop this leader appended when elected.
    private var termStartIndex: UInt64 = 0
    public private(set) var transferee: RaftNodeID?
    private var transferDeadline: Duration = .zero
    /// Set once this leader has told a successor to campaign: its lease is over for the term.
    private var leaseRenounced = false
    /// The send time the lease counts from: nil without a quorum of acknowledgements,
    /// `.some(nil)` when this node alone is a quorum.
    private var leaseStart: Duration??
    /// The index of the newest configuration entry (changes go one at a time).
    private var configurationIndex: UInt64 = 0

    struct Progress: Sendable {
        enum State: Sendable { case probe, replicate, snapshot }
        var match: UInt64 = 0
        var next: UInt64
        var state: State = .probe
        var probeSent = false
        var inflight: [UInt64] = []
        var snapshotIndex: UInt64 = 0
        var snapshotSentAt: Duration = .zero
        var matchAtLastHeartbeat: UInt64 = 0
    }

    public init(id: RaftNodeID, partition: Int, stored: RaftStoredState, config: RaftConfig = RaftConfig(), seed: UInt64, now: Duration) {
        self.id = id
        self.partition = partition
        self.config = config
        self.random = DeterministicRandom(seed: seed)
        self.log = RaftLog(snapshot: stored.snapshot, entries: stored.entries)
        self.term = stored.hardState.term
        self.vote = stored.hardState.vote
        self.applied = max(stored.applied, stored.snapshot.index)
        self.commit = min(max(stored.hardState.commit, applied), log.lastIndex)
        self.persistedHardState = stored.hardState
        self.unstableFrom = log.lastIndex + 1
        self.persistedIndex = log.lastIndex
        self.handedOutCommitted = applied
        self.configuration = log.configuration(atOrBefore: log.lastIndex)
        self.configurationIndex = Self.lastConfigurationIndex(in: log)
        // A restarted node may have promised its vote away just before it died: keep the
        // promise for a full election timeout from now.
        self.promiseUntil = now + config.electionTimeout
        resetElectionTimer(now: now)
        if configuration.voters == [id] {
            // Alone: nobody else can hold a lease this node promised anything to.
            electionDeadline = now
        }
    }

    // MARK: - Queries

    public var lastIndex: UInt64 { log.lastIndex }
    public var lastTerm: UInt64 { log.lastTerm }
    public var firstIndex: UInt64 { log.firstIndex }
    public var snapshotMeta: RaftSnapshotMeta { log.snapshot }
    public var isVoter: Bool { configuration.isVoter(id) }
    public func entry(at index: UInt64) -> RaftEntry? { log.entry(at: index) }
    public func term(at index: UInt64) -> UInt64? { log.term(at: index) }
    public var hardState: RaftHardState { RaftHardState(term: term, vote: vote, commit: commit) }
    /// Whether a configuration entry is appended but not yet committed (no new change until it is).
    public var configurationChangePending: Bool { configurationIndex > commit }
    /// How much of the log `peer` is known to hold (leaders only; nil elsewhere or for strangers).
    public func match(of peer: RaftNodeID) -> UInt64? { role == .leader ? progress[peer]?.match : nil }

    /// Whether this leader is sending `peer` a snapshot (its entries are compacted away).
    public func isSendingSnapshot(to peer: RaftNodeID) -> Bool {
        role == .leader && progress[peer]?.state == .snapshot
    }

    /// The bytes of the entries the log holds in memory (after the snapshot point).
    public var logBytes: Int { log.bytes }

    /// Whether a snapshot received is waiting to be installed (handed out with the next ready).
    public var hasPendingSnapshot: Bool { pendingSnapshot != nil }

    /// The leader's view of each follower, for logs and failure reports.
    public var progressDescription: String {
        progress.keys.sorted().map { id in
            let p = progress[id]!
            return "\(id): \(p.state) match \(p.match) next \(p.next) inflight \(p.inflight.count) probeSent \(p.probeSent) snapshot \(p.snapshotIndex) at \(p.snapshotSentAt)"
        }.joined(separator: "; ")
    }

    /// When this leader's lease ends, or nil when it holds none. The lease rests on the send
    /// times a quorum of voters has acknowledged this term (this node counting as `now`,
    /// which is later than any send time, so the quorum-th newest is the (quorum−1)-th newest
    /// acknowledgement of the others).
    public func leaseExpiry(now: Duration) -> Duration? {
        guard role == .leader, !leaseRenounced, let start = leaseStart else { return nil }
        let expiry = (start ?? now) + config.leaseDuration
        return expiry > now ? expiry : nil
    }

    public func holdsLease(now: Duration) -> Bool { leaseExpiry(now: now) != nil }

    /// Whether this node may answer reads from its applied state right now: it leads, holds
    /// the lease, and has applied an entry of its own term (so everything committed before
    /// the term is applied too).
    public func canServeReads(now: Duration) -> Bool {
        holdsLease(now: now) && hasAppliedTermStart
    }

    /// Whether this node leads and has applied its own term's first entry, so every entry of
    /// an earlier term is applied here.
    public var hasAppliedTermStart: Bool {
        role == .leader && termStartIndex > 0 && applied >= termStartIndex
    }

    /// The furthest point the log may be compacted to while keeping at most `keepEntries`
    /// applied entries and about `keepBytes` of them for followers a little behind.
    public func compactionPoint(keepEntries: Int, keepBytes: Int) -> UInt64 {
        var point = applied
        var kept = 0, bytes = 0
        while point > log.snapshot.index, kept < keepEntries, let e = log.entry(at: point), bytes + e.size <= keepBytes {
            bytes += e.size
            kept += 1
            point -= 1
        }
        return point
    }

    // MARK: - Inputs

    /// Advances timers: elections, heartbeats, the quorum check, a stalled transfer.
    public func tick(now: Duration) {
        switch role {
        case .leader:
            // A leader keeps the same promise its followers keep.
            promiseUntil = max(promiseUntil, now + config.electionTimeout)
            if now >= quorumCheckDue {
                quorumCheckDue = now + config.electionTimeout
                var active = recentlyActive
                active.insert(id)
                let live = configuration.voters.filter { active.contains($0) }.count
                recentlyActive = []
                if live < configuration.quorum {
                    becomeFollower(term: term, leader: nil, now: now)
                    return
                }
            }
            if let _ = transferee, now >= transferDeadline {
                transferee = nil
                if leaseRenounced {
                    // The successor never took over; without a lease this leader serves no
                    // one, so let an ordinary election sort it out.
                    becomeFollower(term: term, leader: nil, now: now)
                    return
                }
            }
            if now >= heartbeatDue {
                heartbeatDue = nextHeartbeat(after: now)
                broadcastHeartbeat(now: now)
                // A lost TimeoutNow would leave the partition without a leader once the
                // transfer times out (this leader renounced its lease): say it again.
                if let target = transferee, leaseRenounced { send(to: target, term: term, .timeoutNow) }
            }
        case .follower, .preCandidate, .candidate:
            guard configuration.isVoter(id) else { return }
            // Once the leader is reported down this node waits for its turn, even past its
            // own election timeout: campaigning then would race the survivor whose turn it is.
            let due = leaderReportedDown ? now >= promiseUntil && now >= fastElectionAt : now >= electionDeadline
            if due {
                campaign(preVote: true, transferTerm: nil, now: now)
            }
        }
    }

    /// The earliest time at which ``tick(now:)`` has something to do (nil: nothing until an
    /// input arrives), so a shell may sleep until then instead of ticking on a fixed beat.
    public var nextTimer: Duration? {
        switch role {
        case .leader:
            var next = min(heartbeatDue, quorumCheckDue)
            if transferee != nil { next = min(next, transferDeadline) }
            return next
        case .follower, .preCandidate, .candidate:
            guard configuration.isVoter(id) else { return nil }
            if leaderReportedDown { return max(promiseUntil, fastElectionAt) }
            return electionDeadline
        }
    }

    /// Membership says `peer` is dead. If it is this follower's leader (or was, and the
    /// election since has found no winner), campaign as soon as the vote promise made to it
    /// runs out, in turn with the other survivors, instead of waiting for the election timeout.
    public func peerIsDown(_ peer: RaftNodeID, now: Duration) {
        // A follower of `peer`; or a campaign without a winner since `peer` led (two
        // survivors whose election timeouts fired together split the vote, and would each
        // wait out another timeout).
        let follows = role == .follower && leader == peer
        let leaderless = (role == .preCandidate || role == .candidate) && leader == nil && lastLeader == peer
        if follows || leaderless, configuration.isVoter(id), !leaderReportedDown {
            leaderReportedDown = true
            // Followers that all campaigned within one vote's round trip would each vote for
            // themselves and wait out a whole election timeout. Each takes its turn instead,
            // a fifth of the timeout apart: the first at once, the next only if the first has
            // not won by then (its log was behind, say).
            let step = config.electionTimeout / 5
            let turn = Self.successionTurn(of: id, among: configuration.voters.filter { $0 != peer }, term: term)
            let jitter = Duration.nanoseconds(Int64(random.below(Int((step / 5).nanosecondCount))))
            fastElectionAt = max(now, promiseUntil) + step * turn + jitter
            tick(now: now)
        }
    }

    /// This voter's place in the order in which the survivors of a dead leader campaign:
    /// the same on every node (a hash of the term and the voters' ids, no randomness), and
    /// different from one term to the next, so the dead leader's partitions go to different
    /// survivors.
    public static func successionTurn(of id: RaftNodeID, among voters: [RaftNodeID], term: UInt64) -> Int {
        func rank(_ voter: RaftNodeID) -> UInt64 {
            var hash: UInt64 = 0xcbf2_9ce4_8422_2325
            for byte in withUnsafeBytes(of: term.littleEndian, Array.init) + Array(voter.utf8) {
                hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3
            }
            return hash
        }
        let order = voters.sorted { (rank($0), $0) < (rank($1), $1) }
        return order.firstIndex(of: id) ?? order.count
    }

    /// Appends a command if this node leads (and is not handing leadership over). Returns
    /// its (index, term): the command is in the state machine once that entry is applied
    /// with that term; a different term there means it was lost and may be retried.
    public func propose(_ data: [UInt8], now: Duration) -> (index: UInt64, term: UInt64)? {
        guard role == .leader, transferee == nil else { return nil }
        let entry = RaftEntry(index: log.lastIndex + 1, term: term, kind: .command, data: data)
        appendLocal(entry)
        appendsDueAt = now
        return (entry.index, entry.term)
    }

    /// Proposes a single-server configuration change (add or remove one voter or learner).
    /// Refused while another change is uncommitted or when it changes more than one node.
    public func proposeConfiguration(_ new: RaftConfiguration, now: Duration) -> Result<UInt64, RaftChangeError> {
        guard role == .leader else { return .failure(.notLeader) }
        guard transferee == nil else { return .failure(.transferring) }
        // A new leader may hold an uncommitted change of an earlier term it does not know of
        // (it was appended on a minority only); a change of its own on top could then form a
        // majority disjoint from that one's. Committing its own no-op first settles every
        // earlier entry (the single-server change bug, Ongaro, raft-dev 2015).
        guard commit >= termStartIndex || breaks(.configurationBeforeNoop) else { return .failure(.termNotCommitted) }
        guard configurationIndex <= commit else { return .failure(.changeInProgress) }
        let oldVoters = Set(configuration.voters), newVoters = Set(new.voters)
        guard oldVoters.symmetricDifference(newVoters).count <= 1 else { return .failure(.moreThanOneVoter) }
        guard !newVoters.isEmpty else { return .failure(.noVoters) }
        guard new != configuration else { return .failure(.unchanged) }
        let entry = RaftEntry(index: log.lastIndex + 1, term: term, kind: .configuration, data: RaftConfigurationCodec.encode(new))
        appendLocal(entry)
        broadcastAppend(now: now)
        return .success(entry.index)
    }

    /// Hands leadership to `target` (a voter): once its log is current it is told to
    /// campaign at once. Proposals are refused until it takes over or the attempt times out.
    public func transferLeadership(to target: RaftNodeID, now: Duration) {
        guard role == .leader, target != id, configuration.isVoter(target), transferee == nil else { return }
        transferee = target
        transferDeadline = now + config.electionTimeout
        if progress[target]?.match == log.lastIndex {
            sendTimeoutNow(to: target)
        } else {
            sendAppend(to: target, now: now)
        }
    }

    /// The host is streaming `peer` the snapshot this leader offered: it is not lost, so the
    /// offer is not made again (it would be after a few heartbeats without an answer).
    public func snapshotStreaming(to peer: RaftNodeID, now: Duration) {
        guard role == .leader, var pr = progress[peer], pr.state == .snapshot else { return }
        pr.snapshotSentAt = now
        progress[peer] = pr
    }

    /// The host gave up sending `peer` its snapshot (the storage failed to read it): probe
    /// again, which offers a fresh one when the entries are still compacted away.
    public func snapshotFailed(to peer: RaftNodeID) {
        guard role == .leader, var pr = progress[peer], pr.state == .snapshot else { return }
        pr.state = .probe
        pr.probeSent = false
        progress[peer] = pr
    }

    /// Forgets log entries up to `index` (at most the applied index): the state machine at
    /// `applied` stands in for them from now on.
    public func compact(to index: UInt64) -> RaftSnapshotMeta? {
        let target = min(index, applied, persistedIndex)
        guard target > log.snapshot.index else { return nil }
        log.compact(to: target, configuration: log.configuration(atOrBefore: target))
        return log.snapshot
    }

    public func step(_ m: RaftMessage, now: Duration) {
        guard m.to == id, m.partition == partition, m.from != id, !m.isSnapshotTransfer else { return }
        if role == .leader { promiseUntil = max(promiseUntil, now + config.electionTimeout) }
        if m.term > term {
            if case .vote(_, _, _, let transferTerm) = m.body {
                let forced = transferTerm != nil && transferTerm == term
                if now < promiseUntil, !forced {
                    // Still bound by the promise to the current leader (or, after a restart,
                    // to whichever leader this node may have answered before it died).
                    return
                }
            }
            switch m.body {
            case .vote(preVote: true, _, _, _):
                break  // a pre-vote does not change the term
            case .voteResponse(preVote: true, granted: true):
                break  // granted pre-votes carry the term the candidate asked for
            case .append, .heartbeat, .snapshot:
                becomeFollower(term: m.term, leader: m.from, now: now)
            default:
                becomeFollower(term: m.term, leader: nil, now: now)
            }
        } else if m.term < term {
            switch m.body {
            case .append, .heartbeat, .snapshot:
                // A deposed leader: tell it the term so it steps down.
                send(to: m.from, term: term, .appendResponse(reject: true, index: 0, hint: log.lastIndex, sentAt: .zero))
            case .vote(preVote: true, _, _, _):
                send(to: m.from, term: term, .voteResponse(preVote: true, granted: false))
            default:
                break
            }
            return
        }

        switch m.body {
        case .vote(let pre, let lastIndex, let lastTerm, _):
            handleVote(m, preVote: pre, lastIndex: lastIndex, lastTerm: lastTerm, now: now)
        case .voteResponse(let pre, let granted):
            handleVoteResponse(from: m.from, preVote: pre, granted: granted, now: now)
        case .append(let prevIndex, let prevTerm, let entries, let leaderCommit, let sentAt):
            heardFromLeader(m.from, now: now)
            handleAppend(from: m.from, prevIndex: prevIndex, prevTerm: prevTerm, entries: entries, leaderCommit: leaderCommit, sentAt: sentAt)
        case .heartbeat(let leaderCommit, let sentAt):
            heardFromLeader(m.from, now: now)
            if leaderCommit > commit { commit = min(leaderCommit, log.lastIndex) }
            send(to: m.from, term: term, .heartbeatResponse(commit: commit, sentAt: sentAt))
        case .snapshot(let meta, let sentAt):
            heardFromLeader(m.from, now: now)
            handleSnapshot(from: m.from, meta: meta, sentAt: sentAt)
        case .snapshotRequest, .snapshotChunk, .snapshotGone:
            return  // the hosts' business (guarded above)
        case .appendResponse(let reject, let index, let hint, let sentAt):
            guard role == .leader else { return }
            handleAppendResponse(from: m.from, reject: reject, index: index, hint: hint, sentAt: sentAt, now: now)
        case .heartbeatResponse(let followerCommit, let sentAt):
            guard role == .leader else { return }
            acknowledged(by: m.from, sentAt: sentAt)
            if var pr = progress[m.from] {
                pr.probeSent = false
                if followerCommit > pr.match, followerCommit <= log.lastIndex {
                    // Committed entries are the same everywhere: the follower holds ours up to
                    // its commit index (this is how a lost snapshot answer is made up for).
                    pr.match = followerCommit
                    pr.next = max(pr.next, followerCommit + 1)
                    if pr.state == .snapshot, followerCommit >= pr.snapshotIndex { pr.state = .probe }
                }
                if pr.state == .snapshot, now - pr.snapshotSentAt >= config.snapshotStall {
                    pr.state = .probe  // the offer was lost, or the transfer stalled: try again
                }
                if pr.state == .replicate, pr.match < log.lastIndex, pr.match == pr.matchAtLastHeartbeat {
                    // No progress for a whole heartbeat interval: appends were lost. Probe
                    // again from what the follower is known to hold.
                    pr.state = .probe
                    pr.next = pr.match + 1
                    pr.inflight = []
                }
                pr.matchAtLastHeartbeat = pr.match
                progress[m.from] = pr
                if pr.match < log.lastIndex { sendAppend(to: m.from, now: now) }
            }
        case .timeoutNow:
            guard configuration.isVoter(id) else { return }
            campaign(preVote: false, transferTerm: term, now: now)
        }
    }

    // MARK: - Ready / advance

    /// Whether the next ready has anything to persist or apply, or offers a snapshot (whose
    /// state the storage must pin as it stands before the ready's entries apply); else it is
    /// only messages, which the shell may send at once without touching the disk.
    public var readyNeedsStorage: Bool {
        hardState != persistedHardState || pendingSnapshot != nil || unstableFrom <= log.lastIndex
            || min(commit, log.lastIndex) > handedOutCommitted
            || messages.contains { if case .snapshot = $0.body { true } else { false } }
    }

    public var hasReady: Bool {
        guard readyInFlight == nil else { return false }
        return hardState != persistedHardState || pendingSnapshot != nil || unstableFrom <= log.lastIndex
            || !messages.isEmpty || appendsDueAt != nil || min(commit, log.lastIndex) > handedOutCommitted
    }

    /// Whether appends or heartbeats wait to be sent (see ``takeMessagesThatCanLeave()``).
    public var hasMessagesThatCanLeave: Bool { appendsDueAt != nil || messages.contains(where: \.canLeaveBeforeFsync) }

    /// Makes the appends that proposals since the last take call for.
    private func makeDueAppends() {
        guard let at = appendsDueAt else { return }
        appendsDueAt = nil
        if role == .leader { broadcastAppend(now: at) }
    }

    /// Takes the appends and heartbeats waiting to be sent, leaving the rest for the next
    /// ready. A leader may send its entries before its own write of them is durable (Raft
    /// §10.2.1; its commit counts only what it has made durable), so the shell sends them at
    /// once, even while an earlier ready is being written: the followers' fsyncs then overlap
    /// the leader's write instead of queueing behind it.
    public func takeMessagesThatCanLeave() -> [RaftMessage] {
        makeDueAppends()
        guard hasMessagesThatCanLeave else { return [] }
        let leaving = messages.filter(\.canLeaveBeforeFsync)
        messages.removeAll(where: \.canLeaveBeforeFsync)
        return leaving
    }

    /// What to persist, send and apply. Call ``advance(_:)`` once it is durable and sent;
    /// no other ready is handed out in between.
    public func ready() -> RaftReady {
        precondition(readyInFlight == nil, "ready() before advance()")
        makeDueAppends()
        var r = RaftReady()
        if hardState != persistedHardState { r.hardState = hardState }
        r.mustSync = hardState.term != persistedHardState.term || hardState.vote != persistedHardState.vote
        var snapshotIndex: UInt64?
        if let s = pendingSnapshot {
            r.snapshot = s
            snapshotIndex = s.index
            pendingSnapshot = nil
        }
        var lastEntry: UInt64?
        if unstableFrom <= log.lastIndex {
            r.entries = log.slice(from: unstableFrom, to: log.lastIndex)
            lastEntry = log.lastIndex
            unstableFrom = log.lastIndex + 1
        }
        r.mustSync = r.mustSync || r.snapshot != nil || !r.entries.isEmpty
        r.messages = messages
        messages = []
        let applyTo = min(commit, log.lastIndex)
        if applyTo > handedOutCommitted {
            r.committed = log.slice(from: handedOutCommitted + 1, to: applyTo)
            handedOutCommitted = applyTo
        }
        readyInFlight = (lastEntry, handedOutCommitted, snapshotIndex)
        persistedHardState = r.hardState ?? persistedHardState
        return r
    }

    /// The last ready is on disk, its messages sent and its committed entries applied.
    public func advance(now: Duration) {
        guard let done = readyInFlight else { return }
        readyInFlight = nil
        if let s = done.snapshot {
            persistedIndex = max(persistedIndex, s)
        }
        if let last = done.lastEntry {
            // Entries truncated meanwhile are not durable in their new form yet.
            persistedIndex = max(persistedIndex, min(last, unstableFrom - 1))
        }
        persistedIndex = min(persistedIndex, unstableFrom - 1)
        applied = max(applied, done.committedTo)
        if role == .leader {
            progress[id]?.match = breaks(.countOwnEntriesBeforeFsync) ? log.lastIndex : persistedIndex
            progress[id]?.next = log.lastIndex + 1
            // Followers learn the new commit index from the next append or heartbeat: a
            // message of its own would cost each follower an apply of its own, which delays
            // its write of the entries that follow.
            _ = maybeCommit()
            stepDownIfRemoved(now: now)
        }
    }

    /// Heartbeats fall on multiples of the interval on this node's clock, so every partition
    /// this node leads beats on the same tick and their messages travel in one batch.
    private func nextHeartbeat(after now: Duration) -> Duration {
        let interval = config.heartbeatInterval.nanosecondCount
        return .nanoseconds((now.nanosecondCount / interval + 1) * interval)
    }

    // MARK: - Elections

    private func resetElectionTimer(now: Duration) {
        let e = config.electionTimeout
        let jitter = Duration.nanoseconds(Int64(random.below(Int(e.nanosecondCount))))
        electionDeadline = now + e + jitter
    }

    private func heardFromLeader(_ from: RaftNodeID, now: Duration) {
        if role != .follower { becomeFollower(term: term, leader: from, now: now) }
        leader = from
        leaderReportedDown = false
        promiseUntil = max(promiseUntil, now + config.electionTimeout)
        resetElectionTimer(now: now)
    }

    private func becomeFollower(term newTerm: UInt64, leader newLeader: RaftNodeID?, now: Duration) {
        if newTerm > term {
            term = newTerm
            vote = nil
        }
        if role == .leader {
            // A leader's acknowledgements were a promise to it: keep it after stepping down.
            promiseUntil = max(promiseUntil, now + config.electionTimeout)
        }
        role = .follower
        leader = newLeader
        leaderReportedDown = false
        votes = [:]
        progress = [:]
        acknowledgedSentAt = [:]
        leaseStart = nil
        transferee = nil
        leaseRenounced = false
        resetElectionTimer(now: now)
    }

    private func campaign(preVote: Bool, transferTerm: UInt64?, now: Duration) {
        resetElectionTimer(now: now)
        leader = nil
        leaderReportedDown = false
        votes = [id: true]
        let voteTerm: UInt64
        if preVote {
            role = .preCandidate
            voteTerm = term + 1
        } else {
            role = .candidate
            term += 1
            vote = id
            voteTerm = term
        }
        if votes.count >= configuration.quorum {
            if preVote { campaign(preVote: false, transferTerm: nil, now: now) } else { becomeLeader(now: now) }
            return
        }
        for v in configuration.voters where v != id {
            send(to: v, term: voteTerm, .vote(preVote: preVote, lastIndex: log.lastIndex, lastTerm: log.lastTerm, transferTerm: transferTerm))
        }
    }

    private func handleVote(_ m: RaftMessage, preVote: Bool, lastIndex: UInt64, lastTerm: UInt64, now: Duration) {
        let canVote = vote == m.from || (vote == nil && leader == nil) || (preVote && m.term > term)
        // Only a candidate whose log holds every committed entry may win (§5.4.1).
        let upToDate = log.isUpToDate(lastIndex: lastIndex, lastTerm: lastTerm) || breaks(.voteWithoutLogCheck)
        if canVote, configuration.isVoter(id), upToDate {
            send(to: m.from, term: m.term, .voteResponse(preVote: preVote, granted: true))
            if !preVote {
                vote = m.from
                resetElectionTimer(now: now)
            }
        } else {
            send(to: m.from, term: term, .voteResponse(preVote: preVote, granted: false))
        }
    }

    private func handleVoteResponse(from: RaftNodeID, preVote: Bool, granted: Bool, now: Duration) {
        guard (preVote && role == .preCandidate) || (!preVote && role == .candidate) else { return }
        guard configuration.isVoter(from) else { return }
        votes[from] = granted
        let yes = votes.values.filter { $0 }.count
        let no = votes.count - yes
        if yes >= configuration.quorum {
            if preVote { campaign(preVote: false, transferTerm: nil, now: now) } else { becomeLeader(now: now) }
        } else if no >= configuration.quorum {
            becomeFollower(term: term, leader: nil, now: now)
        }
    }

    private func becomeLeader(now: Duration) {
        role = .leader
        leader = id
        votes = [:]
        transferee = nil
        leaseRenounced = false
        acknowledgedSentAt = [:]
        recomputeLeaseStart()
        recentlyActive = []
        quorumCheckDue = now + config.electionTimeout
        heartbeatDue = nextHeartbeat(after: now)
        progress = [:]
        for member in configuration.members {
            progress[member] = Progress(next: log.lastIndex + 1)
        }
        progress[id]?.match = persistedIndex
        let noop = RaftEntry(index: log.lastIndex + 1, term: term, kind: .noop)
        termStartIndex = noop.index
        appendLocal(noop)
        broadcastAppend(now: now)
    }

    // MARK: - Replication (leader)

    private func appendLocal(_ entry: RaftEntry) {
        log.append(entry)
        if entry.kind == .configuration { applyConfigurationChange(at: entry.index) }
        // The leader counts itself only for what it has made durable (advance()).
        if breaks(.countOwnEntriesBeforeFsync) { progress[id]?.match = log.lastIndex }
    }

    /// Whether a test switched this rule off (debug builds only; always false in release).
    @inline(__always)
    private func breaks(_ rule: RaftRuleBreaks) -> Bool {
        #if DEBUG
        config.breaks.contains(rule)
        #else
        false
        #endif
    }

    private func applyConfigurationChange(at index: UInt64) {
        configurationIndex = index
        configuration = log.configuration(atOrBefore: log.lastIndex)
        guard role == .leader else { return }
        for member in configuration.members where progress[member] == nil {
            progress[member] = Progress(next: log.lastIndex + 1)
        }
        for member in progress.keys where !configuration.members.contains(member) {
            progress[member] = nil
            acknowledgedSentAt[member] = nil
        }
        recomputeLeaseStart()
    }

    private func stepDownIfRemoved(now: Duration) {
        if role == .leader, !configuration.isVoter(id), configurationIndex <= commit {
            becomeFollower(term: term, leader: nil, now: now)
        }
    }

    private func broadcastAppend(now: Duration) {
        for member in configuration.members where member != id {
            sendAppend(to: member, now: now)
        }
    }

    private func broadcastHeartbeat(now: Duration) {
        for member in configuration.members where member != id {
            let match = progress[member]?.match ?? 0
            send(to: member, term: term, .heartbeat(commit: min(match, commit), sentAt: now))
        }
    }

    private func sendAppend(to peer: RaftNodeID, now: Duration) {
        guard var pr = progress[peer] else { return }
        defer { progress[peer] = pr }
        while true {
            switch pr.state {
            case .snapshot: return
            case .probe: if pr.probeSent { return }
            case .replicate: if pr.inflight.count >= config.maxInflight { return }
            }
            let prevIndex = pr.next - 1
            guard let prevTerm = log.term(at: prevIndex) else {
                // The entries it needs are compacted away: send the state machine instead, as
                // the shell will have it when this message leaves — every committed entry
                // handed out in earlier readies applied, none of the next one's.
                let at = handedOutCommitted
                guard let t = log.term(at: at) else { return }
                let meta = RaftSnapshotMeta(index: at, term: t, configuration: log.configuration(atOrBefore: at))
                send(to: peer, term: term, .snapshot(meta: meta, sentAt: now))
                pr.state = .snapshot
                pr.snapshotIndex = at
                pr.snapshotSentAt = now
                pr.inflight = []
                return
            }
            let entries = log.slice(from: pr.next, to: log.lastIndex, maxCount: config.maxEntriesPerAppend, maxBytes: config.maxBytesPerAppend)
            if pr.state == .replicate, entries.isEmpty {
                return  // nothing new to send; a new commit index rides on what comes next
            }
            send(to: peer, term: term, .append(prevIndex: prevIndex, prevTerm: prevTerm, entries: entries, commit: commit, sentAt: now))
            switch pr.state {
            case .probe:
                pr.probeSent = true
                return
            case .replicate:
                guard let last = entries.last?.index else { return }
                pr.next = last + 1
                pr.inflight.append(last)
                if pr.next > log.lastIndex { return }
            case .snapshot:
                return
            }
        }
    }

    private func acknowledged(by peer: RaftNodeID, sentAt: Duration) {
        recentlyActive.insert(peer)
        if configuration.isVoter(peer), sentAt > (acknowledgedSentAt[peer] ?? .zero) {
            acknowledgedSentAt[peer] = sentAt
            recomputeLeaseStart()
        }
    }

    private func recomputeLeaseStart() {
        let needed = configuration.quorum - (configuration.isVoter(id) ? 1 : 0)
        if needed <= 0 {
            leaseStart = .some(nil)
            return
        }
        var times: [Duration] = []
        times.reserveCapacity(configuration.voters.count)
        for v in configuration.voters where v != id {
            if let t = acknowledgedSentAt[v] { times.append(t) }
        }
        guard times.count >= needed else {
            leaseStart = nil
            return
        }
        times.sort(by: >)
        leaseStart = .some(times[needed - 1])
    }

    private func handleAppendResponse(from peer: RaftNodeID, reject: Bool, index: UInt64, hint: UInt64, sentAt: Duration, now: Duration) {
        guard var pr = progress[peer] else { return }
        acknowledged(by: peer, sentAt: sentAt)
        if reject {
            // Stale rejections (of something already matched, or of an earlier probe)
            // change nothing.
            guard index > pr.match else { return }
            if pr.state == .probe, index != pr.next - 1 { return }
            pr.next = max(pr.match + 1, min(index, hint + 1))
            pr.state = .probe
            pr.probeSent = false
            pr.inflight = []
            progress[peer] = pr
            sendAppend(to: peer, now: now)
            return
        }
        // A probe answered at what is matched already (the match having moved meanwhile, from a
        // heartbeat's commit index) ends the probing too: else every such answer, and every
        // duplicate of one, would send another probe and get another answer, without end.
        if index > pr.match || (index == pr.match && pr.state == .probe) {
            pr.match = index
            pr.next = max(pr.next, index + 1)
            pr.inflight.removeAll { $0 <= index }
            switch pr.state {
            case .probe:
                pr.state = .replicate
                pr.probeSent = false
                pr.inflight = []
            case .snapshot where index >= pr.snapshotIndex:
                pr.state = .replicate
                pr.inflight = []
            default:
                break
            }
            progress[peer] = pr
            _ = maybeCommit()
            stepDownIfRemoved(now: now)
            guard role == .leader else { return }
        } else {
            if pr.state == .probe { pr.probeSent = false }
            progress[peer] = pr
        }
        if peer == transferee, progress[peer]?.match == log.lastIndex {
            sendTimeoutNow(to: peer)
        }
        sendAppend(to: peer, now: now)
    }

    /// Commits the highest index a quorum of voters has stored, if it is of this term.
    private func maybeCommit() -> Bool {
        var matches = configuration.voters.map { progress[$0]?.match ?? 0 }
        let quorum = breaks(.commitOnLeaderAlone) ? 1 : configuration.quorum
        guard matches.count >= quorum else { return false }
        matches.sort(by: >)
        let candidate = breaks(.commitOnLeaderAlone) ? (progress[id]?.match ?? 0) : matches[quorum - 1]
        // Only an entry of this term is committed by counting replicas (§5.4.2, Figure 8): an
        // earlier term's entry on a majority can still be overwritten by a leader that never
        // had it. Committing this term's entry commits the ones before it.
        guard candidate > commit, log.term(at: candidate) == term || breaks(.commitEarlierTermsByCount) else { return false }
        commit = candidate
        return true
    }

    private func sendTimeoutNow(to peer: RaftNodeID) {
        leaseRenounced = true
        send(to: peer, term: term, .timeoutNow)
    }

    // MARK: - Replication (follower)

    private func handleAppend(from leader: RaftNodeID, prevIndex: UInt64, prevTerm: UInt64, entries: [RaftEntry], leaderCommit: UInt64, sentAt: Duration) {
        if prevIndex < commit {
            // Everything up to commit is settled; say where we are.
            send(to: leader, term: term, .appendResponse(reject: false, index: commit, hint: log.lastIndex, sentAt: sentAt))
            return
        }
        guard log.matches(index: prevIndex, term: prevTerm) else {
            send(to: leader, term: term, .appendResponse(reject: true, index: prevIndex, hint: log.lastIndex, sentAt: sentAt))
            return
        }
        var configurationChanged = false
        for e in entries {
            if let existing = log.term(at: e.index) {
                if existing == e.term { continue }
                precondition(e.index > commit, "Raft safety: a committed entry conflicts at index \(e.index)")
                log.truncate(from: e.index)
                unstableFrom = min(unstableFrom, e.index)
                persistedIndex = min(persistedIndex, e.index - 1)
                if configurationIndex >= e.index { configurationChanged = true }
            }
            log.append(e)
            if e.kind == .configuration { configurationChanged = true }
        }
        if configurationChanged {
            configurationIndex = Self.lastConfigurationIndex(in: log)
            configuration = log.configuration(atOrBefore: log.lastIndex)
        }
        let lastNew = prevIndex + UInt64(entries.count)
        if leaderCommit > commit { commit = min(leaderCommit, lastNew) }
        send(to: leader, term: term, .appendResponse(reject: false, index: lastNew, hint: log.lastIndex, sentAt: sentAt))
    }

    private func handleSnapshot(from leader: RaftNodeID, meta: RaftSnapshotMeta, sentAt: Duration) {
        if meta.index <= commit {
            send(to: leader, term: term, .appendResponse(reject: false, index: commit, hint: log.lastIndex, sentAt: sentAt))
            return
        }
        if log.matches(index: meta.index, term: meta.term) {
            // We have the entries already; only the commit point moves.
            commit = meta.index
        } else {
            log.restore(meta)
            pendingSnapshot = meta
            commit = meta.index
            handedOutCommitted = meta.index
            unstableFrom = meta.index + 1
            persistedIndex = min(persistedIndex, meta.index)
            configuration = meta.configuration
            configurationIndex = 0
        }
        send(to: leader, term: term, .appendResponse(reject: false, index: meta.index, hint: log.lastIndex, sentAt: sentAt))
    }

    private func send(to peer: RaftNodeID, term t: UInt64, _ body: RaftMessage.Body) {
        messages.append(RaftMessage(partition: partition, from: id, to: peer, term: t, body: body))
    }

    private static func lastConfigurationIndex(in log: RaftLog) -> UInt64 {
        var i = log.lastIndex
        while i > log.snapshot.index {
            if log.entry(at: i)?.kind == .configuration { return i }
            i -= 1
        }
        return 0
    }
}

public enum RaftChangeError: Error, Sendable, Equatable, CustomStringConvertible {
    case notLeader, transferring, termNotCommitted, changeInProgress, moreThanOneVoter, noVoters, unchanged

    public var description: String {
        switch self {
        case .notLeader: "this node does not lead the partition"
        case .transferring: "leadership is being handed over"
        case .termNotCommitted: "the leader has not yet committed an entry of its own term"
        case .changeInProgress: "another configuration change is not committed yet"
        case .moreThanOneVoter: "a change may add or remove one voter at a time"
        case .noVoters: "a configuration needs at least one voter"
        case .unchanged: "the configuration is already that"
        }
    }
}

extension Duration {
    /// The duration in whole nanoseconds.
    var nanosecondCount: Int64 {
        let (s, a) = components
        return s * 1_000_000_000 + a / 1_000_000_000
    }
}
