/// A small linearizability checker for one register (Wing & Gong's search with memoization,
/// as in Knossos or Porcupine). A history is operations with call and return times; a write
/// whose outcome is unknown (it timed out, the node died) may take effect at any time after
/// its call, or never.
struct RegisterHistory {
    enum Kind: Equatable { case write(String), read(String?) }
    struct Op {
        var call: Double
        /// `.infinity` when the outcome is unknown (writes only).
        var ret: Double
        var kind: Kind
        var unknown: Bool { ret == .infinity }
    }

    var ops: [Op] = []

    /// Whether some order of the operations, each taking effect at one instant between its
    /// call and its return, explains every read.
    func isLinearizable(initial: String? = nil) -> Bool {
        let sorted = ops.sorted { $0.call < $1.call }
        let words = (sorted.count + 63) / 64
        struct State: Hashable { var done: [UInt64]; var value: String? }
        var seen = Set<State>()
        let required = sorted.filter { !$0.unknown }.count

        func search(_ done: inout [UInt64], _ value: String?, _ remaining: Int) -> Bool {
            if remaining == 0 { return true }
            // Only operations called before the earliest return among the pending ones can go
            // next: that one must take effect before it returns.
            var minRet = Double.infinity
            for (i, op) in sorted.enumerated() where done[i / 64] & (1 << UInt64(i % 64)) == 0 && op.ret < minRet { minRet = op.ret }
            for (i, op) in sorted.enumerated() {
                if op.call > minRet { break }
                if done[i / 64] & (1 << UInt64(i % 64)) != 0 { continue }
                let next: String?
                switch op.kind {
                case .read(let v):
                    guard v == value else { continue }
                    next = value
                case .write(let v):
                    next = v
                }
                done[i / 64] |= 1 << UInt64(i % 64)
                if seen.insert(State(done: done, value: next)).inserted, search(&done, next, remaining - (op.unknown ? 0 : 1)) {
                    return true
                }
                done[i / 64] &= ~(1 << UInt64(i % 64))
            }
            return false
        }
        var done = [UInt64](repeating: 0, count: max(1, words))
        return search(&done, initial, required)
    }
}
