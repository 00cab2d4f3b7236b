import SkeinCluster
import Testing

/// A few Raft nodes of one partition wired directly together: messages go where they are
/// addressed unless the link is cut, readies are "persisted" at once, and time moves only
/// when a test says so.
struct RaftHarness {
    var nodes: [RaftNodeID: Raft] = [:]
    var now: Duration = .seconds(1)
    var cut: Set<[RaftNodeID]> = []
    var applied: [RaftNodeID: [RaftEntry]] = [:]
    var stored: [RaftNodeID: RaftStoredState] = [:]
    let config: RaftConfig

    init(_ ids: [RaftNodeID], learners: [RaftNodeID] = [], config: RaftConfig = RaftConfig(), seed: UInt64 = 0) {
        self.config = config
        let configuration = RaftConfiguration(voters: ids, learners: learners)
        for (i, id) in (ids + learners).enumerated() {
            nodes[id] = Raft(id: id, partition: 0, stored: .fresh(configuration), config: config, seed: seed &* 1_000 &+ UInt64(i + 1), now: now)
            stored[id] = .fresh(configuration)
        }
    }

    func raft(_ id: RaftNodeID) -> Raft { nodes[id]! }

    mutating func isolate(_ id: RaftNodeID) {
        for other in nodes.keys where other != id {
            cut.insert([id, other])
            cut.insert([other, id])
        }
    }

    /// Delivers everything until the cluster is quiet.
    mutating func settle() {
        var rounds = 0
        while rounds < 1_000 {
            rounds += 1
            var outgoing: [RaftMessage] = []
            for id in nodes.keys.sorted() {
                let r = nodes[id]!
                guard r.hasReady else { continue }
                let ready = r.ready()
                var s = stored[id]!
                if let h = ready.hardState { s.hardState = h }
                if let snap = ready.snapshot {
                    s.snapshot = snap
                    s.entries = []
                    s.applied = snap.index
                }
                if let first = ready.entries.first?.index {
                    s.entries.removeAll { $0.index >= first }
                    s.entries += ready.entries
                }
                for e in ready.committed {
                    applied[id, default: []].append(e)
                    s.applied = e.index
                }
                stored[id] = s
                outgoing += ready.messages
                r.advance(now: now)
            }
            if outgoing.isEmpty, !nodes.values.contains(where: { $0.hasReady }) { return }
            for m in outgoing where !cut.contains([m.from, m.to]) {
                nodes[m.to]?.step(m, now: now)
            }
        }
        Issue.record("the cluster never went quiet")
    }

    /// Advances time in ticks of 10 ms, settling after each.
    mutating func run(for d: Duration) {
        let end = now + d
        while now < end {
            now += .milliseconds(10)
            for id in nodes.keys.sorted() { nodes[id]!.tick(now: now) }
            settle()
        }
    }

    /// Advances time in steps of 1 ms, ticking a node only when its ``Raft/nextTimer`` is due
    /// (as the node's shell does), settling after each tick.
    mutating func runOnTimers(for d: Duration) {
        let end = now + d
        while now < end {
            now += .milliseconds(1)
            var ticked = false
            for id in nodes.keys.sorted() {
                guard let due = nodes[id]!.nextTimer, due <= now else { continue }
                nodes[id]!.tick(now: now)
                ticked = true
            }
            if ticked { settle() }
        }
    }

    var leaders: [RaftNodeID] { nodes.values.filter { $0.role == .leader }.map(\.id).sorted() }

    /// Restarts `id` from what it persisted.
    mutating func restart(_ id: RaftNodeID, seed: UInt64 = 99) {
        nodes[id] = Raft(id: id, partition: 0, stored: stored[id]!, config: config, seed: seed, now: now)
    }
}

@Suite("Raft")
struct RaftTests {
    let three = ["a", "b", "c"]

    @Test("a single voter elects itself and commits at once")
    func singleVoter() {
        var h = RaftHarness(["a"])
        h.run(for: .seconds(2))
        #expect(h.leaders == ["a"])
        let a = h.raft("a")
        let (index, term) = a.propose([1, 2, 3], now: h.now)!
        h.settle()
        #expect(a.commit == index)
        #expect(h.applied["a"]?.last == RaftEntry(index: index, term: term, kind: .command, data: [1, 2, 3]))
        #expect(a.canServeReads(now: h.now))
    }

    @Test("three voters elect one leader, replicate and commit on a majority")
    func replicate() throws {
        var h = RaftHarness(three)
        h.run(for: .seconds(2))
        #expect(h.leaders.count == 1)
        let leader = h.raft(h.leaders[0])
        let followers = three.filter { $0 != leader.id }
        h.isolate(followers[0])
        let (index, _) = try #require(leader.propose([7], now: h.now))
        h.settle()
        #expect(leader.commit >= index)  // leader + one follower is a majority
        #expect(h.applied[followers[1]]?.last?.data == [7] || h.raft(followers[1]).commit < index)
        h.cut = []
        h.run(for: .milliseconds(200))
        for id in three { #expect(h.applied[id]?.contains { $0.data == [7] } == true) }
    }

    @Test("ticked only when nextTimer says, a group elects, keeps its leader and lease, and elects again when it dies")
    func ticksOnlyWhenATimerIsDue() throws {
        var h = RaftHarness(three)
        h.runOnTimers(for: .seconds(3))
        #expect(h.leaders.count == 1)
        let leader = try #require(h.leaders.first)
        let term = h.raft(leader).term
        // Heartbeats (due on the leader's timer) keep the followers from campaigning, and the
        // quorum check (also a timer) keeps the leader; the lease holds throughout.
        var lapses = 0
        for _ in 0..<500 {
            h.runOnTimers(for: .milliseconds(10))
            if !h.raft(leader).canServeReads(now: h.now) { lapses += 1 }
        }
        #expect(h.leaders == [leader] && h.raft(leader).term == term)
        #expect(lapses == 0, "the lease lapsed at \(lapses) of 500 looks")
        // Cut off, the old leader steps down on its quorum check and the others elect.
        h.isolate(leader)
        h.runOnTimers(for: .seconds(3))
        #expect(h.raft(leader).role != .leader)
        let others = h.leaders.filter { $0 != leader }
        #expect(others.count == 1)
        let next = try #require(others.first)
        let (index, _) = try #require(h.raft(next).propose([9], now: h.now))
        h.runOnTimers(for: .milliseconds(300))
        #expect(h.raft(next).commit >= index)
    }

    @Test("proposals made between two takes share one append per follower, and all of them commit")
    func proposalsShareAppends() throws {
        var h = RaftHarness(three)
        h.run(for: .seconds(2))
        let leader = h.raft(h.leaders[0])
        var indexes: [UInt64] = []
        for i in 0..<5 { indexes.append(try #require(leader.propose([UInt8(i)], now: h.now)).index) }
        #expect(leader.hasReady && leader.hasMessagesThatCanLeave)
        let ready = leader.ready()
        #expect(ready.entries.map(\.index) == indexes)
        let appends = ready.messages.filter { if case .append = $0.body { true } else { false } }
        // One append to each follower, carrying all five entries.
        #expect(appends.count == 2)
        #expect(Set(appends.map(\.to)) == Set(three.filter { $0 != leader.id }))
        for m in appends {
            guard case .append(_, _, let entries, _, _) = m.body else { continue }
            #expect(entries.map(\.index) == indexes)
        }
        for m in ready.messages { h.raft(m.to).step(m, now: h.now) }
        leader.advance(now: h.now)
        h.run(for: .milliseconds(300))
        for id in three { #expect(h.applied[id]?.suffix(5).map(\.data) == (0..<5).map { [UInt8($0)] }) }
    }

    @Test("a leader's appends leave while its previous ready is being written; it commits only what it made durable")
    func appendsLeaveDuringWrite() throws {
        var h = RaftHarness(three)
        h.run(for: .seconds(2))
        let leader = h.raft(h.leaders[0])
        let follower = h.raft(three.first { $0 != leader.id }!)
        // The first entry's ready is handed out and not yet durable.
        let (first, _) = try #require(leader.propose([1], now: h.now))
        let inFlight = leader.ready()
        #expect(inFlight.entries.map(\.index) == [first])
        #expect(!leader.hasReady)
        // A second entry proposed meanwhile: its appends can be taken at once, only them.
        let (second, _) = try #require(leader.propose([2], now: h.now))
        #expect(leader.hasMessagesThatCanLeave)
        let early = leader.takeMessagesThatCanLeave()
        #expect(!early.isEmpty && early.allSatisfy(\.canLeaveBeforeFsync))
        #expect(early.contains { if case .append(_, _, let entries, _, _) = $0.body { entries.contains { $0.index == second } } else { false } })
        #expect(leader.takeMessagesThatCanLeave().isEmpty)
        // The followers make both durable and answer; the leader has made neither durable,
        // yet one follower's acknowledgement plus its own write is what a commit needs.
        for m in inFlight.messages + early where m.to == follower.id { follower.step(m, now: h.now) }
        let answer = follower.ready()
        follower.advance(now: h.now)
        for m in answer.messages where m.to == leader.id { leader.step(m, now: h.now) }
        #expect(leader.commit < first, "committed before its own write of the entry was durable")
        // Its write of the first entry completes: that one commits, the second not yet.
        leader.advance(now: h.now)
        #expect(leader.commit >= first && leader.commit < second)
        h.settle()
        #expect(leader.commit >= second)
        // No message of its own announces the new commit index: the followers learn it from
        // the next append or heartbeat.
        #expect(follower.commit < second)
        h.run(for: .milliseconds(150))
        for id in three { #expect(h.applied[id]?.suffix(2).map(\.data) == [[1], [2]]) }
    }

    @Test("pre-vote: a node cut off does not raise its term, and does not disturb the leader when it returns")
    func preVote() {
        var h = RaftHarness(three)
        h.run(for: .seconds(2))
        let leader = h.leaders[0]
        let term = h.raft(leader).term
        let loner = three.first { $0 != leader }!
        h.isolate(loner)
        h.run(for: .seconds(5))
        #expect(h.raft(loner).term == term)
        h.cut = []
        h.run(for: .seconds(1))
        #expect(h.leaders == [leader])
        #expect(h.raft(leader).term == term)
    }

    @Test("check quorum: a leader cut off from its followers steps down; they elect another")
    func checkQuorum() {
        var h = RaftHarness(three)
        h.run(for: .seconds(2))
        let old = h.leaders[0]
        h.isolate(old)
        h.run(for: .seconds(3))
        #expect(h.raft(old).role != .leader)
        #expect(h.leaders.count == 1 && h.leaders[0] != old)
    }

    @Test("lease: held while a quorum acknowledges, lapses within the lease period without, and followers keep their promise")
    func lease() {
        var h = RaftHarness(three)
        h.run(for: .seconds(2))
        let leaderID = h.leaders[0]
        let leader = h.raft(leaderID)
        #expect(leader.holdsLease(now: h.now))
        let expiry = leader.leaseExpiry(now: h.now)!
        #expect(expiry - h.now <= h.config.leaseDuration)
        // Cut off: the lease runs out no later than one lease period after the last ack.
        h.isolate(leaderID)
        let cutAt = h.now
        h.run(for: h.config.leaseDuration + .milliseconds(20))
        #expect(!leader.holdsLease(now: h.now))
        #expect(!leader.canServeReads(now: h.now))
        // No follower voted for anyone while its promise (one election timeout from the last
        // message it heard) lasted.
        for id in three where id != leaderID {
            #expect(h.raft(id).term == leader.term || h.now - cutAt >= h.config.electionTimeout)
        }
        #expect(h.config.leaseDuration < h.config.electionTimeout * (1 - h.config.maxDrift) / (1 + h.config.maxDrift))
    }

    @Test("leadership transfer: the target takes over, and the old leader gives up its lease when it hands over")
    func transfer() throws {
        var h = RaftHarness(three)
        h.run(for: .seconds(2))
        let old = h.raft(h.leaders[0])
        let target = three.first { $0 != old.id }!
        old.transferLeadership(to: target, now: h.now)
        #expect(old.propose([1], now: h.now) == nil)  // no proposals mid-transfer
        // The lease ends the moment TimeoutNow is sent (the target is current already).
        #expect(!old.holdsLease(now: h.now))
        h.settle()
        #expect(h.leaders == [target])
        h.run(for: .milliseconds(100))
        #expect(h.raft(target).holdsLease(now: h.now))
    }

    @Test("a leader reported down is replaced as soon as the followers' promise ends, not after a full election timeout")
    func fastElectionOnDeath() {
        // Membership reports the cut-off leader dead 300 ms after it was cut off.
        func cluster(reported: Bool) -> [RaftNodeID] {
            var h = RaftHarness(three)
            h.run(for: .seconds(2))
            let old = h.leaders[0]
            h.isolate(old)
            h.run(for: .milliseconds(300))
            if reported {
                for id in three where id != old { h.raft(id).peerIsDown(old, now: h.now) }
            }
            // Promises end 500 ms after the last heartbeat; with the report an election
            // follows within two heartbeat intervals instead of after 500–1000 ms of timeout.
            h.run(for: .milliseconds(280))
            return h.leaders.filter { $0 != old }
        }
        // With the report: a new leader by E + E/5 (+ a round trip) after the last heartbeat.
        // Without it the election timeout is drawn from [E, 2E), so only sometimes that early.
        #expect(cluster(reported: true).count == 1)
    }

    @Test("the survivors of a leader reported down campaign in turn: one election, never a split vote")
    func survivorsTakeTurns() {
        // Both survivors hear of the death at the same instant. Campaigning at random within
        // the same 10 ms tick, both would vote for themselves and wait out a whole election
        // timeout; in turn, the first wins the term after the dead leader's.
        var splits = 0
        for seed in UInt64(1)...200 {
            var h = RaftHarness(three, seed: seed)
            h.run(for: .seconds(2))
            let old = h.leaders[0]
            let term = h.raft(old).term
            h.isolate(old)
            h.run(for: .milliseconds(300))
            for id in three where id != old { h.raft(id).peerIsDown(old, now: h.now) }
            h.run(for: .milliseconds(280))
            let leaders = h.leaders.filter { $0 != old }
            if leaders.count != 1 || h.raft(leaders[0]).term != term + 1 { splits += 1 }
        }
        #expect(splits == 0, "\(splits) of 200 failovers needed more than one election")
    }

    @Test("survivors whose votes split before the leader was reported down take turns once it is")
    func splitVoteThenReport() {
        // Election timeouts firing in the same tick split the vote: both survivors are
        // candidates of one term with no leader. Without the report they would wait out
        // another random timeout (500-1000 ms); with it the first in turn wins at once.
        var found = 0
        for seed in UInt64(1)...400 where found < 5 {
            var h = RaftHarness(three, seed: seed)
            h.run(for: .seconds(2))
            let old = h.leaders[0]
            let survivors = three.filter { $0 != old }
            h.isolate(old)
            var split = false
            for _ in 0..<150 {
                h.run(for: .milliseconds(10))
                let rafts = survivors.map { h.raft($0) }
                if rafts.allSatisfy({ $0.role == .candidate }), rafts[0].term == rafts[1].term { split = true; break }
                if rafts.contains(where: { $0.role == .leader }) { break }
            }
            guard split else { continue }
            found += 1
            for id in survivors { h.raft(id).peerIsDown(old, now: h.now) }
            h.run(for: .milliseconds(150))
            #expect(h.leaders.filter { $0 != old }.count == 1, "seed \(seed): no leader 150 ms after the report")
        }
        #expect(found > 0, "no seed split the vote; the test saw nothing")
    }

    @Test("the order of succession is the same on every node and varies with the term")
    func successionOrder() {
        let survivors = ["n1:7001", "n3:7003"]
        var first: [RaftNodeID: Int] = [:]
        for term in UInt64(1)...64 {
            let turns = survivors.map { Raft.successionTurn(of: $0, among: survivors, term: term) }
            #expect(Set(turns) == [0, 1])
            #expect(turns == survivors.map { Raft.successionTurn(of: $0, among: survivors.reversed(), term: term) })
            first[survivors[turns.firstIndex(of: 0)!], default: 0] += 1
        }
        // Each survivor goes first for a fair share of the partitions.
        #expect(first.values.allSatisfy { $0 >= 16 }, "\(first)")
    }

    @Test("a restarted node keeps its vote promise for an election timeout")
    func restartKeepsPromise() {
        var h = RaftHarness(three)
        h.run(for: .seconds(2))
        let leader = h.leaders[0]
        let follower = three.first { $0 != leader }!
        let candidate = three.first { $0 != leader && $0 != follower }!
        h.restart(follower)
        let r = h.raft(follower)
        let term = r.term
        // A vote request with a higher term right after the restart is ignored.
        r.step(RaftMessage(partition: 0, from: candidate, to: follower, term: term + 1,
                           body: .vote(preVote: false, lastIndex: 100, lastTerm: term + 1, transferTerm: nil)), now: h.now)
        #expect(r.term == term)
        #expect(r.vote != candidate)
        r.step(RaftMessage(partition: 0, from: candidate, to: follower, term: term + 1,
                           body: .vote(preVote: false, lastIndex: 100, lastTerm: term + 1, transferTerm: nil)), now: h.now + h.config.electionTimeout)
        #expect(r.term == term + 1)
        #expect(r.vote == candidate)
    }

    @Test("a follower behind the leader's compacted log catches up from a snapshot plus the tail")
    func snapshotCatchUp() throws {
        var h = RaftHarness(three)
        h.run(for: .seconds(2))
        let leader = h.raft(h.leaders[0])
        let lagging = three.first { $0 != leader.id }!
        h.isolate(lagging)
        for i in 0..<50 { _ = leader.propose([UInt8(i)], now: h.now); h.settle() }
        let meta = try #require(leader.compact(to: leader.applied))
        #expect(meta.index == leader.applied)
        #expect(leader.firstIndex == meta.index + 1)
        for i in 50..<55 { _ = leader.propose([UInt8(i)], now: h.now); h.settle() }
        h.cut = []
        h.run(for: .milliseconds(300))
        let f = h.raft(lagging)
        #expect(f.snapshotMeta.index >= meta.index)
        #expect(f.commit == leader.commit)
        #expect(h.stored[lagging]!.applied == leader.commit)
    }

    @Test("configuration changes go one voter at a time; a learner replicates and never votes")
    func configurationChanges() throws {
        var h = RaftHarness(three, learners: ["d"])
        h.run(for: .seconds(2))
        let leader = h.raft(h.leaders[0])
        #expect(h.raft("d").role == .follower)
        _ = leader.propose([9], now: h.now)
        // The learner has the entry at once and learns it committed from the next heartbeat.
        h.settle()
        #expect(h.raft("d").lastIndex == leader.lastIndex)
        h.run(for: .milliseconds(150))
        #expect(h.applied["d"]?.contains { $0.data == [9] } == true)
        // Two voters at once is refused.
        #expect(leader.proposeConfiguration(RaftConfiguration(voters: ["a", "b", "c", "d", "e"]), now: h.now) == .failure(.moreThanOneVoter))
        // Promote d.
        _ = try leader.proposeConfiguration(RaftConfiguration(voters: ["a", "b", "c", "d"]), now: h.now).get()
        #expect(leader.proposeConfiguration(RaftConfiguration(voters: ["a", "b", "c"]), now: h.now) == .failure(.changeInProgress))
        h.settle()
        #expect(h.raft("d").configuration.voters == ["a", "b", "c", "d"])
        // Remove a voter that is not the leader.
        let gone = ["a", "b", "c"].first { $0 != leader.id }!
        _ = try leader.proposeConfiguration(RaftConfiguration(voters: ["a", "b", "c", "d"].filter { $0 != gone }), now: h.now).get()
        h.settle()
        #expect(leader.configuration.voters.count == 3)
        #expect(!leader.configuration.voters.contains(gone))
        _ = leader.propose([10], now: h.now)
        h.run(for: .milliseconds(150))
        #expect(h.applied["d"]?.last?.data == [10])
    }

    @Test("a leader that removes itself steps down once the change commits")
    func leaderRemovesItself() throws {
        var h = RaftHarness(three)
        h.run(for: .seconds(2))
        let leader = h.raft(h.leaders[0])
        _ = try leader.proposeConfiguration(RaftConfiguration(voters: three.filter { $0 != leader.id }), now: h.now).get()
        h.settle()
        #expect(leader.role != .leader)
        h.isolate(leader.id)
        h.run(for: .seconds(3))
        #expect(h.leaders.count == 1 && h.leaders[0] != leader.id)
    }

    /// Drives a ``VoterReplacement`` the way the node does: one planner step on the current
    /// leader per tick, until it says done.
    static func replace(_ r: VoterReplacement, in h: inout RaftHarness, alive: Set<RaftNodeID>, limit: Duration = .seconds(20)) -> [String] {
        var steps: [String] = []
        let end = h.now + limit
        while h.now < end {
            h.run(for: .milliseconds(10))
            guard let id = h.leaders.first(where: { alive.contains($0) }) else { continue }
            let leader = h.raft(id)
            let step = r.next(leader: id, configuration: leader.configuration, changePending: leader.configurationChangePending,
                              commit: leader.commit, match: leader.match(of: r.add), removeIsAlive: alive.contains(r.remove),
                              transferTargets: leader.configuration.voters.filter { $0 != id && alive.contains($0) })
            switch step {
            case .done: return steps
            case .wait: break
            case .refuse(let why): steps.append("refused: \(why)"); return steps
            case .transfer(let target):
                if leader.transferee == nil { steps.append("transfer to \(target)"); leader.transferLeadership(to: target, now: h.now) }
            case .propose(let c, let what):
                if case .success = leader.proposeConfiguration(c, now: h.now) { steps.append(what) }
            }
        }
        steps.append("timed out")
        return steps
    }

    @Test("a dead voter is replaced by a new node: learner, catch-up, remove, promote; the new trio elects and commits")
    func replaceDeadVoter() throws {
        var h = RaftHarness(three)
        h.nodes["d"] = Raft(id: "d", partition: 0, stored: .fresh(RaftConfiguration(voters: three)), config: h.config, seed: 7, now: h.now)
        h.stored["d"] = .fresh(RaftConfiguration(voters: three))
        h.run(for: .seconds(2))
        let first = h.raft(h.leaders[0])
        for i in 0..<50 { _ = first.propose([UInt8(i)], now: h.now) }
        h.settle()
        // c dies for good (if it led, a or b takes over).
        h.isolate("c")
        h.nodes["c"] = nil
        h.run(for: .seconds(3))
        let steps = Self.replace(VoterReplacement(remove: "c", add: "d"), in: &h, alive: ["a", "b", "d"])
        #expect(steps == ["add d as a learner", "remove voter c", "promote d to voter"])
        for id in ["a", "b", "d"] { #expect(h.raft(id).configuration == RaftConfiguration(voters: ["a", "b", "d"])) }
        #expect(h.applied["d"]?.filter { $0.kind == .command }.count == 50)
        // a or b may now fail: the other and d carry on.
        let victim = h.leaders[0] == "d" ? "a" : h.leaders[0]
        h.isolate(victim)
        h.run(for: .seconds(3))
        let next = h.leaders.filter { $0 != victim }
        #expect(next.count == 1)
        let index = h.raft(next[0]).propose([200], now: h.now)
        h.run(for: .milliseconds(100))
        #expect(index != nil && h.applied["d"]?.last?.data == [200])
    }

    @Test("a live voter being replaced hands leadership away, and the new node is promoted before it leaves")
    func replaceLiveLeader() throws {
        var h = RaftHarness(three)
        h.nodes["d"] = Raft(id: "d", partition: 0, stored: .fresh(RaftConfiguration(voters: three)), config: h.config, seed: 7, now: h.now)
        h.stored["d"] = .fresh(RaftConfiguration(voters: three))
        h.run(for: .seconds(2))
        let old = h.leaders[0]
        let steps = Self.replace(VoterReplacement(remove: old, add: "d"), in: &h, alive: ["a", "b", "c", "d"])
        #expect(steps.count == 4 && steps[0] == "add d as a learner" && steps[1] == "promote d to voter" && steps[2].hasPrefix("transfer to ") && steps[3] == "remove voter \(old)")
        let voters = Set(three + ["d"]).subtracting([old]).sorted()
        #expect(h.leaders.count == 1 && h.leaders[0] != old)
        #expect(h.raft(h.leaders[0]).configuration.voters == voters)
        // Asking again is a no-op; nonsense is refused.
        #expect(Self.replace(VoterReplacement(remove: old, add: "d"), in: &h, alive: Set(voters)) == [])
        #expect(Self.replace(VoterReplacement(remove: "zz", add: "yy"), in: &h, alive: Set(voters)).first?.hasPrefix("refused: zz is not a voter") == true)
    }
}
