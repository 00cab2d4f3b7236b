import Foundation
import HTTPTypes
import SkeinPipeline
import SkeinStore

/// `GET|PUT|DELETE /v1/kv/{key}` on the client port (CONTRACT.md): the replicated store.
/// The key is the rest of the path, percent-decoded. PUT answers 204 once the write is
/// applied on the partition leader after a majority of voters fsynced it; GET answers the
/// bytes exactly as written or 404; DELETE answers 204. While the partition has no leader:
/// 503 with `Retry-After: 1`.
struct KeyValueRoutes: Sendable {
    static let prefix = "/v1/kv/"
    let cluster: ClusterHandle
    let limits: KeyValueLimits
    let renderer: any ErrorRenderer

    func answer(method: HTTPRequest.Method, rawKey: Substring, body: () async throws -> Data, traceparent: String?) async -> Response {
        guard Self.isValidPercentEncoding(rawKey), let key = String(rawKey).removingPercentEncoding else {
            return render(SkeinError(code: 400, what: "invalid_key", key: String(rawKey), message: "the key is not valid percent-encoding"))
        }
        let store = ReplicatedKeyValueStore(cluster: cluster, limits: limits, traceparent: traceparent)
        do {
            switch method {
            case .get, .head:
                guard let value = try await store.get(key) else {
                    return render(SkeinError(code: 404, what: "key_not_found", key: key, message: "no value under this key"))
                }
                var response = Response(status: .ok, body: value)
                response.headers[.contentType] = "application/octet-stream"
                return response
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
