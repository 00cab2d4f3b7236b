import Foundation
import SkeinPipeline
import Synchronization

enum A: Slot { typealias Value = Data? }
enum B: Slot { typealias Value = Data? }
enum C: Slot { typealias Value = Data? }
enum Count: Slot { typealias Value = Int }
enum Name: Slot { typealias Value = String }
enum Trail: Slot { typealias Value = [String] }

struct ABCView: SlotView {
    var a = Write<A>()
    var b = Write<B>()
    var c = Write<C>()
}

struct ReadABCView: SlotView {
    var a = ReadIfPresent<A>()
    var b = ReadIfPresent<B>()
    var c = ReadIfPresent<C>()
}

/// Renders which of A, B, C are filled, e.g. "a=1 b=- c=3".
let reportABC = Step("report", view: ReadABCView.self) { ctx in
    func show(_ d: Data??) -> String { (d ?? nil).map { String(decoding: $0, as: UTF8.self) } ?? "-" }
    return .done(.text("a=\(show(ctx.optional(\.a))) b=\(show(ctx.optional(\.b))) c=\(show(ctx.optional(\.c)))"))
}

/// A one-shot gate: `wait()` suspends until `open()`; records who arrived.
final class Gate: Sendable {
    private let state = Mutex<(open: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

    func wait() async {
        await withCheckedContinuation { c in
            let resumeNow = state.withLock { s -> Bool in
                if s.open { return true }
                s.waiters.append(c)
                return false
            }
            if resumeNow { c.resume() }
        }
    }

    func open() {
        let waiters = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            s.open = true
            defer { s.waiters = [] }
            return s.waiters
        }
        for w in waiters { w.resume() }
    }
}

/// A thread-safe counter / log for test performers.
final class Log: Sendable {
    private let entries = Mutex<[String]>([])
    func add(_ e: String) { entries.withLock { $0.append(e) } }
    var all: [String] { entries.withLock { $0 } }
    func count(_ e: String) -> Int { entries.withLock { $0.filter { $0 == e }.count } }
}

func body(_ response: Response) -> String { String(decoding: response.body, as: UTF8.self) }

struct TestFailure: Error, CustomStringConvertible {
    let description: String
}
