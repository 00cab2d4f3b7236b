/// Replacing a voter that is gone for good, one single-server change at a time (Raft thesis
/// §4.1): the new node joins as a learner, is promoted only once it has caught up to the
/// leader's commit index, and the old voter is removed. Each step is a configuration entry the
/// leader proposes only after the previous one committed, so two majorities never disagree.
///
/// A pure planner: given the leader's view it names the next move, so the shell can call it
/// again and again (after a lost answer, a new leader, a restart) and it never does a step twice.
public struct VoterReplacement: Sendable, Equatable, CustomStringConvertible {
    public var remove: RaftNodeID
    public var add: RaftNodeID

    public init(remove: RaftNodeID, add: RaftNodeID) {
        self.remove = remove
        self.add = add
    }

    public var description: String { "replace voter \(remove) by \(add)" }

    public enum Step: Sendable, Equatable {
        /// The configuration has `add` as a voter and `remove` nowhere.
        case done
        /// Propose this configuration (it differs from the current one by one node).
        case propose(RaftConfiguration, String)
        /// The leader is the voter being removed: hand leadership to this voter first.
        case transfer(to: RaftNodeID)
        /// Nothing to do until something changes (a change commits, the learner catches up).
        case wait(String)
        /// The request makes no sense for this configuration (and never will).
        case refuse(String)
    }

    /// The leader's next move. `match` is how much of the log `add` holds (nil when unknown),
    /// `removeIsAlive` whether membership still sees the old voter: a dead one is removed
    /// before the new one is promoted (fewer nodes must be up meanwhile), a live one after (the
    /// cluster keeps its fault tolerance throughout).
    public func next(leader: RaftNodeID, configuration c: RaftConfiguration, changePending: Bool, commit: UInt64,
                     match: UInt64?, removeIsAlive: Bool, transferTargets: [RaftNodeID]) -> Step {
        let finished = c.isVoter(add) && !c.members.contains(remove)
        if finished { return .done }
        if remove == add { return .refuse("a voter cannot replace itself") }
        if !c.members.contains(remove), !c.members.contains(add) {
            return .refuse("\(remove) is not a voter (the voters are \(c.voters.joined(separator: ", ")))")
        }
        if changePending { return .wait("a configuration change is being committed") }
        if !c.members.contains(add) {
            return .propose(RaftConfiguration(voters: c.voters, learners: c.learners + [add]), "add \(add) as a learner")
        }
        if c.learners.contains(add) {
            let held = match ?? 0
            if held < commit { return .wait("\(add) is catching up: it holds \(held) of \(commit) committed entries") }
        }
        let promoteFirst = removeIsAlive || c.voters.filter { $0 != remove }.count < 2
        if c.learners.contains(add), promoteFirst || !c.isVoter(remove) {
            return .propose(RaftConfiguration(voters: c.voters + [add], learners: c.learners.filter { $0 != add }), "promote \(add) to voter")
        }
        if c.isVoter(remove) {
            if leader == remove {
                guard let target = transferTargets.first(where: { $0 != remove && c.isVoter($0) }) else {
                    return .wait("\(remove) leads and no other live voter can take over")
                }
                return .transfer(to: target)
            }
            return .propose(RaftConfiguration(voters: c.voters.filter { $0 != remove }, learners: c.learners), "remove voter \(remove)")
        }
        // `remove` is only a learner (an earlier attempt stopped half-way): drop it.
        return .propose(RaftConfiguration(voters: c.voters, learners: c.learners.filter { $0 != remove }), "remove learner \(remove)")
    }
}
