import Foundation
import SkeinPipeline

/// A blog post as stored under `blog/posts/{id}`.
public struct Post: Codable, Sendable, Equatable {
    public var id: String
    public var title: String
    public var content: String
    public var author: String
    public var createdAtMs: Int64
    public var updatedAtMs: Int64
}

/// A comment as stored under `blog/comments/{postID}/{id}`.
public struct Comment: Codable, Sendable, Equatable {
    public var id: String
    public var postID: String
    public var author: String
    public var content: String
    public var createdAtMs: Int64
}

/// The body of `POST /blog/posts` and `PUT /blog/posts/{id}`.
struct PostFields: Decodable {
    var title: String
    var content: String
    var author: String
}

/// The body of `PATCH /blog/posts/{id}`: any subset of the fields.
struct PostPatch: Decodable {
    var title: String?
    var content: String?
    var author: String?
}

/// The body of `POST /blog/posts/{id}/comments`.
struct CommentFields: Decodable {
    var author: String
    var content: String
}

enum BlogKeys {
    static let postPrefix = "blog/posts/"
    static func post(_ id: String) -> String { postPrefix + id }
    static func comments(_ postID: String) -> String { "blog/comments/\(postID)/" }
    static func comment(_ postID: String, _ id: String) -> String { comments(postID) + id }

    /// A new record's id: the arrival time (so ids sort by creation) and the request's unique id.
    static func newID(_ request: RequestInfo) -> String {
        String(request.receivedAtMs, radix: 36) + "-" + String(request.requestID.prefix(6))
    }
}

/// The blog's validation rules, as Zerver's blog has them.
enum BlogValidation {
    static func nonEmpty(_ value: String, field: String) throws(SkeinError) -> String {
        let trimmed = value.trimmingCharacters(in: .whitespacesAndNewlines)
        guard !trimmed.isEmpty else { throw SkeinError.validation(field: field, message: "\(field) cannot be empty") }
        return trimmed
    }

    static func title(_ value: String) throws(SkeinError) -> String {
        let title = try nonEmpty(value, field: "title")
        guard title.count <= 200 else {
            throw SkeinError.validation(field: "title", message: "title is at most 200 characters; this one has \(title.count)")
        }
        return title
    }

    /// An id from the path: what `newID` makes, or anything a client chose that is safe as a key segment.
    static func id(_ value: String, field: String) throws(SkeinError) -> String {
        guard !value.isEmpty, value.count <= 64,
              value.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") }) else {
            throw SkeinError.validation(field: field, message: "\(field) must be 1–64 letters, digits, '-' or '_'")
        }
        return value
    }
}
