import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import SkeinWorkflow

/// The workflows `skein node` ships (CONTRACT.md), written as a person would write their own:
/// typed flows of plain async Swift functions. Each task's result is checkpointed in the
/// instance's partition log before the next task starts.
public enum BundledWorkflows {
    public static func all() throws -> [Workflow] {
        [try ledgerSteps(), try approval(), try fanout(), try countdown(), try triage(), try flaky()]
    }

    // MARK: ledger-steps

    public struct LedgerInput: Codable, Sendable {
        public var steps: Int
        public var stepMs: Int?
        public var ledger: String?
        /// The next step to run (counted from 1); absent in the input.
        public var step: Int?
    }

    struct LedgerCall: Codable { var instance: String; var step: Int; var node: String; var attempt: Int }

    struct LedgerRefused: Error, CustomStringConvertible {
        let status: Int
        var description: String { "the ledger answered \(status)" }
    }

    /// `{"steps": N, "stepMs": M, "ledger": URL?}`: N sequential tasks; task i sleeps M ms, then
    /// POSTs `{"instance","step","node","attempt"}` to the ledger (if any) and fails unless it
    /// answers 2xx (retried with backoff). Output: N. Each step is one iteration of a loop, so
    /// step 5,000 costs what step 10 does.
    public static func ledgerSteps() throws -> Workflow {
        try flow(LedgerInput.self)
            .loop("step", maxIterations: 1_000_000, onMax: .fail, TaskOptions(timeout: .seconds(30), retry: TaskRetry(maxRetries: 5, initialDelay: .milliseconds(100), multiplier: 2, maxDelay: .seconds(2)))) { input, context in
                let i = input.step ?? 1
                guard i <= input.steps else { return .done(input) }
                if let ms = input.stepMs, ms > 0 { try await Task.sleep(for: .milliseconds(ms)) }
                if let ledger = input.ledger {
                    var request = HTTPClientRequest(url: ledger)
                    request.method = .POST
                    request.headers.add(name: "content-type", value: "application/json")
                    let call = LedgerCall(instance: context.instanceID, step: i, node: context.node, attempt: context.attempt)
                    request.body = .bytes(ByteBuffer(bytes: Array(try JSONEncoder().encode(call))))
                    let response = try await HTTPClient.shared.execute(request, timeout: .seconds(10))
                    _ = try await response.body.collect(upTo: 1 << 20)
                    guard (200..<300).contains(Int(response.status.code)) else { throw LedgerRefused(status: Int(response.status.code)) }
                }
                var next = input
                next.step = i + 1
                return next.step! > input.steps ? .done(next) : .again(next)
            }
            .then("result") { input, _ in input.steps }
            .build("ledger-steps")
    }

    // MARK: approval

    public struct ApprovalInput: Codable, Sendable {
        public var delayMs: Int
        public var signalTimeoutMs: Int?
    }

    public struct Approval: Codable, Sendable {
        public var approved: JSONValue?
    }

    /// `{"delayMs": D, "signalTimeoutMs": T?}`: submit, a durable delay of D, wait for the signal
    /// `approval` (at most T), then `{"approved": <the signal's payload>}` (null on timeout).
    public static func approval() throws -> Workflow {
        try flow(ApprovalInput.self)
            .then("submit") { input, _ in input }
            .delay("cooling-off") { .milliseconds(max(0, $0.delayMs)) }
            .waitForSignal("await-approval", "approval", as: JSONValue.self, timeout: { input in input.signalTimeoutMs.map { .milliseconds(max(0, $0)) } })
            .then("decide") { (payload: JSONValue?, _) in Approval(approved: payload) }
            .build("approval")
    }

    // MARK: fanout

    public struct FanoutInput: Codable, Sendable {
        public var branches: Int
        public var stepMs: Int?
    }

    /// `{"branches": K, "stepMs": M}`: K branches at once (branch i sleeps M ms and returns i),
    /// joined by their sum. Each branch's result is checkpointed as it finishes.
    public static func fanout() throws -> Workflow {
        try flow(FanoutInput.self)
            .fanOut("branch", count: { $0.branches }) { (i: Int, input: FanoutInput) in
                if let ms = input.stepMs, ms > 0 { try await Task.sleep(for: .milliseconds(ms)) }
                return i
            }
            .join("sum") { results, _ in try results.ordered(as: Int.self).reduce(0, +) }
            .build("fanout")
    }

    // MARK: countdown

    public struct CountdownInput: Codable, Sendable {
        public var from: Int
        public var iterations: Int?
    }

    /// `{"from": N}`: a loop counting down to 0 (at most 1,000 iterations); output the number
    /// of iterations.
    public static func countdown() throws -> Workflow {
        try flow(CountdownInput.self)
            .loop("tick", maxIterations: 1_000, onMax: .fail) { state, _ in
                var next = state
                next.iterations = (state.iterations ?? 0) + 1
                next.from = max(0, state.from - 1)
                return next.from == 0 ? .done(next) : .again(next)
            }
            .then("count") { state, _ in state.iterations ?? 0 }
            .build("countdown")
    }

    // MARK: triage

    public struct TriageInput: Codable, Sendable {
        public var kind: String
    }

    /// `{"kind": K}`: routes on K to `billing` or `tech`, anything else to `other`; output the
    /// branch's name.
    public static func triage() throws -> Workflow {
        try flow(TriageInput.self)
            .route("by-kind", key: { $0.kind },
                   branches: ["billing": flow(TriageInput.self).then("billing") { _, _ in "billing" },
                              "tech": flow(TriageInput.self).then("tech") { _, _ in "tech" }],
                   default: flow(TriageInput.self).then("other") { _, _ in "other" })
            .build("triage")
    }

    // MARK: flaky

    public struct FlakyInput: Codable, Sendable {
        public var failures: Int
    }

    struct Flake: Error, CustomStringConvertible {
        let attempt: Int
        var description: String { "attempt \(attempt) fails on purpose" }
    }

    /// `{"failures": F}`: a task failing its first F attempts, retried with backoff (3
    /// retries); output the attempt that succeeded, counted from 1.
    public static func flaky() throws -> Workflow {
        try flow(FlakyInput.self)
            .then("attempt", TaskOptions(retry: TaskRetry(maxRetries: 3, initialDelay: .milliseconds(100), multiplier: 2, maxDelay: .seconds(1)))) { input, context in
                guard context.attempt > input.failures else { throw Flake(attempt: context.attempt) }
                return context.attempt
            }
            .build("flaky")
    }
}

/// Any JSON value, for payloads whose shape the workflow does not fix (a signal's body).
public enum JSONValue: Codable, Sendable, Equatable {
    case null, bool(Bool), number(Double), string(String), array([JSONValue]), object([String: JSONValue])

    public init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null }
        else if let b = try? c.decode(Bool.self) { self = .bool(b) }
        else if let d = try? c.decode(Double.self) { self = .number(d) }
        else if let s = try? c.decode(String.self) { self = .string(s) }
        else if let a = try? c.decode([JSONValue].self) { self = .array(a) }
        else { self = .object(try c.decode([String: JSONValue].self)) }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .null: try c.encodeNil()
        case .bool(let b): try c.encode(b)
        case .number(let d):
            if d.rounded() == d, abs(d) < 1e15 { try c.encode(Int64(d)) } else { try c.encode(d) }
        case .string(let s): try c.encode(s)
        case .array(let a): try c.encode(a)
        case .object(let o): try c.encode(o)
        }
    }
}
