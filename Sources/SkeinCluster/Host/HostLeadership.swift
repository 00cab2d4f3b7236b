/// Where a voter replacement stands on one partition.
public enum ReplacementProgress: Sendable, Equatable {
    case done(voters: [RaftNodeID])
    case working(String)
    case refused(String)
}

/// What the host did that an operator should be able to read in the log.
public enum HostNote: Sendable, Equatable {
    case leads(partition: Int, epoch: UInt64)
    case stoppedLeading(partition: Int, epoch: UInt64)
    case handedOver(partition: Int, to: RaftNodeID, why: String)
    case configurationProposed(partition: Int, change: String, index: UInt64, configuration: RaftConfiguration)
    case fenced(partition: Int, fault: StorageFault, retryIn: Duration?)
    case restarted(partition: Int)
}

extension ReplicationHost {
    /// Publishes every partition's status when any changed, and the standings that changed
    /// (it runs at every pump, so the common case, nothing changed, is one pass of comparisons).
    func publish() {
        let now = clock()
        var changed = false
        for (i, g) in groups.enumerated() {
            let fenced = isFenced(i)
            let role = fenced ? .follower : g.role
            let leader = fenced ? nil : g.leader
            if role != lastRoles[i] {
                if role == .leader { onNote?(.leads(partition: i, epoch: g.term)) }
                if lastRoles[i] == .leader { onNote?(.stoppedLeading(partition: i, epoch: g.term)) }
                lastRoles[i] = role
                changed = true
            }
            if g.term != lastTerms[i] {
                lastTerms[i] = g.term
                changed = true
            }
            if leader != lastLeaders[i] {
                lastLeaders[i] = leader
                changed = true
            }
            if g.configuration != lastConfigurations[i] {
                lastConfigurations[i] = g.configuration
                changed = true
            }
            let fault = fences[i]?.fault
            if fault != status[i].fault || faultAttempts[i] != status[i].faultAttempts {
                changed = true
            }
        }
        if changed {
            status = groups.enumerated().map { i, g in
                PartitionStatus(id: i, leader: isFenced(i) ? nil : g.leader, epoch: g.term, voters: g.configuration.voters,
                                learners: g.configuration.learners, fault: fences[i]?.fault, faultAttempts: faultAttempts[i])
            }
            onStatusChange?(status)
        }
        guard let onStandingChange else { return }
        var moved: [Int: Standing] = [:]
        for p in 0..<partitionCount {
            let fenced = isFenced(p)
            let g = groups[p]
            let s = Standing(leads: !fenced && g.role == .leader, epoch: g.term, owns: !fenced && g.canServeReads(now: now))
            if s != standings[p] {
                standings[p] = s
                moved[p] = s
            }
        }
        if !moved.isEmpty { onStandingChange(moved) }
    }

    /// Spreads leadership over the live voters: a node leading at least two partitions more
    /// than some live voter hands one to it (one transfer a second), so leaders spread at start
    /// and move back to a node that returns.
    func balanceLeadership(now: Duration) {
        if let last = lastTransfer, now - last < .seconds(1) { return }
        guard !isFenced(0) else { return }
        let voters = groups[0].configuration.voters
        guard voters.contains(me), voters.count > 1 else { return }
        var counts = Dictionary(uniqueKeysWithValues: voters.map { ($0, 0) })
        for g in groups where !isFenced(g.partition) {
            // A partition counts for the leader this node has heard from; ours only while we lead.
            if let leader = g.leader, counts[leader] != nil { counts[leader]! += 1 }
        }
        let mine = counts[me] ?? 0
        let candidates = voters.filter { $0 != me && isAlive($0) }
        guard let target = candidates.min(by: { (counts[$0]!, $0) < (counts[$1]!, $1) }),
              mine - counts[target]! >= 2,
              let group = groups.first(where: { !isFenced($0.partition) && $0.role == .leader && $0.transferee == nil && $0.configuration.isVoter(target) })
        else { return }
        lastTransfer = now
        onNote?(.handedOver(partition: group.partition, to: target, why: "this node leads \(mine) partitions, \(target) leads \(counts[target]!)"))
        group.transferLeadership(to: target, now: now)
    }

    /// Hands `partition`'s leadership to `target` (a live voter), if this node leads it.
    public func transferLeadership(partition p: Int, to target: RaftNodeID) {
        guard !isFenced(p) else { return }
        groups[p].transferLeadership(to: target, now: clock())
        pump()
    }

    /// One move of a voter replacement on `partition`, if this node leads it: proposes the next
    /// configuration (or hands leadership away when it is the voter leaving). Safe to call again
    /// and again; each call does at most one step.
    public func advanceReplacement(_ replacement: VoterReplacement, partition p: Int) -> Result<ReplacementProgress, ReplicationError> {
        if let fence = fences[p] { return .failure(Self.fenced(p, fence.fault)) }
        let g = groups[p]
        guard g.role == .leader else { return .failure(.notLeader(partition: p, leader: g.leader)) }
        let now = clock()
        defer { pump() }
        let step = replacement.next(
            leader: me, configuration: g.configuration, changePending: g.configurationChangePending, commit: g.commit,
            match: g.match(of: replacement.add), removeIsAlive: isAlive(replacement.remove),
            transferTargets: g.configuration.voters.filter { $0 != me && isAlive($0) })
        switch step {
        case .done:
            return .success(.done(voters: g.configuration.voters))
        case .wait(let why):
            return .success(.working(why))
        case .refuse(let why):
            return .success(.refused(why))
        case .transfer(let target):
            if g.transferee == nil {
                onNote?(.handedOver(partition: p, to: target, why: "this node is the voter being replaced"))
                g.transferLeadership(to: target, now: now)
            }
            return .success(.working("\(me) leads and is being replaced: handing leadership to \(target)"))
        case .propose(let configuration, let what):
            switch g.proposeConfiguration(configuration, now: now) {
            case .success(let index):
                onNote?(.configurationProposed(partition: p, change: what, index: index, configuration: configuration))
                return .success(.working(what))
            case .failure(let why):
                return .success(.working("\(what): not yet (\(why))"))
            }
        }
    }
}
