public import Foundation

/// One declared piece of I/O: what to do, how long it may take, how to retry it, whether the
/// request fails without it, and which slot receives its result.
public struct Effect: Sendable {
    public var operation: EffectOperation
    public var timeout: Duration
    public var retry: RetryPolicy
    /// A required effect's failure fails the join (see ``Join``); an optional one's leaves its slot empty.
    public var required: Bool
    /// The slot that receives the result, if any.
    public let resultSlot: SlotID?
    let deliver: @Sendable (EffectOutput, inout SlotValues) throws -> Void

    public init(
        _ operation: EffectOperation, timeout: Duration? = nil, retry: RetryPolicy = .none, required: Bool = true,
        resultSlot: SlotID?, deliver: @escaping @Sendable (EffectOutput, inout SlotValues) throws -> Void
    ) {
        self.operation = operation
        self.timeout = timeout ?? operation.defaultTimeout
        self.retry = retry
        self.required = required
        self.resultSlot = resultSlot
        self.deliver = deliver
    }

    /// The same effect with another timeout.
    public func timeout(_ duration: Duration) -> Effect { var e = self; e.timeout = duration; return e }
    /// The same effect with a retry policy.
    public func retry(_ policy: RetryPolicy) -> Effect { var e = self; e.retry = policy; return e }
    /// The same effect, not required: its failure leaves its slot empty instead of failing the join.
    public func optional() -> Effect { var e = self; e.required = false; return e }

    public var kind: String { operation.kind }
    public var target: String { operation.target }
}

/// The I/O an effect performs. The node's effect performer gives each case its meaning; tests
/// may supply results instead.
public enum EffectOperation: Sendable {
    case kvGet(key: String)
    case kvPut(key: String, value: Data)
    case kvDelete(key: String)
    case kvScan(prefix: String, limit: Int)
    case sqlQuery(sql: String, arguments: [SQLValue])
    case sqlExec(sql: String, arguments: [SQLValue])
    case http(HTTPCall)
    case compute(label: String, work: @Sendable () throws -> any Sendable)
    /// Starts a durable workflow instance (answers once the start is durable).
    case workflowStart(workflow: String, id: String, input: Data, conflictPolicy: String)
    /// Sends a signal to a workflow instance (answers once the signal is durable).
    case workflowSignal(id: String, name: String, payload: Data)

    /// The kind as timelines and spans name it (`kv_get`, `http`, …).
    public var kind: String {
        switch self {
        case .kvGet: "kv_get"
        case .kvPut: "kv_put"
        case .kvDelete: "kv_delete"
        case .kvScan: "kv_scan"
        case .sqlQuery: "sql_query"
        case .sqlExec: "sql_exec"
        case .http(let call): "http_\(call.method.lowercased())"
        case .compute: "compute"
        case .workflowStart: "workflow_start"
        case .workflowSignal: "workflow_signal"
        }
    }

    /// What the effect is aimed at: a key, a prefix, a URL, a statement, a label.
    public var target: String {
        switch self {
        case .kvGet(let key), .kvPut(let key, _), .kvDelete(let key): key
        case .kvScan(let prefix, _): prefix + "*"
        case .sqlQuery(let sql, _), .sqlExec(let sql, _): String(sql.prefix(80))
        case .http(let call): call.url
        case .compute(let label, _): label
        case .workflowStart(let workflow, let id, _, _): "\(workflow)/\(id)"
        case .workflowSignal(let id, let name, _): "\(id)/\(name)"
        }
    }

    /// Defaults: key-value and SQL 1 s, HTTP 5 s, compute 1 s.
    public var defaultTimeout: Duration {
        switch self {
        case .http, .workflowStart, .workflowSignal: .seconds(5)
        // The replicated store may wait up to 2 s for a partition to elect a leader.
        case .kvGet, .kvPut, .kvDelete, .kvScan: .seconds(3)
        default: .seconds(1)
        }
    }

    /// Bytes sent by this effect (for timelines).
    public var requestBytes: Int {
        switch self {
        case .kvPut(_, let value): value.count
        case .http(let call): call.body?.count ?? 0
        case .workflowStart(_, _, let input, _): input.count
        case .workflowSignal(_, _, let payload): payload.count
        default: 0
        }
    }
}

/// An outbound HTTP request.
public struct HTTPCall: Sendable {
    public var method: String
    public var url: String
    public var headers: [(String, String)]
    public var body: Data?

    public init(method: String = "GET", url: String, headers: [(String, String)] = [], body: Data? = nil) {
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
    }
}

/// An outbound HTTP answer. Transport errors, timeouts and 5xx answers are failures (retried
/// per policy); other statuses are delivered as results.
public struct HTTPResult: Sendable, Equatable {
    public var status: Int
    public var headers: [String: String]
    public var body: Data

    public init(status: Int, headers: [String: String] = [:], body: Data = Data()) {
        self.status = status
        self.headers = headers
        self.body = body
    }
}

/// A key-value pair from a scan.
public struct KVEntry: Sendable, Equatable, Codable {
    public var key: String
    public var value: Data
    public init(key: String, value: Data) {
        self.key = key
        self.value = value
    }
}

/// A SQL value.
public enum SQLValue: Sendable, Equatable, Hashable, Codable {
    case null
    case integer(Int64)
    case real(Double)
    case text(String)
    case blob(Data)
}

/// One row of a query result, columns in select order.
public struct SQLRow: Sendable, Equatable {
    public var columns: [String]
    public var values: [SQLValue]
    public init(columns: [String], values: [SQLValue]) {
        self.columns = columns
        self.values = values
    }
    public subscript(column: String) -> SQLValue? {
        columns.firstIndex(of: column).map { values[$0] }
    }
}

/// What an effect produced.
public enum EffectOutput: Sendable {
    case none
    case value(Data?)
    case deleted(Bool)
    case entries([KVEntry])
    case rows([SQLRow])
    case changes(Int)
    case http(HTTPResult)
    case computed(any Sendable)
    /// A workflow instance's status as JSON (the workflow API's answer).
    case workflow(Data)

    /// Bytes received (for timelines).
    public var byteCount: Int {
        switch self {
        case .value(let data): data?.count ?? 0
        case .entries(let entries): entries.reduce(0) { $0 + $1.key.utf8.count + $1.value.count }
        case .http(let result): result.body.count
        case .workflow(let status): status.count
        case .rows(let rows): rows.count
        default: 0
        }
    }
}

/// An effect result did not fit its slot: a bug in an effect performer, never in user code.
struct EffectOutputMismatch: Error, CustomStringConvertible {
    let expected: String
    let got: EffectOutput
    var description: String { "effect produced \(got), expected \(expected)" }
}
