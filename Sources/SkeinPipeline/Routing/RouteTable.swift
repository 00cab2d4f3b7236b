/// Maps a method and a path to a value: literal segments, `:param`, and a trailing `*wildcard`.
///
/// Among patterns that match, the one with more literal segments wins, then the one with
/// fewer parameters (a wildcard counts as a parameter, and loses a tie to a `:param`), then
/// the one registered first. `HEAD` falls back to `GET`.
public struct RouteTable<Value: Sendable>: Sendable {
    enum Segment: Sendable, Equatable {
        case literal(String)
        case parameter(String)
        case wildcard(String)
    }

    struct Entry: Sendable {
        let pattern: String
        let segments: [Segment]
        let literals: Int
        let parameters: Int
        let hasWildcard: Bool
        let order: Int
        var methods: [String: Value]
    }

    public enum Match: Sendable {
        case found(Value, parameters: [String: String], pattern: String)
        /// The path is known but not for this method; `allow` lists the methods it has.
        case methodNotAllowed(allow: [String])
        case notFound
    }

    private var entries: [Entry] = []
    /// Index of the entry for each all-literal pattern, by canonical path (`/a/b`): such a
    /// pattern is the most specific possible match for its path, so it needs no scan.
    private var literalPaths: [String: Int] = [:]

    public init() {}

    /// Adds a pattern for a method. Errors name the pattern and what is wrong with it.
    public mutating func add(method: String, pattern: String, value: Value) throws(RouteError) {
        let segments = try Self.parse(pattern)
        if let i = entries.firstIndex(where: { $0.segments == segments }) {
            guard entries[i].methods[method] == nil else { throw RouteError(pattern: pattern, message: "\(method) \(pattern) is registered twice") }
            entries[i].methods[method] = value
            return
        }
        var literals = 0, parameters = 0, wildcard = false
        for s in segments {
            switch s {
            case .literal: literals += 1
            case .parameter: parameters += 1
            case .wildcard: parameters += 1; wildcard = true
            }
        }
        entries.append(Entry(pattern: pattern, segments: segments, literals: literals, parameters: parameters,
                             hasWildcard: wildcard, order: entries.count, methods: [method: value]))
        entries.sort { a, b in
            if a.literals != b.literals { return a.literals > b.literals }
            if a.parameters != b.parameters { return a.parameters < b.parameters }
            if a.hasWildcard != b.hasWildcard { return !a.hasWildcard }
            return a.order < b.order
        }
        literalPaths = [:]
        for (i, entry) in entries.enumerated() where entry.parameters == 0 {
            literalPaths["/" + entry.segments.map { if case .literal(let l) = $0 { l } else { "" } }.joined(separator: "/")] = i
        }
    }

    static func parse(_ pattern: String) throws(RouteError) -> [Segment] {
        guard pattern.hasPrefix("/") else { throw RouteError(pattern: pattern, message: "a pattern starts with '/'") }
        let parts = pattern.split(separator: "/", omittingEmptySubsequences: true)
        var segments: [Segment] = []
        var names = Set<String>()
        for (i, part) in parts.enumerated() {
            if part.hasPrefix(":") || part.hasPrefix("*") {
                let name = String(part.dropFirst())
                guard !name.isEmpty else { throw RouteError(pattern: pattern, message: "a parameter needs a name") }
                guard names.insert(name).inserted else { throw RouteError(pattern: pattern, message: "parameter '\(name)' appears twice") }
                if part.hasPrefix("*") {
                    guard i == parts.count - 1 else { throw RouteError(pattern: pattern, message: "a wildcard must be the last segment") }
                    segments.append(.wildcard(name))
                } else {
                    segments.append(.parameter(name))
                }
            } else {
                segments.append(.literal(String(part)))
            }
        }
        return segments
    }

    /// Finds the route for a request.
    public func match(method: String, path: String) -> Match {
        if let i = literalPaths[path], let value = entries[i].methods[method] ?? (method == "HEAD" ? entries[i].methods["GET"] : nil) {
            return .found(value, parameters: [:], pattern: entries[i].pattern)
        }
        let parts = path.split(separator: "/", omittingEmptySubsequences: true)
        var allowed: [String]?
        for entry in entries {
            guard let parameters = Self.bind(entry.segments, to: parts) else { continue }
            if let value = entry.methods[method] ?? (method == "HEAD" ? entry.methods["GET"] : nil) {
                return .found(value, parameters: parameters, pattern: entry.pattern)
            }
            if allowed == nil { allowed = Self.allow(entry.methods.keys) }
        }
        if let allowed { return .methodNotAllowed(allow: allowed) }
        return .notFound
    }

    /// The methods a path answers, as an `Allow` header lists them (nil if the path is unknown).
    public func allowedMethods(path: String) -> [String]? {
        let parts = path.split(separator: "/", omittingEmptySubsequences: true)
        for entry in entries where Self.bind(entry.segments, to: parts) != nil {
            return Self.allow(entry.methods.keys)
        }
        return nil
    }

    static func allow(_ methods: some Sequence<String>) -> [String] {
        var set = Set(methods)
        if set.contains("GET") { set.insert("HEAD") }
        set.insert("OPTIONS")
        return set.sorted()
    }

    static func bind(_ segments: [Segment], to parts: [Substring]) -> [String: String]? {
        var parameters: [String: String] = [:]
        var i = 0
        for segment in segments {
            switch segment {
            case .literal(let literal):
                guard i < parts.count, parts[i] == literal else { return nil }
            case .parameter(let name):
                guard i < parts.count else { return nil }
                parameters[name] = decode(parts[i])
            case .wildcard(let name):
                parameters[name] = parts[i...].map(decode).joined(separator: "/")
                return parameters
            }
            i += 1
        }
        return i == parts.count ? parameters : nil
    }

    static func decode(_ part: Substring) -> String {
        let s = String(part)
        return s.contains("%") ? (s.removingPercentEncoding ?? s) : s
    }
}

/// A route pattern that cannot be registered.
public struct RouteError: Error, Sendable, CustomStringConvertible {
    public let pattern: String
    public let message: String
    public var description: String { "route \(pattern): \(message)" }
}

import Foundation
