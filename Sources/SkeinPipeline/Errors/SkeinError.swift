public import Foundation
public import HTTPTypes

/// A structured error: the HTTP status, what failed, the key it concerns, and a sentence for a person.
public struct SkeinError: Error, Sendable, Equatable, Codable, CustomStringConvertible {
    public var code: Int
    public var what: String
    public var key: String
    public var message: String

    public init(code: Int, what: String, key: String = "", message: String = "") {
        self.code = code
        self.what = what
        self.key = key
        self.message = message
    }

    public var description: String { "\(code) \(what)\(key.isEmpty ? "" : " [\(key)]"): \(message)" }

    public static func notFound(_ what: String, key: String = "", message: String = "not found") -> SkeinError {
        SkeinError(code: 404, what: what, key: key, message: message)
    }

    public static func badRequest(_ what: String, key: String = "", message: String) -> SkeinError {
        SkeinError(code: 400, what: what, key: key, message: message)
    }

    public static func validation(field: String, message: String) -> SkeinError {
        SkeinError(code: 400, what: "validation", key: field, message: message)
    }
}

/// Turns a ``SkeinError`` into a response. Replace it to change how errors look.
public protocol ErrorRenderer: Sendable {
    func render(_ error: SkeinError) -> Response
}

/// The default renderer: `{"error": {"code", "what", "key", "message"}}` as CONTRACT.md fixes it.
public struct JSONErrorRenderer: ErrorRenderer {
    public init() {}

    struct Envelope: Encodable { let error: SkeinError }

    public func render(_ error: SkeinError) -> Response {
        var response = Response.json(Envelope(error: error), status: HTTPResponse.Status(code: error.code))
        response.headers[.cacheControl] = "no-store"
        return response
    }
}
