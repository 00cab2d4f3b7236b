import Foundation
public import HTTPTypes

/// What a step may know about the request it serves. Immutable: steps change slots, not the request.
public struct RequestInfo: Sendable {
    public var method: HTTPRequest.Method
    /// The path without the query string, as sent.
    public var path: String
    /// The raw query string (without `?`), if any.
    public var query: String?
    public var headers: HTTPFields
    /// The collected body (empty for bodiless requests).
    public var body: Data
    /// Route parameters (`:name` and `*name` segments), percent-decoded.
    public var parameters: [String: String]
    /// The trace id of this request (from an incoming `traceparent`, or fresh).
    public var traceID: String
    /// A unique id for this request, usable to derive ids of new records.
    public var requestID: String
    /// When the request arrived, milliseconds since 1970: an input, so steps stay pure.
    public var receivedAtMs: Int64

    public init(
        method: HTTPRequest.Method, path: String, query: String? = nil, headers: HTTPFields = [:],
        body: Data = Data(), parameters: [String: String] = [:], traceID: String = "", requestID: String = "",
        receivedAtMs: Int64 = 0
    ) {
        self.receivedAtMs = receivedAtMs
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.parameters = parameters
        self.traceID = traceID
        self.requestID = requestID
    }

    /// Builds a request from a target such as `/blog/posts?limit=3`.
    public init(_ method: HTTPRequest.Method, _ target: String, headers: HTTPFields = [:], body: Data = Data()) {
        let (path, query) = Self.split(target)
        self.init(method: method, path: path, query: query, headers: headers, body: body)
    }

    static func split(_ target: String) -> (String, String?) {
        guard let q = target.firstIndex(of: "?") else { return (target, nil) }
        return (String(target[..<q]), String(target[target.index(after: q)...]))
    }

    /// The first value of a query parameter, percent-decoded (`+` is a space).
    public func queryParameter(_ name: String) -> String? {
        guard let query else { return nil }
        // Walk the query's bytes in place: this runs on hot paths, so no splitting into
        // arrays, no walking by Character and no Foundation decoding unless the value needs it.
        let bytes = query.utf8
        var at = bytes.startIndex
        while at < bytes.endIndex {
            let end = bytes[at...].firstIndex(of: UInt8(ascii: "&")) ?? bytes.endIndex
            let pair = bytes[at..<end]
            at = end < bytes.endIndex ? bytes.index(after: end) : end
            let eq = pair.firstIndex(of: UInt8(ascii: "="))
            guard pair[..<(eq ?? pair.endIndex)].elementsEqual(name.utf8) else { continue }
            guard let eq else { return "" }
            let raw = pair[bytes.index(after: eq)...]
            let value = String(Substring(raw))
            guard raw.contains(where: { $0 == UInt8(ascii: "+") || $0 == UInt8(ascii: "%") }) else { return value }
            let spaced = value.replacingOccurrences(of: "+", with: " ")
            return spaced.removingPercentEncoding ?? spaced
        }
        return nil
    }

    /// A route parameter, or a 400 naming it if the route did not capture it.
    public func parameter(_ name: String) throws(SkeinError) -> String {
        guard let value = parameters[name] else {
            throw SkeinError(code: 400, what: "parameter", key: name, message: "missing path parameter '\(name)'")
        }
        return value
    }

    /// Decodes the body as JSON. A malformed body is a 400 whose `key` names the offending field.
    public func decodeJSON<T: Decodable>(_ type: T.Type) throws(SkeinError) -> T {
        do {
            return try JSONDecoder().decode(T.self, from: body)
        } catch let error as DecodingError {
            throw SkeinError.invalidJSON(error)
        } catch {
            throw SkeinError(code: 400, what: "invalid_json", key: "", message: "\(error)")
        }
    }
}

extension SkeinError {
    /// A 400 naming the field a JSON decoding error points at.
    public static func invalidJSON(_ error: DecodingError) -> SkeinError {
        func path(_ codingPath: [any CodingKey]) -> String {
            codingPath.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
        }
        switch error {
        case .keyNotFound(let key, let context):
            let field = path(context.codingPath + [key])
            return SkeinError(code: 400, what: "invalid_json", key: field, message: "missing field '\(field)'")
        case .typeMismatch(let type, let context):
            let field = path(context.codingPath)
            return SkeinError(code: 400, what: "invalid_json", key: field, message: "field '\(field)' must be \(type)")
        case .valueNotFound(let type, let context):
            let field = path(context.codingPath)
            return SkeinError(code: 400, what: "invalid_json", key: field, message: "field '\(field)' must be a \(type), not null")
        case .dataCorrupted(let context):
            let field = path(context.codingPath)
            let reason = (context.underlyingError as NSError?)?.userInfo[NSDebugDescriptionErrorKey] as? String
            return SkeinError(code: 400, what: "invalid_json", key: field,
                              message: field.isEmpty ? "body is not valid JSON\(reason.map { ": \($0)" } ?? "")" : "field '\(field)' is invalid: \(context.debugDescription)")
        @unknown default:
            return SkeinError(code: 400, what: "invalid_json", key: "", message: "\(error)")
        }
    }
}
