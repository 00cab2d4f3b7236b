import AsyncHTTPClient
import Foundation
import NIOCore
import NIOFoundationEssentialsCompat
import NIOHTTP1
import NIOPosix
import SkeinPipeline
import Synchronization

/// The node's effects: key-value and SQL on its stores, outbound HTTP through AsyncHTTPClient,
/// and compute on a thread pool of its own so CPU-bound work never blocks the event loops.
struct NodeEffectPerformer: EffectPerformer {
    let keyValue: any KeyValueStore
    let sql: any SQLDatabase
    let http: HTTPClient
    let compute: NIOThreadPool
    let maxResponseBytes: Int
    /// The workflow API (with its forwarding to owners), for the workflow effects.
    var workflows: WorkflowRoutes?

    func perform(_ operation: EffectOperation, context: EffectContext) async throws -> EffectOutput {
        switch operation {
        case .kvGet(let key):
            return .value(try await keyValue.get(key))
        case .kvPut(let key, let value):
            try await keyValue.put(key, value)
            return .none
        case .kvDelete(let key):
            return .deleted(try await keyValue.delete(key))
        case .kvScan(let prefix, let limit):
            return .entries(try await keyValue.scan(prefix: prefix, limit: limit))
        case .sqlQuery(let sql, let arguments):
            return .rows(try await self.sql.query(sql, arguments))
        case .sqlExec(let sql, let arguments):
            return .changes(try await self.sql.execute(sql, arguments))
        case .http(let call):
            return .http(try await perform(call, context: context))
        case .compute(_, let work):
            return .computed(try await runCompute(work))
        case .workflowStart(let workflow, let id, let input, let policy):
            guard let inputObject = try? JSONSerialization.jsonObject(with: input, options: [.fragmentsAllowed]) else {
                throw SkeinError(code: 400, what: "invalid_input", key: id, message: "a workflow's input must be JSON")
            }
            let body = try JSONSerialization.data(withJSONObject: ["id": id, "input": inputObject, "conflictPolicy": policy], options: [.sortedKeys])
            return .workflow(try await workflowCall("POST", "/v1/workflows/\(Self.escape(workflow))/instances", body: body, key: id))
        case .workflowSignal(let id, let name, let payload):
            return .workflow(try await workflowCall("POST", "/v1/instances/\(Self.escape(id))/signals/\(Self.escape(name))", body: payload, key: id))
        }
    }

    static func escape(_ segment: String) -> String {
        segment.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-._~"))) ?? segment
    }

    /// Runs a workflow API request here (it forwards to the owner); an error answer fails the effect.
    private func workflowCall(_ method: String, _ path: String, body: Data, key: String) async throws -> Data {
        guard let workflows else { throw SkeinError(code: 503, what: "starting", key: key, message: "workflows are not running on this node") }
        let response = await workflows.answer(.init(method: method, path: path, query: nil, body: body))
        guard response.status.code < 400 else {
            let error = (try? JSONSerialization.jsonObject(with: response.body) as? [String: Any])?["error"] as? [String: Any]
            throw SkeinError(code: response.status.code, what: error?["what"] as? String ?? "workflow_error", key: key,
                             message: error?["message"] as? String ?? "the workflow API answered \(response.status.code)")
        }
        return response.body
    }

    private func perform(_ call: HTTPCall, context: EffectContext) async throws -> HTTPResult {
        var request = HTTPClientRequest(url: call.url)
        request.method = HTTPMethod(rawValue: call.method.uppercased())
        for (name, value) in call.headers { request.headers.add(name: name, value: value) }
        // Carry the request's trace to the callee.
        if !context.traceID.isEmpty, !request.headers.contains(name: "traceparent") {
            request.headers.add(name: "traceparent", value: TraceParent(traceID: context.traceID, parentID: TraceParent.randomSpanID()).header)
        }
        if let body = call.body { request.body = .bytes(ByteBuffer(data: body)) }
        // The runner enforces the effect's own timeout; this one only bounds a stuck connection.
        let response = try await http.execute(request, timeout: .seconds(300))
        let body = try await response.body.collect(upTo: maxResponseBytes)
        var headers: [String: String] = [:]
        for header in response.headers { headers[header.name.lowercased()] = header.value }
        let result = HTTPResult(status: Int(response.status.code), headers: headers, body: Data(buffer: body))
        if result.status >= 500 {
            throw SkeinError(code: 502, what: "upstream_error", key: call.url, message: "\(call.method) \(call.url) answered \(result.status)")
        }
        return result
    }

    /// Runs a closure on the compute pool. Cancellation answers at once; the closure's late
    /// result is dropped.
    private func runCompute(_ work: @escaping @Sendable () throws -> any Sendable) async throws -> any Sendable {
        let once = ContinuationOnce()
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<any Sendable, any Error>) in
                once.set(continuation)
                compute.submit { state in
                    guard state == .active else { return once.resume(with: .failure(CancellationError())) }
                    once.resume(with: Result { try work() })
                }
            }
        } onCancel: {
            once.resume(with: .failure(CancellationError()))
        }
    }
}

/// A continuation resumed at most once, from whichever side gets there first.
final class ContinuationOnce: Sendable {
    private let state = Mutex<(continuation: CheckedContinuation<any Sendable, any Error>?, pending: Result<any Sendable, any Error>?, done: Bool)>((nil, nil, false))

    func set(_ continuation: CheckedContinuation<any Sendable, any Error>) {
        let pending: Result<any Sendable, any Error>? = state.withLock { s in
            if s.done, let p = s.pending { s.pending = nil; return p }
            s.continuation = continuation
            return nil
        }
        if let pending { continuation.resume(with: pending) }
    }

    func resume(with result: Result<any Sendable, any Error>) {
        let continuation: CheckedContinuation<any Sendable, any Error>? = state.withLock { s in
            guard !s.done else { return nil }
            s.done = true
            if let c = s.continuation { s.continuation = nil; return c }
            s.pending = result
            return nil
        }
        continuation?.resume(with: result)
    }
}
