public import Foundation
public import HTTPTypes

/// A response produced by a pipeline.
public struct Response: Sendable {
    public var status: HTTPResponse.Status
    public var headers: HTTPFields
    public var body: Data

    public init(status: HTTPResponse.Status = .ok, headers: HTTPFields = [:], body: Data = Data()) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    static let textHeaders: HTTPFields = [.contentType: "text/plain; charset=utf-8"]
    static let htmlHeaders: HTTPFields = [.contentType: "text/html; charset=utf-8"]
    static let jsonHeaders: HTTPFields = [.contentType: "application/json"]

    public static func text(_ text: String, status: HTTPResponse.Status = .ok) -> Response {
        Response(status: status, headers: textHeaders, body: utf8(text))
    }

    public static func html(_ html: String, status: HTTPResponse.Status = .ok) -> Response {
        Response(status: status, headers: htmlHeaders, body: utf8(html))
    }

    /// A string's UTF-8 bytes, copied in one go (`Data(string.utf8)` goes through the generic
    /// sequence initializer, with dynamic casts, on every response).
    static func utf8(_ string: String) -> Data {
        var string = string
        return string.withUTF8 { Data(buffer: $0) }
    }

    /// A JSON response; keys are sorted so bodies are stable.
    public static func json<T: Encodable>(_ value: T, status: HTTPResponse.Status = .ok) -> Response {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let body = (try? encoder.encode(value)) ?? Data("null".utf8)
        return Response(status: status, headers: jsonHeaders, body: body)
    }

    public static func json(raw: Data, status: HTTPResponse.Status = .ok) -> Response {
        Response(status: status, headers: jsonHeaders, body: raw)
    }

    public static var noContent: Response { Response(status: .noContent) }
}
