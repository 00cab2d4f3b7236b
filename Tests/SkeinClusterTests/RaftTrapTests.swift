import SkeinCluster
import Testing

/// The known traps of Raft, each a script (``RaftScript``) that walks the cluster into it.
/// Each runs twice: as the code stands it must end with no violation; with the one rule that
/// guards against the trap switched off (``RaftRuleBreaks``, debug builds only) it must end
/// with one, or the script does not test that rule.
@Suite("Raft traps")
struct RaftTrapTests {
    static func config(_ breaks: RaftRuleBreaks, maxEntriesPerAppend: Int = 1024) -> RaftConfig {
        var c = RaftConfig()
        c.maxEntriesPerAppend = maxEntriesPerAppend
        #if DEBUG
        c.breaks = breaks
        #endif
        return c
    }

    static func isAppend(_ m: RaftMessage) -> Bool {
        if case .append = m.body { return true }
        return false
    }

    /// Figure 8 of the Raft paper (§5.4.2): an entry of an earlier term that reaches a majority
    /// is not committed by counting, since a leader that never had it may still overwrite it.
    static func figure8(_ breaks: RaftRuleBreaks) -> (violations: [String], commitOfA: UInt64) {
        let all: Set<RaftNodeID> = ["s1", "s2", "s3", "s4", "s5"]
        var s = RaftScript(voters: all.sorted(), config: config(breaks, maxEntriesPerAppend: 1))
        s.elect("s1", among: all)
        s.settle(among: all)
        // (a) s1 appends A at index 2; it reaches s2 only. s1 dies.
        let (a, _) = s.raft("s1").propose([0xA], now: s.now)!
        s.settle(among: ["s1", "s2"])
        s.crash("s1")
        // (b) s5 leads with the votes of s3 and s4 and appends its no-op at index 2, which
        // reaches no one. s5 dies.
        s.elect("s5", among: ["s3", "s4", "s5"])
        s.persist("s5")
        s.crash("s5")
        // (c) s1 returns and leads again (s2 and s3 vote); it sends A to s3, so A is on a
        // majority (s1, s2, s3), while its own no-op reaches s2 only.
        s.restart("s1")
        s.elect("s1", among: ["s1", "s2", "s3"])
        s.settle(among: ["s1", "s2", "s3"], dropping: { script, m in
            // Once s3 holds A, nothing after it reaches s3.
            guard m.to == "s3", script.raft("s3").lastIndex >= a, case .append(_, _, let entries, _, _) = m.body else { return false }
            return entries.contains { $0.index > a }
        })
        let commitOfA = s.raft("s1").commit
        s.crash("s1")
        // (d) s5 returns and leads with s3 and s4 (its last term is newer than A's) and
        // replaces A everywhere with its own no-op.
        s.restart("s5")
        s.elect("s5", among: ["s3", "s4", "s5"])
        s.settle(among: ["s3", "s4", "s5"])
        return (s.violations, commitOfA)
    }

    @Test("Figure 8: a leader commits an earlier term's entry only through one of its own")
    func figure8() {
        let kept = Self.figure8([])
        #expect(kept.violations.isEmpty, "\(kept.violations)")
        #expect(kept.commitOfA < 2, "A was counted committed on a majority of an earlier term")
        #if DEBUG
        let broken = Self.figure8(.commitEarlierTermsByCount)
        #expect(broken.commitOfA >= 2)
        #expect(!broken.violations.isEmpty, "the script does not reach the trap")
        #endif
    }

    /// §5.4.1: a voter refuses a candidate whose log lacks what the voter holds, so no leader
    /// can be elected without every committed entry.
    static func staleCandidate(_ breaks: RaftRuleBreaks) -> (violations: [String], staleWon: Bool) {
        var s = RaftScript(voters: ["a", "b", "c"], config: config(breaks))
        s.elect("a", among: ["a", "b", "c"])
        s.settle(among: ["a", "b", "c"])
        // X commits on a and b while c is cut off; a dies.
        _ = s.raft("a").propose([0x58], now: s.now)
        s.settle(among: ["a", "b"])
        s.crash("a")
        // c campaigns; only b can give it a majority.
        s.elapse(.seconds(10), ticking: ["c"], among: ["b", "c"]) { $0.raft("c").role == .leader }
        return (s.violations, s.raft("c").role == .leader)
    }

    @Test("a candidate whose log lacks a committed entry cannot win (vote and pre-vote check the log)")
    func staleCandidate() {
        let kept = Self.staleCandidate([])
        #expect(!kept.staleWon)
        #expect(kept.violations.isEmpty, "\(kept.violations)")
        #if DEBUG
        let broken = Self.staleCandidate(.voteWithoutLogCheck)
        #expect(broken.staleWon)
        #expect(!broken.violations.isEmpty, "the script does not reach the trap")
        #endif
    }

    /// A leader cut off from every follower commits nothing: commit needs a quorum.
    static func loneLeader(_ breaks: RaftRuleBreaks) -> (violations: [String], committedAlone: Bool) {
        var s = RaftScript(voters: ["a", "b", "c"], config: config(breaks))
        s.elect("a", among: ["a", "b", "c"])
        s.settle(among: ["a", "b", "c"])
        let (x, _) = s.raft("a").propose([0x58], now: s.now)!
        s.settle(among: ["a"])
        let alone = s.raft("a").commit >= x
        // The others elect among themselves, without X.
        s.elapse(.seconds(10), ticking: ["b"], among: ["b", "c"]) { $0.raft("b").role == .leader }
        s.settle(among: ["b", "c"])
        return (s.violations, alone)
    }

    @Test("a leader cut off from its followers commits nothing on its own")
    func loneLeader() {
        let kept = Self.loneLeader([])
        #expect(!kept.committedAlone)
        #expect(kept.violations.isEmpty, "\(kept.violations)")
        #if DEBUG
        let broken = Self.loneLeader(.commitOnLeaderAlone)
        #expect(broken.committedAlone)
        #expect(!broken.violations.isEmpty, "the script does not reach the trap")
        #endif
    }

    /// A leader counts itself toward a quorum only for what it made durable: an entry on the
    /// leader's unsynced write and one follower is not committed.
    static func unsyncedLeader(_ breaks: RaftRuleBreaks) -> (violations: [String], committedUnsynced: Bool) {
        var s = RaftScript(voters: ["a", "b", "c"], config: config(breaks))
        s.elect("a", among: ["a", "b", "c"])
        s.settle(among: ["a", "b", "c"])
        // X's appends leave before a's own write of X; only b gets one, and acknowledges.
        let (x, _) = s.raft("a").propose([0x58], now: s.now)!
        s.sendEarly("a")
        s.deliver { $0.to == "b" && Self.isAppend($0) }
        s.drop { $0.to == "c" }
        s.persist("b")
        s.deliver { $0.to == "a" }
        let committed = s.raft("a").commit >= x
        // a dies before its write of X is durable, returns without it, and votes c in.
        s.crash("a")
        s.restart("a")
        s.elapse(.seconds(10), ticking: ["c"], among: ["a", "c"]) { $0.raft("c").role == .leader }
        s.settle(among: ["a", "c"])
        return (s.violations, committed)
    }

    @Test("a leader counts only its durable entries toward the quorum")
    func unsyncedLeader() {
        let kept = Self.unsyncedLeader([])
        #expect(!kept.committedUnsynced)
        #expect(kept.violations.isEmpty, "\(kept.violations)")
        #if DEBUG
        let broken = Self.unsyncedLeader(.countOwnEntriesBeforeFsync)
        #expect(broken.committedUnsynced)
        #expect(!broken.violations.isEmpty, "the script does not reach the trap")
        #endif
    }

    /// The single-server change bug (Ongaro, raft-dev, 2015): a leader's uncommitted change
    /// to C∪{e} reaches only e; its successor, elected under C, removes a at once and commits
    /// that with {b, c}; a returns and, under C∪{e}, is elected by {a, d, e}, a majority that
    /// shares no node with {b, c}. Two leaders commit different entries at one index. A new
    /// leader that first commits its own no-op (under C, so on d too) closes the gap.
    static func changeBeforeNoop(_ breaks: RaftRuleBreaks) -> (violations: [String], refused: RaftChangeError?) {
        let c: Set<RaftNodeID> = ["a", "b", "c", "d"]
        var s = RaftScript(voters: c.sorted(), others: ["e"], config: config(breaks))
        s.elect("a", among: c)
        s.settle(among: c)
        _ = s.raft("a").proposeConfiguration(RaftConfiguration(voters: ["a", "b", "c", "d", "e"]), now: s.now)
        s.settle(among: ["a", "e"])
        s.crash("a")
        s.elect("b", among: ["b", "c", "d"])
        s.persist("b")
        s.drop { $0.to == "d" }
        var refused: RaftChangeError?
        if case .failure(let why) = s.raft("b").proposeConfiguration(RaftConfiguration(voters: ["b", "c", "d"]), now: s.now) {
            refused = why
        }
        s.settle(among: ["b", "c"])
        s.restart("a")
        s.elect("a", among: ["a", "d", "e"])
        s.settle(among: ["a", "d", "e"])
        return (s.violations, refused)
    }

    @Test("a new leader changes the configuration only after its own first entry commits")
    func changeBeforeNoop() {
        let kept = Self.changeBeforeNoop([])
        #expect(kept.refused == .termNotCommitted)
        #expect(kept.violations.isEmpty, "\(kept.violations)")
        #if DEBUG
        let broken = Self.changeBeforeNoop(.configurationBeforeNoop)
        #expect(broken.refused == nil)
        #expect(!broken.violations.isEmpty, "the script does not reach the trap")
        #endif
    }
}
