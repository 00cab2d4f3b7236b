import Foundation
import HTTPTypes
import NIOCore
import NIOFoundationCompat
import SkeinCluster
import SkeinPipeline
import SkeinStore

/// `GET|PUT|DELETE /v1/kv/{key}` on the client port (CONTRACT.md): the replicated store.
/// The key is the rest of the path, percent-decoded. PUT answers 204 once a majority of
/// voters has fsynced the write (committed; reads wait until it is applied); GET answers the
/// bytes exactly as written or 404; DELETE answers 204. While the partition has no leader:
/// 503 with `Retry-After: 1`.
struct KeyValueRoutes: Sendable {
    /// What a request answered without a task came to.
    enum FastAnswer: Sendable {
        case answered(Response)
        /// Go on in the task path (which retries and waits).
        case goOn(writeMayHaveHappened: Bool)
    }

    static let prefix = "/v1/kv/"
    let cluster: ClusterHandle
    let limits: KeyValueLimits
    let renderer: any ErrorRenderer

    /// `writeMayHaveHappened`: an attempt made without a task (``answerWithoutTask``) reached a
    /// leader that did not answer.
    func answer(method: HTTPRequest.Method, rawKey: Substring, body: () async throws -> Data, traceparent: String?,
                writeMayHaveHappened: Bool = false) async -> Response {
        guard let key = Self.decodeKey(rawKey) else {
            return render(SkeinError(code: 400, what: "invalid_key", key: String(rawKey), message: "the key is not valid percent-encoding"))
        }
        let store = ReplicatedKeyValueStore(cluster: cluster, limits: limits, traceparent: traceparent, writeMayHaveHappened: writeMayHaveHappened)
        do {
            switch method {
            case .get, .head:
                return response(.value(try await store.get(key).map { Array($0) }), key: key)
            case .put:
                try await store.put(key, try await body())
                return Response(status: .noContent)
            case .delete:
                _ = try await store.delete(key)
                return Response(status: .noContent)
            default:
                var response = render(SkeinError(code: 405, what: "method_not_allowed", key: key, message: "/v1/kv/{key} answers GET, PUT and DELETE"))
                response.headers[.allow] = "GET, HEAD, PUT, DELETE"
                return response
            }
        } catch let error as SkeinError {
            return render(error)
        } catch {
            return render(SkeinError(code: 500, what: "internal", key: key, message: "\(error)"))
        }
    }

    /// A request answered with no task of its own, from the event loop it was read on: a write
    /// whose partition this node leads (as last published) goes straight into the replication
    /// actor's inbox; a request whose partition another node leads goes over the open call
    /// stream to it. `done` gets the answer (on the actor, or on the stream's event loop), or
    /// ``FastAnswer/goOn(writeMayHaveHappened:)`` when the request must go on in
    /// ``answer(method:rawKey:body:traceparent:writeMayHaveHappened:)`` after all (no leader,
    /// the leader unreachable or just moved: the retries and waits live there).
    /// False, and nothing done, when it does not apply: a bad key or value (whose error the
    /// task path renders), a read here, no call stream open.
    func answerWithoutTask(method: HTTPRequest.Method, rawKey: Substring, body: ByteBuffer, traceparent: String?,
                           done: @escaping @Sendable (FastAnswer) -> Void) -> Bool {
        guard let replication = cluster.replication, let key = Self.decodeKey(rawKey),
              (try? limits.check(key: key)) != nil else { return false }
        let op: KVOperation
        switch method {
        case .get: op = .get(key: key)
        case .delete: op = .delete(key: key)
        case .put:
            guard body.readableBytes <= limits.maxValueBytes else { return false }
            op = .put(key: key, value: Array(buffer: body))
        default: return false
        }
        let partition = op.partition(count: replication.partitionCount)
        guard let leader = replication.publishedLeader(partition: partition) else { return false }
        let routes = self
        guard leader != replication.me else {
            let command: PartitionCommand
            switch op {
            case .put(let key, let value): command = .put(key: key, value: value)
            case .delete(let key): command = .delete(key: key)
            case .get, .scan: return false
            }
            // A put is answered once committed, as ReplicatedKeyValueStore.local does.
            let isPut = if case .put = op { true } else { false }
            replication.submit(.proposals([(command, partition, isPut)]) { _, result in
                switch result {
                case .success: done(.answered(Response(status: .noContent)))
                case .failure(let error):
                    let rendered = ReplicatedKeyValueStore.skeinError(error, key: key)
                    done(ReplicatedKeyValueStore.retryable.contains(rendered.what) ? .goOn(writeMayHaveHappened: false) : .answered(routes.render(rendered)))
                }
            })
            return true
        }
        return KeyValueForwarding.forwardWithoutTask(op, to: leader, cluster: cluster, traceparent: traceparent) { result in
            switch result {
            case .success(let result): done(.answered(routes.response(result, key: key)))
            case .failure(let error) where ReplicatedKeyValueStore.retryable.contains(error.what):
                done(.goOn(writeMayHaveHappened: op.isWrite && error.what == "leader_unreachable"))
            case .failure(let error): done(.answered(routes.render(error)))
            }
        }
    }

    /// The answer for a result: a read's value (or 404), else 204.
    private func response(_ result: KVResult, key: String) -> Response {
        guard case .value(let value) = result else { return Response(status: .noContent) }
        guard let value else {
            return render(SkeinError(code: 404, what: "key_not_found", key: key, message: "no value under this key"))
        }
        var response = Response(status: .ok, body: Data(value))
        response.headers[.contentType] = "application/octet-stream"
        return response
    }

    /// The key a path's rest spells, percent-decoded; nil when an escape is malformed or the
    /// bytes are not UTF-8. (Foundation's `removingPercentEncoding` cost 2% of a write's CPU.)
    static func decodeKey(_ raw: Substring) -> String? {
        guard raw.utf8.contains(UInt8(ascii: "%")) else { return String(raw) }
        guard isValidPercentEncoding(raw) else { return nil }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(raw.utf8.count)
        var utf8 = raw.utf8.makeIterator()
        while let b = utf8.next() {
            guard b == UInt8(ascii: "%") else {
                bytes.append(b)
                continue
            }
            let high = hexValue(utf8.next()!), low = hexValue(utf8.next()!)
            bytes.append(high << 4 | low)
        }
        return String(validating: bytes, as: UTF8.self)
    }

    private static func hexValue(_ digit: UInt8) -> UInt8 {
        switch digit {
        case 48...57: digit - 48
        case 65...70: digit - 55
        default: digit - 87
        }
    }

    /// Every `%` starts two hex digits (Foundation passes some malformed escapes through).
    static func isValidPercentEncoding(_ raw: Substring) -> Bool {
        var bytes = raw.utf8.makeIterator()
        while let b = bytes.next() {
            guard b == UInt8(ascii: "%") else { continue }
            for _ in 0..<2 {
                guard let h = bytes.next(), (h >= 48 && h <= 57) || (h >= 65 && h <= 70) || (h >= 97 && h <= 102) else { return false }
            }
        }
        return true
    }

    private func render(_ error: SkeinError) -> Response {
        var response = renderer.render(error)
        if error.code == 503 { response.headers[.retryAfter] = "1" }
        return response
    }
}
