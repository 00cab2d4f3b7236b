import SkeinCluster
import Testing

@Suite("Membership state machine")
struct MembershipTests {
    static func member(_ name: String, generation: UInt64 = 1, state: MemberState = .alive, incarnation: UInt64 = 0) -> Member {
        Member(id: MemberID(name: name, generation: generation), peer: "\(name):9000", client: "\(name):8000", state: state, incarnation: incarnation)
    }

    static func sends(_ outputs: [MembershipOutput]) -> [(String, Envelope)] {
        outputs.compactMap { if case .send(let to, let envelope) = $0 { (to, envelope) } else { nil } }
    }

    /// Delivers every message between the machines until none is left.
    static func exchange(_ machines: inout [String: Membership], _ outputs: [MembershipOutput], now: Duration) {
        var pending = sends(outputs)
        while !pending.isEmpty {
            let (to, envelope) = pending.removeFirst()
            let name = String(to.split(separator: ":")[0])
            guard machines[name] != nil else { continue }
            pending += sends(machines[name]!.receive(envelope, now: now))
        }
    }

    @Test func joinsThroughASeedAndLearnsEveryMember() {
        var machines: [String: Membership] = [:]
        for name in ["a", "b", "c"] {
            machines[name] = Membership(me: Self.member(name), seeds: ["a:9000"], seed: 1, now: .zero)
        }
        #expect(machines["a"]!.joined, "a seed whose only seed is itself is joined at once")
        #expect(!machines["b"]!.joined)
        Self.exchange(&machines, machines["b"]!.tick(now: .milliseconds(1)), now: .milliseconds(1))
        Self.exchange(&machines, machines["c"]!.tick(now: .milliseconds(1)), now: .milliseconds(1))
        #expect(machines["c"]!.members.map(\.name) == ["a", "b", "c"])
        #expect(machines["a"]!.members.allSatisfy { $0.state == .alive })
        #expect(machines["b"]!.joined && machines["c"]!.joined)
    }

    @Test func unansweredJoinRetriesWithBackoffAndSaysWhy() {
        var m = Membership(me: Self.member("b"), seeds: ["a:9000", "b:9000"], seed: 1, now: .zero)
        let first = m.tick(now: .zero)
        #expect(Self.sends(first).map(\.0) == ["a:9000"], "its own address is skipped")
        #expect(Self.sends(m.tick(now: .milliseconds(100))).isEmpty, "waits out the backoff")
        let second = m.tick(now: .milliseconds(200))
        #expect(Self.sends(second).count == 1)
        #expect(second.contains { if case .log(.warning, let text) = $0 { text.contains("no seed has answered") } else { false } })
        #expect(Self.sends(m.tick(now: .milliseconds(500))).isEmpty, "the second wait is twice as long")
        #expect(Self.sends(m.tick(now: .milliseconds(600))).count == 1)
    }

    /// Tests that jump the clock must not look like a stall.
    static var noStalls: MembershipConfig {
        var config = MembershipConfig()
        config.stallThreshold = .seconds(1000)
        return config
    }

    @Test func anAckToARelayedPingCountsForOurOwnProbeAndASuspectIsProbedNext() {
        var a = Membership(me: Self.member("a"), seeds: [], config: Self.noStalls, seed: 7, now: .zero)
        _ = a.receive(Envelope(from: Self.member("b"), message: .announce(updates: [])), now: .zero)
        _ = a.receive(Envelope(from: Self.member("c"), message: .announce(updates: [])), now: .zero)
        let config = a.config
        let ping = Self.sends(a.tick(now: .milliseconds(1)))
        guard case .ping(_, let target, _) = ping.first?.1.message else { Issue.record("no ping: \(ping)"); return }
        let other = target.name == "b" ? "c" : "b"
        // The other member asks us to probe the target for it; the target answers that ping
        // (its answer to our own is lost): it is alive, and our probe must see so.
        let relayed = Self.sends(a.receive(Envelope(from: Self.member(other), message: .pingRequest(seq: 90, target: Self.member(target.name), updates: [])), now: .milliseconds(2)))
        guard case .ping(let relaySeq, _, _) = relayed.first?.1.message else { Issue.record("no relayed ping: \(relayed)"); return }
        let forwarded = Self.sends(a.receive(Envelope(from: Self.member(target.name), message: .ack(seq: relaySeq, updates: [])), now: .milliseconds(3)))
        #expect(forwarded.map(\.0) == ["\(other):9000"], "the relay's ack still reaches who asked")
        _ = a.tick(now: .milliseconds(1) + config.protocolPeriod)
        #expect(a.member(named: target.name)?.state == .alive)

        // Next round: the other member stays silent and is suspected; the very next probe goes
        // to it, carrying the suspicion, so it can refute at once.
        var t = Duration.milliseconds(1) + config.protocolPeriod
        var next: Envelope?
        for _ in 0..<40 where next == nil {
            t += .milliseconds(10)
            let out = Self.sends(a.tick(now: t))
            for (to, envelope) in out where to == "\(target.name):9000" {
                if case .ping(let seq, _, _) = envelope.message {
                    _ = a.receive(Envelope(from: Self.member(target.name), message: .ack(seq: seq, updates: [])), now: t)
                }
            }
            if a.member(named: other)?.state == .suspect {
                // The probe that follows the suspicion starts in the same tick.
                next = out.first { if case .ping = $0.1.message { true } else { false } }?.1
            }
        }
        guard case .ping(_, let probed, let updates) = next?.message else { Issue.record("no probe after the suspicion"); return }
        #expect(probed.name == other)
        #expect(updates.first?.member.name == other && updates.first?.member.state == .suspect)
    }

    @Test func aSilentMemberIsProbedIndirectlyThenSuspectedThenDead() {
        var a = Membership(me: Self.member("a"), seeds: [], config: Self.noStalls, seed: 7, now: .zero)
        _ = a.receive(Envelope(from: Self.member("b"), message: .announce(updates: [])), now: .zero)
        _ = a.receive(Envelope(from: Self.member("c"), message: .announce(updates: [])), now: .zero)
        let config = a.config
        // Probe whichever member comes first; it never answers.
        let ping = Self.sends(a.tick(now: .milliseconds(1)))
        guard case .ping(_, let target, _) = ping.first?.1.message else { Issue.record("no ping: \(ping)"); return }
        let helper = target.name == "b" ? "c" : "b"
        let indirect = Self.sends(a.tick(now: .milliseconds(1) + config.probeTimeout))
        #expect(indirect.map(\.0) == ["\(helper):9000"])
        guard case .pingRequest(_, let asked, _) = indirect.first?.1.message else { Issue.record("no ping-req"); return }
        #expect(asked.id == target)
        _ = a.tick(now: .milliseconds(1) + config.protocolPeriod)
        #expect(a.member(named: target.name)?.state == .suspect)
        // Three members: too few for independent confirmations, so the minimum timeout applies.
        let suspectedAt = Duration.milliseconds(1) + config.protocolPeriod
        _ = a.tick(now: suspectedAt + config.suspicionMin - .milliseconds(1))
        #expect(a.member(named: target.name)?.state == .suspect)
        let death = a.tick(now: suspectedAt + config.suspicionMin)
        #expect(a.member(named: target.name)?.state == .dead)
        #expect(Self.sends(death).contains { $0.0 == "\(helper):9000" }, "a death is announced to the live members")
    }

    @Test func aSuspectedNodeRefutesByRaisingItsIncarnation() {
        var a = Membership(me: Self.member("a"), seeds: [], seed: 1, now: .zero)
        let out = a.receive(Envelope(from: Self.member("b"), message: .ping(seq: 9, target: MemberID(name: "a", generation: 1),
            updates: [MemberUpdate(member: Self.member("a", state: .suspect, incarnation: 0), origin: "b")])), now: .zero)
        #expect(a.me.incarnation == 1)
        #expect(a.me.state == .alive)
        let acks = Self.sends(out).filter { if case .ack(9, _) = $0.1.message { true } else { false } }
        #expect(acks.count == 1)
        #expect(acks[0].1.from.incarnation == 1, "the ack itself carries the refutation")
    }

    @Test func incarnationsOrderStatementsAboutAMember() {
        var a = Membership(me: Self.member("a"), seeds: [], seed: 1, now: .zero)
        let b = Self.member("b")
        _ = a.receive(Envelope(from: b, message: .announce(updates: [])), now: .zero)
        func tell(_ m: Member) { _ = a.receive(Envelope(from: Self.member("c"), message: .announce(updates: [MemberUpdate(member: m, origin: "c")])), now: .zero) }
        tell(Self.member("b", state: .suspect, incarnation: 0))
        #expect(a.member(named: "b")?.state == .suspect)
        tell(Self.member("b", state: .alive, incarnation: 0))
        #expect(a.member(named: "b")?.state == .suspect, "alive at the same incarnation does not clear a suspicion")
        tell(Self.member("b", state: .alive, incarnation: 1))
        #expect(a.member(named: "b")?.state == .alive)
        tell(Self.member("b", state: .dead, incarnation: 0))
        #expect(a.member(named: "b")?.state == .alive, "a stale death is ignored")
        tell(Self.member("b", state: .dead, incarnation: 1))
        #expect(a.member(named: "b")?.state == .dead)
        tell(Self.member("b", state: .left, incarnation: 2))
        #expect(a.member(named: "b")?.state == .left)
        tell(Self.member("b", state: .alive, incarnation: 5))
        #expect(a.member(named: "b")?.state == .left, "left is final for a generation")
    }

    @Test func aRestartedNodeIsANewGenerationNotItsDeadFormerSelf() {
        var a = Membership(me: Self.member("a"), seeds: [], seed: 1, now: .zero)
        _ = a.receive(Envelope(from: Self.member("b", generation: 5, incarnation: 9), message: .announce(updates: [])), now: .zero)
        _ = a.receive(Envelope(from: Self.member("c"), message: .announce(updates: [
            MemberUpdate(member: Self.member("b", generation: 5, state: .dead, incarnation: 9), origin: "c")])), now: .zero)
        #expect(a.member(named: "b")?.state == .dead)
        _ = a.receive(Envelope(from: Self.member("b", generation: 6, incarnation: 0), message: .announce(updates: [])), now: .zero)
        #expect(a.member(named: "b")?.state == .alive)
        #expect(a.member(named: "b")?.id.generation == 6)
        // Old news about the former generation changes nothing.
        _ = a.receive(Envelope(from: Self.member("c"), message: .announce(updates: [
            MemberUpdate(member: Self.member("b", generation: 5, state: .dead, incarnation: 10), origin: "c")])), now: .zero)
        #expect(a.member(named: "b")?.state == .alive)
    }

    @Test func aStallIsBlamedOnItselfAndRefutedAtOnce() {
        var a = Membership(me: Self.member("a"), seeds: [], seed: 1, now: .zero)
        _ = a.receive(Envelope(from: Self.member("b"), message: .announce(updates: [])), now: .zero)
        _ = a.tick(now: .milliseconds(10))
        let after = a.tick(now: .milliseconds(10) + a.config.stallThreshold + .milliseconds(1))
        #expect(a.me.incarnation == 1)
        #expect(a.localHealthMultiplier == 1)
        #expect(Self.sends(after).contains { if case .announce = $0.1.message { $0.0 == "b:9000" } else { false } })
        #expect(a.member(named: "b")?.state == .alive, "the probe in flight during the stall does not make b suspect")
    }

    @Test func leavingTellsEveryLiveMember() {
        var a = Membership(me: Self.member("a"), seeds: [], seed: 1, now: .zero)
        for name in ["b", "c"] { _ = a.receive(Envelope(from: Self.member(name), message: .announce(updates: [])), now: .zero) }
        let out = a.leave(now: .milliseconds(5))
        #expect(a.me.state == .left)
        #expect(Set(Self.sends(out).map(\.0)) == ["b:9000", "c:9000"])
        var b = Membership(me: Self.member("b"), seeds: [], seed: 2, now: .zero)
        _ = b.receive(Self.sends(out)[0].1, now: .milliseconds(6))
        #expect(b.member(named: "a")?.state == .left)
    }

    @Test func lifeguardSuspicionTimeoutShrinksWithConfirmations() {
        var a = Membership(me: Self.member("a"), seeds: [], config: Self.noStalls, seed: 1, now: .zero)
        for name in ["b", "c", "d", "e"] { _ = a.receive(Envelope(from: Self.member(name), message: .announce(updates: [])), now: .zero) }
        let config = a.config
        func tell(_ origin: String) {
            _ = a.receive(Envelope(from: Self.member(origin), message: .announce(updates: [
                MemberUpdate(member: Self.member("e", state: .suspect), origin: origin)])), now: .zero)
        }
        tell("b")
        _ = a.tick(now: config.suspicionMin)
        #expect(a.member(named: "e")?.state == .suspect, "one suspicion waits longer than the minimum")
        tell("c")
        tell("d")
        _ = a.tick(now: config.suspicionMin + .milliseconds(1))
        #expect(a.member(named: "e")?.state == .dead, "independent confirmations bring it down to the minimum")
    }
}
